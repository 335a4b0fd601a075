//! gpuhal's Vulkan backend, on [`ash`] with the Vulkan loader loaded at run time: the
//! crate builds and links with no Vulkan installed, and [`VulkanDevice::open`] returns a
//! clear error when no loader or driver is present ([`loader_available`] says which).
//!
//! How the hal's concepts map onto Vulkan:
//!
//! | hal | Vulkan |
//! | --- | --- |
//! | native block | a `VkDeviceMemory` with one `VkBuffer` bound (`Region::native` = the buffer) |
//! | `Device` memory | a `DEVICE_LOCAL` type; `HostPinned`: `HOST_VISIBLE \| HOST_COHERENT`, persistently mapped |
//! | `Managed` memory | unsupported: Vulkan memory does not migrate, and has no advice or prefetch |
//! | stream | a timeline semaphore counting batches, all streams on one `VkQueue` |
//! | stream-ordered free | destroyed once the stream's timeline passes its value at free time |
//! | fence | a timeline semaphore |
//! | event | a (timeline, value) point; timing events add a timestamp query (pooled) |
//! | graph | the captured transfers, recorded into a reusable command buffer |
//! | host import | `VK_EXT_external_memory_host` (reported `Registered`), else a copy if allowed |
//!
//! Device addresses are buffer device addresses where the device supports them (and they
//! are 256-byte aligned); otherwise unique fake addresses. Stream operations resolve a
//! region through `native` and `native_offset`, never through its address.
#![warn(missing_docs)]

mod device;
mod error;
mod event;
mod fence;
mod graph;
mod import;
mod memory;
mod queue;
mod stream;

pub use device::{loader_available, VulkanDevice, DEVICE_FILTER_ENV};
pub use event::{EventFactory, NativeEvent, VulkanEvent};
pub use fence::VulkanFence;
pub use graph::{VulkanGraph, VulkanGraphExec};
pub use memory::VulkanMemory;
pub use queue::{StreamNative, Timeline};
pub use stream::VulkanStream;

/// The Vulkan backend: ties the Vulkan handle types together.
#[derive(Debug)]
pub struct VulkanBackend;

impl gpuhal_hal::Backend for VulkanBackend {
    const NAME: &'static str = "vulkan";
    type Memory = VulkanMemory;
    type Device = VulkanDevice;
    type Stream = VulkanStream;
    type Event = VulkanEvent;
    type Fence = VulkanFence;
    type Graph = VulkanGraph;
    type GraphExec = VulkanGraphExec;
}
