//! Loading the driver and holding a device's primary context.
//!
//! The driver library is loaded at run time. A missing library, a library without the
//! entry points gpuhal needs, or a driver older than the bindings is reported as an
//! error, never a panic.

use std::sync::{Arc, OnceLock};

use gpuhal_hal::{Error, NativeError, Result};
use parking_lot::Mutex;

use crate::error::Context as _;
use crate::kernels::SmallOpKernels;
use crate::raw::{self, CUcontext, CUdevice};
use crate::sharing::Peers;

/// The oldest driver whose entry points the bindings use (CUDA 12.2: location-based
/// `cuMemAdvise_v2` / `cuMemPrefetchAsync_v2`).
pub(crate) const MIN_DRIVER_VERSION: i32 = 12020;

/// Why the driver is unusable, kept so every later call reports the same thing.
#[derive(Debug, Clone)]
struct LoadFailure {
    context: String,
    native: NativeError,
}

/// Loads and initialises the driver once per process.
fn load() -> &'static std::result::Result<i32, LoadFailure> {
    static STATE: OnceLock<std::result::Result<i32, LoadFailure>> = OnceLock::new();
    STATE.get_or_init(|| {
        if !raw::library_present() {
            return Err(LoadFailure {
                context: "no CUDA driver found: the driver library (libcuda.so.1 / libcuda.so) could not be \
                          loaded; install the NVIDIA driver or add its directory to LD_LIBRARY_PATH"
                    .into(),
                native: NativeError {
                    call: "dlopen(libcuda)",
                    code: -1,
                    name: "LIBRARY_NOT_FOUND".into(),
                },
            });
        }
        // The bindings panic when an entry point is missing from the library; keep that
        // from reaching the caller.
        let init = std::panic::catch_unwind(raw::init).map_err(|_| LoadFailure {
            context: "no CUDA driver found: the driver library lacks cuInit".into(),
            native: NativeError {
                call: "cuInit",
                code: -1,
                name: "SYMBOL_NOT_FOUND".into(),
            },
        })?;
        init.map_err(|native| LoadFailure {
            context: "no usable CUDA driver: cuInit failed".into(),
            native,
        })?;
        let version = std::panic::catch_unwind(raw::driver_version)
            .map_err(|_| LoadFailure {
                context: "no CUDA driver found: the driver library lacks cuDriverGetVersion".into(),
                native: NativeError {
                    call: "cuDriverGetVersion",
                    code: -1,
                    name: "SYMBOL_NOT_FOUND".into(),
                },
            })?
            .map_err(|native| LoadFailure {
                context: "reading the CUDA driver version".into(),
                native,
            })?;
        if version < MIN_DRIVER_VERSION {
            return Err(LoadFailure {
                context: format!(
                    "the CUDA driver supports CUDA {}.{}, gpuhal needs {}.{} or newer",
                    version / 1000,
                    version % 1000 / 10,
                    MIN_DRIVER_VERSION / 1000,
                    MIN_DRIVER_VERSION % 1000 / 10
                ),
                native: NativeError {
                    call: "cuDriverGetVersion",
                    code: version as i64,
                    name: "DRIVER_TOO_OLD".into(),
                },
            });
        }
        Ok(version)
    })
}

/// Whether a usable CUDA driver is installed: its library loads, `cuInit` succeeds and it
/// is new enough. Never panics; the answer is computed once per process.
pub fn driver_available() -> bool {
    load().is_ok()
}

/// The driver's CUDA version (e.g. 13000 for 13.0), loading the driver if needed.
pub fn driver_version() -> Result<i32> {
    match load() {
        Ok(version) => Ok(*version),
        Err(failure) => Err(Error::native(failure.context.clone(), failure.native.clone())),
    }
}

/// Page-locked host memory that streams may still access, freed once every event in
/// `after` has completed.
pub(crate) struct Retired {
    pub(crate) host: u64,
    pub(crate) after: Vec<raw::CUevent>,
}

/// A retained primary context and the device it belongs to.
pub(crate) struct Context {
    raw: CUcontext,
    device: CUdevice,
    ordinal: u32,
    retired: Mutex<Vec<Retired>>,
    /// Devices whose memory this context's streams were given access to.
    peers: Peers,
    /// gpuhal's kernels for small fills and copies; `Err` says why the driver could not
    /// load them (streams then use memset and memcpy for every size).
    small_ops: std::result::Result<SmallOpKernels, NativeError>,
}

// SAFETY: a context handle is usable from any thread (the driver locks internally); we only pass it to driver calls.
unsafe impl Send for Context {}
// SAFETY: as above: shared use only passes the handle to thread-safe driver calls.
unsafe impl Sync for Context {}

impl Context {
    /// Loads the driver and retains the primary context of device `ordinal`.
    pub(crate) fn retain(ordinal: u32) -> Result<Arc<Context>> {
        driver_version()?;
        let count = raw::device_count().context(|| "counting CUDA devices".into())?;
        let index = i32::try_from(ordinal).ok().filter(|&o| o < count).ok_or_else(|| {
            Error::invalid(
                "CudaDevice::open",
                format!("device ordinal {ordinal} does not exist: the driver reports {count} device(s)"),
            )
        })?;
        let device = raw::device_get(index).context(|| format!("getting CUDA device {ordinal}"))?;
        let raw = raw::primary_ctx_retain(device)
            .context(|| format!("retaining the primary context of CUDA device {ordinal}"))?;
        if let Err(err) = Self::bind_raw(raw, ordinal) {
            // The error worth reporting is the bind's.
            let _ = raw::primary_ctx_release(device);
            return Err(err);
        }
        // Loaded once, at open: module loading is not allowed while a stream captures.
        let small_ops = SmallOpKernels::load();
        Ok(Arc::new(Context {
            raw,
            device,
            ordinal,
            retired: Mutex::new(Vec::new()),
            peers: Peers::default(),
            small_ops,
        }))
    }

    /// Makes the context current on the calling thread, if it is not already.
    #[inline]
    pub(crate) fn bind(&self) -> Result<()> {
        Self::bind_raw(self.raw, self.ordinal)
    }

    #[inline]
    fn bind_raw(ctx: CUcontext, ordinal: u32) -> Result<()> {
        let current = raw::ctx_get_current().context(|| "reading the current CUDA context".into())?;
        if current != ctx {
            raw::ctx_set_current(ctx).context(|| format!("making the context of CUDA device {ordinal} current"))?;
        }
        Ok(())
    }

    /// The kernels for small fills and copies, when the driver loaded them.
    #[inline]
    pub(crate) fn small_ops(&self) -> Option<&SmallOpKernels> {
        self.small_ops.as_ref().ok()
    }

    /// Why the small-op kernels are not in use, if they are not.
    pub(crate) fn small_ops_error(&self) -> Option<&NativeError> {
        self.small_ops.as_ref().err()
    }

    /// The driver's device handle.
    pub(crate) fn device(&self) -> CUdevice {
        self.device
    }

    /// The ordinal the device was opened with.
    pub(crate) fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// The ordinal as the driver's `int`.
    pub(crate) fn ordinal_i32(&self) -> i32 {
        self.ordinal as i32
    }

    /// Hands over host memory that enqueued stream work may still touch; it is freed
    /// by [`collect_retired`](Self::collect_retired) once `after` has completed.
    pub(crate) fn retire(&self, retired: Retired) {
        self.retired.lock().push(retired);
        self.collect_retired();
    }

    /// Frees retired memory whose streams have passed their events.
    pub(crate) fn collect_retired(&self) {
        let mut retired = self.retired.lock();
        retired.retain_mut(|item| {
            item.after.retain(|&event| {
                let done = raw::event_query(event).unwrap_or(true);
                if done {
                    let _ = raw::event_destroy(event);
                }
                !done
            });
            if item.after.is_empty() {
                let _ = raw::mem_free_host(item.host);
                false
            } else {
                true
            }
        });
    }

    /// The devices whose memory this device's streams may use besides its own.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The raw context handle.
    pub(crate) fn raw(&self) -> CUcontext {
        self.raw
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // What is still in use is released with the context below.
        if self.bind().is_ok() {
            self.collect_retired();
            if let Ok(kernels) = &self.small_ops {
                let _ = kernels.unload();
            }
        }
        // Nothing useful can be done with a failed release at drop.
        let _ = raw::primary_ctx_release(self.device);
    }
}
