//! Streams: in-order work on the device's queue, ordered by the stream's timeline
//! semaphore; transfers, host copies through staging buffers, and capture.

use std::sync::Arc;

use ash::vk;
use gpuhal_hal::pool::{CachingAllocator, StreamCache};
use gpuhal_hal::{AsRegion, DeviceId, Error, GraphPool, Result, StreamId};
use parking_lot::Mutex;

use crate::device::DeviceShared;
use crate::event::VulkanEvent;
use crate::fence::VulkanFence;
use crate::graph::{record_op, Op, VulkanGraph};
use crate::memory::{RawBuffer, VulkanMemory};
use crate::queue::{StreamNative, Work, MAX_STAGING};
use crate::VulkanBackend;

/// An in-order stream of work on a Vulkan device.
pub struct VulkanStream {
    shared: Arc<DeviceShared>,
    native: Arc<StreamNative>,
    cache: StreamCache<VulkanMemory>,
    /// Operations captured so far, while capturing.
    capture: Mutex<Option<Vec<Op>>>,
}

impl std::fmt::Debug for VulkanStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanStream")
            .field("id", &self.native.id)
            .field("capturing", &self.capture.lock().is_some())
            .finish()
    }
}

impl VulkanStream {
    pub(crate) fn new(shared: &Arc<DeviceShared>, allocator: &CachingAllocator<VulkanMemory>) -> Result<VulkanStream> {
        let id = StreamId::fresh();
        let native = StreamNative::new(shared, id)?;
        Ok(VulkanStream {
            shared: shared.clone(),
            cache: allocator.stream_cache(native.clone(), id),
            native,
            capture: Mutex::new(None),
        })
    }

    pub(crate) fn native(&self) -> &Arc<StreamNative> {
        &self.native
    }

    pub(crate) fn device_id_raw(&self) -> DeviceId {
        self.shared.id
    }

    /// The stream's timeline semaphore: its value counts the batches the stream has
    /// completed. Wait for [`timeline_value`](Self::timeline_value) to wait for the
    /// stream's work so far.
    pub fn timeline_semaphore(&self) -> vk::Semaphore {
        self.native.timeline.semaphore
    }

    /// The timeline value the stream's work so far will signal.
    pub fn timeline_value(&self) -> u64 {
        self.native.point().1
    }

    /// Submits a command buffer a framework recorded itself (its own kernels), in stream
    /// order. It must have been recorded for [`VulkanDevice::queue_family`](crate::VulkanDevice::queue_family)
    /// and stay alive and unchanged until the stream reaches the returned timeline value.
    ///
    /// # Safety
    ///
    /// `cmd` must be a valid, executable command buffer of this device that is not
    /// pending elsewhere unless recorded with `SIMULTANEOUS_USE`, and every resource it
    /// uses must stay alive until the returned value is reached.
    pub unsafe fn submit_command_buffer(&self, cmd: vk::CommandBuffer) -> Result<u64> {
        if self.capture.lock().is_some() {
            return Err(self.abandon("submit_command_buffer"));
        }
        self.native.submit(|_| {
            Ok(Work {
                foreign_cmd: Some(cmd),
                ..Work::default()
            })
        })
    }

    /// Abandons the capture in progress; returns the error to report.
    fn abandon(&self, operation: &'static str) -> Error {
        self.capture.lock().take();
        self.cache.end_capture();
        Error::CaptureInvalidated {
            operation,
            stream: self.native.id.0,
        }
    }

    /// Fails (abandoning the capture) if the stream is capturing.
    pub(crate) fn refuse_in_capture(&self, operation: &'static str) -> Result<()> {
        if self.capture.lock().is_some() {
            return Err(self.abandon(operation));
        }
        Ok(())
    }

    /// Appends `ops` to the capture in progress; false when not capturing.
    pub(crate) fn append_captured(&self, ops: &[Op]) -> bool {
        match self.capture.lock().as_mut() {
            Some(captured) => {
                captured.extend_from_slice(ops);
                true
            }
            None => false,
        }
    }

    /// Captures `op`, or runs it now.
    fn run(&self, op: Op) -> Result<()> {
        if self.append_captured(std::slice::from_ref(&op)) {
            return Ok(());
        }
        let shared = &self.shared;
        self.native
            .submit_commands(|_, cmd| record_op(shared, cmd, &op), Work::default())?;
        Ok(())
    }

    fn write_chunk(&self, dst: vk::Buffer, dst_offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let shared = &self.shared;
        self.native.submit(|state| {
            let staging = state.staging(shared, len)?;
            let Some(mapped) = staging.mapped else {
                return Err(Error::invalid("write", "staging memory is not mapped"));
            };
            // SAFETY: the staging buffer is mapped, holds at least `len` bytes, and no device work uses it (it came from the free list or was just created).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mapped.0, data.len()) };
            let cmd = state.record(shared, |device, cmd| {
                let region = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset,
                    size: len,
                };
                // SAFETY: `cmd` is recording; both ranges were bounds-checked.
                unsafe { device.cmd_copy_buffer(cmd, staging.buffer, dst, &[region]) };
            });
            match cmd {
                Ok(cmd) => Ok(Work {
                    own_cmd: Some(cmd),
                    staging: vec![staging],
                    ..Work::default()
                }),
                Err(err) => {
                    shared.destroy_buffer(staging);
                    Err(err)
                }
            }
        })?;
        Ok(())
    }

    fn read_chunk(&self, src: vk::Buffer, src_offset: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len() as u64;
        let shared = &self.shared;
        let mut loaned: Option<RawBuffer> = None;
        let submitted = self.native.submit(|state| {
            let staging = state.staging(shared, len)?;
            let cmd = state.record(shared, |device, cmd| {
                let region = vk::BufferCopy {
                    src_offset,
                    dst_offset: 0,
                    size: len,
                };
                // SAFETY: `cmd` is recording; both ranges were bounds-checked.
                unsafe { device.cmd_copy_buffer(cmd, src, staging.buffer, &[region]) };
                let barrier = vk::MemoryBarrier::default()
                    .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                    .dst_access_mask(vk::AccessFlags::HOST_READ);
                // SAFETY: `cmd` is recording; makes the copy visible to host reads.
                unsafe {
                    device.cmd_pipeline_barrier(
                        cmd,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::PipelineStageFlags::HOST,
                        vk::DependencyFlags::empty(),
                        &[barrier],
                        &[],
                        &[],
                    )
                };
            });
            match cmd {
                Ok(cmd) => {
                    loaned = Some(staging);
                    Ok(Work {
                        own_cmd: Some(cmd),
                        ..Work::default()
                    })
                }
                Err(err) => {
                    shared.destroy_buffer(staging);
                    Err(err)
                }
            }
        });
        let value = match submitted {
            Ok(value) => value,
            Err(err) => {
                if let Some(staging) = loaned {
                    shared.destroy_buffer(staging);
                }
                return Err(err);
            }
        };
        let Some(staging) = loaned else {
            return Err(Error::invalid("read", "no staging buffer"));
        };
        let waited = self.native.wait_value(value);
        if waited.is_ok() {
            if let Some(mapped) = staging.mapped {
                // SAFETY: the copy into the staging buffer has completed (waited above) and was made visible to the host; it holds at least `len` bytes.
                unsafe { std::ptr::copy_nonoverlapping(mapped.0, out.as_mut_ptr(), out.len()) };
            }
        }
        self.native.return_staging(staging, value);
        waited
    }
}

impl gpuhal_hal::Stream<VulkanBackend> for VulkanStream {
    fn id(&self) -> StreamId {
        self.native.id
    }

    fn device_id(&self) -> DeviceId {
        self.shared.id
    }

    fn cache(&self) -> &StreamCache<VulkanMemory> {
        &self.cache
    }

    fn write(&self, dst: &dyn AsRegion, offset: u64, data: &[u8]) -> Result<()> {
        self.refuse_in_capture("write")?;
        let (buffer, start) = self.shared.resolve("write", &dst.region(), offset, data.len() as u64)?;
        let mut done = 0u64;
        for chunk in data.chunks(MAX_STAGING as usize) {
            self.write_chunk(buffer, start + done, chunk)?;
            done += chunk.len() as u64;
        }
        Ok(())
    }

    fn read(&self, src: &dyn AsRegion, offset: u64, out: &mut [u8]) -> Result<()> {
        self.refuse_in_capture("read")?;
        let (buffer, start) = self.shared.resolve("read", &src.region(), offset, out.len() as u64)?;
        let mut done = 0u64;
        for chunk in out.chunks_mut(MAX_STAGING as usize) {
            let len = chunk.len() as u64;
            self.read_chunk(buffer, start + done, chunk)?;
            done += len;
        }
        Ok(())
    }

    fn copy(&self, src: &dyn AsRegion, src_offset: u64, dst: &dyn AsRegion, dst_offset: u64, len: u64) -> Result<()> {
        let (src, src_offset) = self.shared.resolve("copy", &src.region(), src_offset, len)?;
        let (dst, dst_offset) = self.shared.resolve("copy", &dst.region(), dst_offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if src == dst && src_offset < dst_offset + len && dst_offset < src_offset + len {
            return Err(Error::invalid(
                "copy",
                format!(
                    "source {src_offset}..{} and destination {dst_offset}..{} overlap",
                    src_offset + len,
                    dst_offset + len
                ),
            ));
        }
        self.run(Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        })
    }

    fn fill(&self, dst: &dyn AsRegion, offset: u64, len: u64, value: u8) -> Result<()> {
        let (dst, offset) = self.shared.resolve("fill", &dst.region(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.run(Op::Fill {
            dst,
            offset,
            len,
            value,
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.refuse_in_capture("synchronize")?;
        let (_, value) = self.native.flushed_point()?;
        self.native.wait_value(value)
    }

    fn wait_event(&self, event: &VulkanEvent) -> Result<()> {
        gpuhal_hal::check_device("wait_event", "event", self.shared.id, event.device())?;
        self.refuse_in_capture("wait_event")?;
        if let Some((timeline, value)) = event.point() {
            self.native.add_wait(timeline, value);
        }
        Ok(())
    }

    fn signal(&self, fence: &VulkanFence, value: u64) -> Result<()> {
        gpuhal_hal::check_device("signal", "fence", self.shared.id, fence.device())?;
        self.refuse_in_capture("signal")?;
        fence.signal_on(&self.native, value)
    }

    fn wait(&self, fence: &VulkanFence, value: u64) -> Result<()> {
        gpuhal_hal::check_device("wait", "fence", self.shared.id, fence.device())?;
        self.refuse_in_capture("wait")?;
        self.native.add_wait(fence.timeline().clone(), value);
        Ok(())
    }

    fn begin_capture(&self, pool: &GraphPool<VulkanBackend>) -> Result<()> {
        gpuhal_hal::check_device("begin_capture", "graph pool", self.shared.id, pool.device())?;
        let mut capture = self.capture.lock();
        if capture.is_some() {
            return Err(Error::CaptureState(format!("{} is already capturing", self.native.id)));
        }
        *capture = Some(Vec::new());
        self.cache.begin_capture(pool.clone());
        Ok(())
    }

    fn end_capture(&self) -> Result<VulkanGraph> {
        let ops =
            self.capture.lock().take().ok_or_else(|| {
                Error::CaptureState(format!("end_capture on {}, which is not capturing", self.native.id))
            })?;
        let pool = self
            .cache
            .end_capture()
            .ok_or_else(|| Error::CaptureState(format!("{} lost its capture pool", self.native.id)))?;
        Ok(VulkanGraph {
            shared: self.shared.clone(),
            ops,
            pool,
        })
    }

    fn is_capturing(&self) -> bool {
        self.capture.lock().is_some()
    }
}
