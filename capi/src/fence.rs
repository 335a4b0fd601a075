//! Timeline fences: a u64 that only grows, signalled and awaited by streams and the CPU.

use std::time::Duration;

use gpuhal::{AnyFence, DynDevice, DynFence};

use crate::device::DEVICES;
use crate::ffi::{produce, write_out};
use crate::handles::{GpuhalDevice, GpuhalFence, Table};
use crate::status::{guard, GpuhalStatus, InFunction};

/// Every live fence.
pub static FENCES: Table<AnyFence> = Table::new("fence");

/// A new timeline fence starting at `initial`.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_fence_create(
    device: GpuhalDevice,
    initial: u64,
    out: *mut GpuhalFence,
) -> GpuhalStatus {
    const F: &str = "gpuhal_fence_create";
    guard(F, || {
        let make = || {
            let fence = DEVICES.get(F, device.id)?.device.create_fence(initial).in_function(F)?;
            let id = FENCES.insert(fence);
            Ok(GpuhalFence { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// `*value` receives the value the fence has reached.
///
/// # Safety
///
/// `value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_fence_value(fence: GpuhalFence, value: *mut u64) -> GpuhalStatus {
    const F: &str = "gpuhal_fence_value";
    guard(F, || {
        let reached = FENCES.get(F, fence.id)?.value().in_function(F)?;
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "value", value, reached) }
    })
}

/// Sets the fence to `value` from the CPU. Lower than a value already signalled is
/// `GPUHAL_STATUS_FENCE_REGRESSED`.
#[no_mangle]
pub extern "C" fn gpuhal_fence_signal(fence: GpuhalFence, value: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_fence_signal";
    guard(F, || FENCES.get(F, fence.id)?.signal(value).in_function(F))
}

/// Blocks until the fence reaches `value`, or `timeout_ns` passes
/// (`GPUHAL_STATUS_TIMEOUT`; the fence stays usable).
#[no_mangle]
pub extern "C" fn gpuhal_fence_wait(fence: GpuhalFence, value: u64, timeout_ns: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_fence_wait";
    guard(F, || {
        FENCES
            .get(F, fence.id)?
            .wait(value, Duration::from_nanos(timeout_ns))
            .in_function(F)
    })
}

/// Destroys a fence.
#[no_mangle]
pub extern "C" fn gpuhal_fence_destroy(fence: GpuhalFence) -> GpuhalStatus {
    guard("gpuhal_fence_destroy", || {
        FENCES.remove("gpuhal_fence_destroy", fence.id).map(drop)
    })
}
