pub use gpuhal_hal::*;
