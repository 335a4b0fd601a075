//! Error mapping: every driver status becomes a [`NativeError`] naming the call, the
//! numeric code and the symbolic name (`CUDA_ERROR_OUT_OF_MEMORY` …), and every
//! [`NativeError`] becomes an [`Error::Native`] carrying what gpuhal was doing.

use cudarc::driver::sys::CUresult;
use gpuhal_hal::{Error, NativeError};

/// A driver call's outcome before context is attached.
pub(crate) type NativeResult<T> = std::result::Result<T, NativeError>;

/// The [`NativeError`] for `status` returned by `call`.
pub(crate) fn native_error(call: &'static str, status: CUresult) -> NativeError {
    NativeError {
        call,
        code: status as i64,
        // The bindings' enum variants carry the driver's symbolic names.
        name: format!("{status:?}"),
    }
}

/// `Ok` for `CUDA_SUCCESS`, the named error otherwise.
pub(crate) fn check(call: &'static str, status: CUresult) -> NativeResult<()> {
    if status == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(native_error(call, status))
    }
}

/// Attaches "what was being done" to a driver error.
pub(crate) trait Context<T> {
    /// Turns the driver error into [`Error::Native`] with `context()` as its context.
    fn context(self, context: impl FnOnce() -> String) -> gpuhal_hal::Result<T>;
}

impl<T> Context<T> for NativeResult<T> {
    #[inline]
    fn context(self, context: impl FnOnce() -> String) -> gpuhal_hal::Result<T> {
        self.map_err(|native| Error::native(context(), native))
    }
}
