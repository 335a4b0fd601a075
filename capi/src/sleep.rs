//! Sleep and wake: a device's physical memory given back while its addresses stay valid,
//! with the contents of chosen allocations kept (vLLM's sleep mode). Needs a device opened
//! with growable segments.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Arc;

use gpuhal::{AnyBuffer, DynBuffer, DynDevice, SleepReport, WakeReport};

use crate::device::{device, DeviceEntry};
use crate::ffi::write_out;
use crate::handles::GpuhalDevice;
use crate::memory::unknown_pointer;
use crate::status::{guard, Failure, GpuhalStatus, InFunction};

/// What `gpuhal_sleep` did, as `gpuhal::SleepReport`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuhalSleepReport {
    /// Physical memory given back: idle cached blocks and the memory under live ones.
    pub released_bytes: u64,
    /// Bytes copied to host memory, restored on wake.
    pub kept_bytes: u64,
    /// Bytes of sleeping allocations not kept: undefined after wake.
    pub discarded_bytes: u64,
    /// Native blocks put to sleep.
    pub blocks: u64,
}

impl From<SleepReport> for GpuhalSleepReport {
    fn from(r: SleepReport) -> Self {
        GpuhalSleepReport {
            released_bytes: r.released_bytes,
            kept_bytes: r.kept_bytes,
            discarded_bytes: r.discarded_bytes,
            blocks: r.blocks,
        }
    }
}

/// What `gpuhal_wake` did, as `gpuhal::WakeReport`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuhalWakeReport {
    /// Physical memory mapped again under sleeping blocks.
    pub mapped_bytes: u64,
    /// Kept bytes copied back.
    pub restored_bytes: u64,
    /// Native blocks woken.
    pub blocks: u64,
}

impl From<WakeReport> for GpuhalWakeReport {
    fn from(r: WakeReport) -> Self {
        GpuhalWakeReport {
            mapped_bytes: r.mapped_bytes,
            restored_bytes: r.restored_bytes,
            blocks: r.blocks,
        }
    }
}

/// The allocations of `device` that the `count` pointers at `keep` fall into, each once
/// (a pointer inside an allocation keeps all of it; NULL entries, the address of an empty
/// allocation, keep nothing).
///
/// # Safety
///
/// `keep` is valid for reads of `count` pointers, or `count` is 0.
unsafe fn kept_buffers(
    function: &str,
    device_id: u64,
    device: &DeviceEntry,
    keep: *const *const c_void,
    count: usize,
) -> Result<Vec<Arc<AnyBuffer>>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if keep.is_null() {
        return Err(Failure::invalid(function, format!("keep is null but count is {count}")));
    }
    // SAFETY: not null, and the caller passes `count` readable pointers at `keep`.
    let pointers = unsafe { std::slice::from_raw_parts(keep, count) };
    let mut buffers = BTreeMap::new();
    for &pointer in pointers.iter().filter(|pointer| !pointer.is_null()) {
        let address = pointer as u64;
        let located = device
            .allocations
            .locate(address, 0)
            .ok_or_else(|| unknown_pointer(function, device_id, device, address))?;
        buffers.entry(located.buffer.address()).or_insert(located.buffer);
    }
    Ok(buffers.into_values().collect())
}

/// Puts `device` to sleep, keeping the allocations the `count` pointers at `keep` fall into.
///
/// # Safety
///
/// `keep` is valid for reads of `count` pointers, or `count` is 0.
pub(crate) unsafe fn sleep(
    function: &str,
    device_id: u64,
    device: &DeviceEntry,
    keep: *const *const c_void,
    count: usize,
) -> Result<GpuhalSleepReport, Failure> {
    // SAFETY: the caller passes `count` readable pointers at `keep`.
    let buffers = unsafe { kept_buffers(function, device_id, device, keep, count) }?;
    let keep: Vec<&AnyBuffer> = buffers.iter().map(|buffer| &**buffer).collect();
    device.device.sleep(&keep).in_function(function).map(Into::into)
}

/// Writes `value` through `out` unless `out` is null.
///
/// # Safety
///
/// `out` is null or valid for a write.
pub(crate) unsafe fn write_optional<T>(function: &str, out: *mut T, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Ok(());
    }
    // SAFETY: not null, and the caller passes it valid for a write.
    unsafe { write_out(function, "out", out, value) }
}

/// Releases the physical memory of everything `device` holds (idle cached blocks and live
/// allocations) while their addresses stay valid, after copying the allocations that the
/// `count` pointers at `keep` fall into to host memory. A pointer inside an allocation
/// keeps all of it; NULL entries keep nothing. Allocations not kept read back undefined
/// after `gpuhal_wake`. Until then no work may touch the device's memory, and nothing
/// should be allocated. Needs a device opened with growable segments:
/// `GPUHAL_STATUS_UNSUPPORTED` otherwise, with nothing released. A pointer this device
/// did not hand out is refused before anything sleeps. `out` may be NULL.
///
/// # Safety
///
/// `keep` is valid for reads of `count` pointers (or `count` is 0); `out` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_sleep(
    device_handle: GpuhalDevice,
    keep: *const *const c_void,
    count: usize,
    out: *mut GpuhalSleepReport,
) -> GpuhalStatus {
    const F: &str = "gpuhal_sleep";
    guard(F, || {
        let entry = device(F, device_handle)?;
        // SAFETY: the caller passes `count` readable pointers at `keep`.
        let report = unsafe { sleep(F, device_handle.id, &entry, keep, count) }?;
        // SAFETY: the caller passes `out` null or valid for a write.
        unsafe { write_optional(F, out, report) }
    })
}

/// Wakes what `gpuhal_sleep` put to sleep: maps physical memory again at the same
/// addresses and restores the kept contents. On `GPUHAL_STATUS_OUT_OF_MEMORY` what woke
/// stays awake and calling again retries the rest. `out` may be NULL.
///
/// # Safety
///
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_wake(device_handle: GpuhalDevice, out: *mut GpuhalWakeReport) -> GpuhalStatus {
    const F: &str = "gpuhal_wake";
    guard(F, || {
        let report: GpuhalWakeReport = device(F, device_handle)?.device.wake().in_function(F)?.into();
        // SAFETY: the caller passes `out` null or valid for a write.
        unsafe { write_optional(F, out, report) }
    })
}
