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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_vk_symbols_and_oom_is_recognised() {
        let err = vk_error("allocating", "vkAllocateMemory", vk::Result::ERROR_OUT_OF_DEVICE_MEMORY);
        match &err {
            Error::Native { native, .. } => {
                assert_eq!(native.name, "VK_ERROR_OUT_OF_DEVICE_MEMORY");
                assert_eq!(native.code, -2);
                assert_eq!(native.call, "vkAllocateMemory");
            }
            other => panic!("{other}"),
        }
        assert!(err.is_out_of_memory());
        assert!(!vk_error("x", "vkQueueSubmit", vk::Result::ERROR_DEVICE_LOST).is_out_of_memory());
    }
}
