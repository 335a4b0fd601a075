//! Turning Vulkan result codes into [`hal::Error`]s at the FFI edge.

use ash::vk;
use gpuhal_hal::{Error, NativeError};

/// The [`NativeError`] for a failed Vulkan call: `call` is the entry point
/// (`vkAllocateMemory`), the name is the symbolic `VK_ERROR_...` code.
pub(crate) fn native_error(call: &'static str, result: vk::Result) -> NativeError {
    NativeError {
        call,
        code: i64::from(result.as_raw()),
        name: format!("VK_{result:?}"),
    }
}

/// [`Error::Native`] for a failed Vulkan call, with what gpuhal was doing.
pub(crate) fn vk_error(context: impl Into<String>, call: &'static str, result: vk::Result) -> Error {
    Error::native(context, native_error(call, result))
}

/// Extension trait: attach context to an `ash` result.
pub(crate) trait VkResultExt<T> {
    /// Maps a failed call to [`Error::Native`] naming `call` and what was being done.
    fn vk(self, call: &'static str, context: impl FnOnce() -> String) -> gpuhal_hal::Result<T>;
}

impl<T> VkResultExt<T> for Result<T, vk::Result> {
    fn vk(self, call: &'static str, context: impl FnOnce() -> String) -> gpuhal_hal::Result<T> {
        self.map_err(|result| vk_error(context(), call, result))
    }
}
