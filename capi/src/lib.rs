//! gpuhal's C ABI: what C, C++ and Python (through ctypes) frameworks call, and the two
//! functions PyTorch's pluggable allocator takes.
//!
//! The header `capi/include/gpuhal.h` is generated from this crate by cbindgen
//! (`cargo xtask header`) and checked in; CI fails when it is stale.
//!
//! Conventions, as wgpu-native and similar C APIs have them:
//! - handles (`GpuhalDevice`, `GpuhalStream` …) are small structs holding an id, passed by
//!   value; ids are never reused, so a null, closed or made-up handle is an error
//!   (`GPUHAL_STATUS_INVALID_HANDLE`), not undefined behaviour;
//! - every function returns a `GpuhalStatus`; on failure, `gpuhal_last_error_message()`
//!   (thread-local) says what was asked and why, as the Rust errors do;
//! - memory is freed by pointer, stream-ordered on the stream it was allocated on; a
//!   pointer gpuhal did not hand out, a double free, or another device's pointer is an
//!   error and changes nothing;
//! - no panic crosses the boundary: each function runs in a guard that turns one into
//!   `GPUHAL_STATUS_INTERNAL`.
//!
//! This crate translates; the semantics are the facade's (`gpuhal::AnyDevice` and
//! friends).
#![warn(missing_docs)]

pub mod allocations;
pub mod device;
pub mod event;
pub mod fence;
pub mod ffi;
pub mod graph;
pub mod handles;
pub mod import;
pub mod memory;
pub mod report;
pub mod sharing;
pub mod sleep;
pub mod status;
pub mod stream;
pub mod torch;
pub mod trace;

/// `GpuhalDeviceInfo::capabilities` bit: managed (unified) memory.
pub const GPUHAL_CAP_MANAGED: u32 = 1 << 0;
/// Capability bit: the CPU and GPU may access managed memory concurrently.
pub const GPUHAL_CAP_CONCURRENT_MANAGED: u32 = 1 << 1;
/// Capability bit: host memory can be page-locked and mapped (registered).
pub const GPUHAL_CAP_HOST_REGISTER: u32 = 1 << 2;
/// Capability bit: the device reads pageable host memory directly (HMM, coherent platforms).
pub const GPUHAL_CAP_PAGEABLE_ACCESS: u32 = 1 << 3;
/// Capability bit: stream-ordered allocation.
pub const GPUHAL_CAP_STREAM_ORDERED_ALLOC: u32 = 1 << 4;
/// Capability bit: graph capture and replay.
pub const GPUHAL_CAP_GRAPHS: u32 = 1 << 5;
/// Capability bit: allocations inside captures.
pub const GPUHAL_CAP_GRAPH_MEM_NODES: u32 = 1 << 6;
/// Capability bit: events that record timing.
pub const GPUHAL_CAP_TIMING_EVENTS: u32 = 1 << 7;
/// Capability bit: timeline fences.
pub const GPUHAL_CAP_TIMELINE_FENCE: u32 = 1 << 8;
/// Capability bit: page-locked host memory.
pub const GPUHAL_CAP_HOST_PINNED: u32 = 1 << 9;
/// Capability bit: placement advice on managed memory.
pub const GPUHAL_CAP_MANAGED_ADVICE: u32 = 1 << 10;
/// Capability bit: device memory can come from growable virtual-memory segments
/// (`GPUHAL_SEGMENTS=growable` for the torch allocator).
pub const GPUHAL_CAP_GROWABLE_SEGMENTS: u32 = 1 << 11;
/// Capability bit: the device can be given access to another device's memory
/// (`gpuhal_enable_peer_access`).
pub const GPUHAL_CAP_PEER_ACCESS: u32 = 1 << 12;
/// Capability bit: device memory can be exported to another process and imported
/// (`gpuhal_export`, `gpuhal_import_shared`; open the device with
/// `GpuhalOpenOptions::sharing`).
pub const GPUHAL_CAP_IPC: u32 = 1 << 13;

/// `GpuhalManagedPolicy::advice` bit: prefer the device as the pages' location.
pub const GPUHAL_ADVICE_PREFER_DEVICE: u32 = 1 << 0;
/// Advice bit: prefer the host as the pages' location.
pub const GPUHAL_ADVICE_PREFER_HOST: u32 = 1 << 1;
/// Advice bit: the host accesses the memory (mapped, without migrating pages back).
pub const GPUHAL_ADVICE_ACCESSED_BY_HOST: u32 = 1 << 2;
/// Advice bit: the device accesses the memory.
pub const GPUHAL_ADVICE_ACCESSED_BY_DEVICE: u32 = 1 << 3;
/// Advice bit: mostly read (read-duplicated).
pub const GPUHAL_ADVICE_READ_MOSTLY: u32 = 1 << 4;

pub use status::GpuhalStatus;

// The constants above are literals so cbindgen can write them into the header; these
// checks keep them equal to gpuhal's own bits.
const _: () = {
    use gpuhal::{Advice, Capabilities};
    assert!(GPUHAL_CAP_MANAGED == Capabilities::MANAGED.bits());
    assert!(GPUHAL_CAP_CONCURRENT_MANAGED == Capabilities::CONCURRENT_MANAGED.bits());
    assert!(GPUHAL_CAP_HOST_REGISTER == Capabilities::HOST_REGISTER.bits());
    assert!(GPUHAL_CAP_PAGEABLE_ACCESS == Capabilities::PAGEABLE_ACCESS.bits());
    assert!(GPUHAL_CAP_STREAM_ORDERED_ALLOC == Capabilities::STREAM_ORDERED_ALLOC.bits());
    assert!(GPUHAL_CAP_GRAPHS == Capabilities::GRAPHS.bits());
    assert!(GPUHAL_CAP_GRAPH_MEM_NODES == Capabilities::GRAPH_MEM_NODES.bits());
    assert!(GPUHAL_CAP_TIMING_EVENTS == Capabilities::TIMING_EVENTS.bits());
    assert!(GPUHAL_CAP_TIMELINE_FENCE == Capabilities::TIMELINE_FENCE.bits());
    assert!(GPUHAL_CAP_HOST_PINNED == Capabilities::HOST_PINNED.bits());
    assert!(GPUHAL_CAP_MANAGED_ADVICE == Capabilities::MANAGED_ADVICE.bits());
    assert!(GPUHAL_CAP_GROWABLE_SEGMENTS == Capabilities::GROWABLE_SEGMENTS.bits());
    assert!(GPUHAL_CAP_PEER_ACCESS == Capabilities::PEER_ACCESS.bits());
    assert!(GPUHAL_CAP_IPC == Capabilities::IPC.bits());
    assert!(
        Capabilities::all().bits() == (1 << 14) - 1,
        "a capability was added: give it a GPUHAL_CAP_ constant"
    );
    assert!(GPUHAL_ADVICE_PREFER_DEVICE == Advice::PREFER_DEVICE.bits());
    assert!(GPUHAL_ADVICE_PREFER_HOST == Advice::PREFER_HOST.bits());
    assert!(GPUHAL_ADVICE_ACCESSED_BY_HOST == Advice::ACCESSED_BY_HOST.bits());
    assert!(GPUHAL_ADVICE_ACCESSED_BY_DEVICE == Advice::ACCESSED_BY_DEVICE.bits());
    assert!(GPUHAL_ADVICE_READ_MOSTLY == Advice::READ_MOSTLY.bits());
    assert!(
        Advice::all().bits() == (1 << 5) - 1,
        "an advice was added: give it a GPUHAL_ADVICE_ constant"
    );
};
