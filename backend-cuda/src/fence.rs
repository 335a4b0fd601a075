//! Timeline fences: a 64-bit counter in mapped page-locked host memory. Streams write it
//! with `cuStreamWriteValue64` and wait on it with `cuStreamWaitValue64` (GEQ), so a
//! stream waits without the CPU in the loop; the CPU stores to it and polls it.
//!
//! Stream-side operations need [`Capabilities::TIMELINE_FENCE`] (64-bit stream memory
//! operations); without it they return [`Error::Unsupported`] and the fence works from
//! the CPU only.
//!
//! A signal lower than the highest value signalled or enqueued so far is
//! [`Error::FenceRegressed`]. A stream write is a plain store, not a maximum: a CPU signal
//! issued while a stream signal of a lower value is still pending is later overwritten on
//! the counter, so [`value`](gpuhal_hal::Fence::value) reports the maximum of the counter
//! and the highest CPU signal.
//!
//! Dropping a fence releases streams still waiting on it (nothing could signal it any
//! more) and frees the counter once every stream that used it has passed its last use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuhal_hal::{check_device, Capabilities, DeviceId, Error, Result};
use parking_lot::Mutex;

use crate::context::Context;
use crate::context::Retired;
use crate::error::Context as _;
use crate::raw::{self, CUdeviceptr};
use crate::stream::{CudaStream, StreamHandle};
use crate::CudaBackend;

/// Spin this long before yielding, then sleeping.
const SPIN: Duration = Duration::from_micros(50);
/// Yield this long before sleeping.
const YIELD: Duration = Duration::from_micros(500);
/// Longest sleep between polls.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Eight bytes of mapped page-locked host memory.
struct HostCounter {
    host: u64,
    device: CUdeviceptr,
    ctx: Arc<Context>,
}

// SAFETY: the counter is only accessed through atomic operations (host) and driver stream memory operations (device); the allocation is owned and freed once.
unsafe impl Send for HostCounter {}
// SAFETY: as above.
unsafe impl Sync for HostCounter {}

impl HostCounter {
    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: `host` is a live, 8-byte, page-aligned page-locked allocation owned by `self` for its whole life; the device writes it with aligned 8-byte stores, and the host only through this atomic.
        unsafe { &*(self.host as *const AtomicU64) }
    }
}

/// A timeline fence: a u64 that only grows.
pub struct CudaFence {
    counter: HostCounter,
    device: DeviceId,
    /// Highest value signalled or enqueued.
    highest: Mutex<u64>,
    /// Highest value signalled from the CPU.
    cpu_signalled: AtomicU64,
    /// Highest value a stream was made to wait for.
    highest_wait: AtomicU64,
    /// Streams that signalled or waited on the counter.
    users: Mutex<Vec<StreamHandle>>,
}

impl CudaFence {
    pub(crate) fn new(ctx: &Arc<Context>, device: DeviceId, initial: u64) -> Result<Self> {
        ctx.bind()?;
        ctx.collect_retired();
        let flags = cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP | cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE;
        let host = raw::mem_host_alloc(8, flags)
            .context(|| format!("allocating a fence counter on CUDA device {}", ctx.ordinal()))?;
        let device_address = match raw::mem_host_get_device_pointer(host) {
            Ok(address) => address,
            Err(native) => {
                let _ = raw::mem_free_host(host);
                return Err(Error::native(
                    format!("mapping a fence counter for CUDA device {}", ctx.ordinal()),
                    native,
                ));
            }
        };
        let counter = HostCounter {
            host,
            device: device_address,
            ctx: ctx.clone(),
        };
        counter.atomic().store(initial, Ordering::Release);
        Ok(CudaFence {
            counter,
            device,
            highest: Mutex::new(initial),
            cpu_signalled: AtomicU64::new(initial),
            highest_wait: AtomicU64::new(0),
            users: Mutex::new(Vec::new()),
        })
    }

    /// The device address of the counter, for kernels that signal or poll it themselves.
    pub fn device_address(&self) -> u64 {
        self.counter.device
    }

    fn current(&self) -> u64 {
        self.counter
            .atomic()
            .load(Ordering::Acquire)
            .max(self.cpu_signalled.load(Ordering::Acquire))
    }

    fn note_user(&self, stream: &CudaStream) {
        let mut users = self.users.lock();
        if !users.iter().any(|u| u.id() == stream.id_inner()) {
            users.push(stream.handle().clone());
        }
    }

    fn check_stream(&self, operation: &'static str, stream: &CudaStream) -> Result<()> {
        check_device(operation, "fence", stream.device_id_inner(), self.device)?;
        if !stream.supports_timeline() {
            return Err(Error::Unsupported {
                operation,
                needed: Capabilities::TIMELINE_FENCE,
            });
        }
        Ok(())
    }

    pub(crate) fn stream_signal(&self, stream: &CudaStream, value: u64) -> Result<()> {
        self.check_stream("Stream::signal", stream)?;
        let mut highest = self.highest.lock();
        if value < *highest {
            return Err(Error::FenceRegressed {
                requested: value,
                current: *highest,
            });
        }
        if value == *highest {
            return Ok(());
        }
        stream.bind()?;
        raw::stream_write_value64(stream.raw(), self.counter.device, value)
            .context(|| format!("enqueueing a fence signal to {value} on stream {}", stream.id_inner().0))?;
        *highest = value;
        drop(highest);
        self.note_user(stream);
        Ok(())
    }

    pub(crate) fn stream_wait(&self, stream: &CudaStream, value: u64) -> Result<()> {
        self.check_stream("Stream::wait", stream)?;
        if self.current() >= value && !stream.is_capturing_inner() {
            return Ok(());
        }
        stream.bind()?;
        raw::stream_wait_value64_geq(stream.raw(), self.counter.device, value).context(|| {
            format!(
                "making stream {} wait for a fence to reach {value}",
                stream.id_inner().0
            )
        })?;
        self.highest_wait.fetch_max(value, Ordering::AcqRel);
        self.note_user(stream);
        Ok(())
    }
}

impl Drop for CudaFence {
    /// Releases streams still waiting on the fence (nothing could signal it any more), and
    /// frees the counter only once every stream that used it has passed its last use.
    fn drop(&mut self) {
        let ctx = &self.counter.ctx;
        if ctx.bind().is_err() {
            // Leaked: released with the context.
            return;
        }
        let waited = self.highest_wait.load(Ordering::Acquire);
        self.counter.atomic().fetch_max(waited, Ordering::AcqRel);
        let mut after = Vec::new();
        for stream in std::mem::take(self.users.get_mut()) {
            let recorded = raw::event_create(false).and_then(|event| match raw::event_record(event, stream.raw()) {
                Ok(()) => Ok(event),
                Err(err) => {
                    let _ = raw::event_destroy(event);
                    Err(err)
                }
            });
            match recorded {
                Ok(event) => after.push(event),
                // Without a marker the counter may still be written: keep it (it is
                // released with the context) rather than free memory a stream may write.
                Err(_) => {
                    for event in after {
                        let _ = raw::event_destroy(event);
                    }
                    return;
                }
            }
        }
        ctx.retire(Retired {
            host: self.counter.host,
            after,
        });
    }
}

impl std::fmt::Debug for CudaFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFence")
            .field("device", &self.device)
            .field("value", &self.current())
            .field("highest", &*self.highest.lock())
            .finish()
    }
}

impl gpuhal_hal::Fence<CudaBackend> for CudaFence {
    fn value(&self) -> Result<u64> {
        Ok(self.current())
    }

    fn signal(&self, value: u64) -> Result<()> {
        let mut highest = self.highest.lock();
        if value < *highest {
            return Err(Error::FenceRegressed {
                requested: value,
                current: *highest,
            });
        }
        if value == *highest {
            return Ok(());
        }
        *highest = value;
        self.cpu_signalled.fetch_max(value, Ordering::AcqRel);
        self.counter.atomic().fetch_max(value, Ordering::AcqRel);
        Ok(())
    }

    fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut sleep = Duration::from_micros(10);
        loop {
            let reached = self.current();
            if reached >= value {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    operation: "Fence::wait",
                    waited,
                    target: value,
                    reached,
                });
            }
            if waited < SPIN {
                std::hint::spin_loop();
            } else if waited < YIELD {
                std::thread::yield_now();
            } else {
                std::thread::sleep(sleep.min(timeout - waited));
                sleep = (sleep * 2).min(MAX_SLEEP);
            }
        }
    }
}
