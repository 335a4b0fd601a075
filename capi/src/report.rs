//! The memory report as JSON: a string gpuhal allocates and the caller frees with
//! `gpuhal_string_free`.

use std::ffi::{c_char, CString};

use gpuhal::{DynDevice, MemoryReport};

use crate::device::device;
use crate::ffi::write_out;
use crate::handles::GpuhalDevice;
use crate::status::{guard, Failure, GpuhalStatus};

/// Writes `report` as a NUL-terminated JSON string through `out` (to be freed with
/// `gpuhal_string_free`) and its length in bytes, without the NUL, through `len` (may be
/// null).
///
/// # Safety
///
/// `out` is null or valid for a write; `len` is null or valid for a write.
pub(crate) unsafe fn write_json(
    function: &'static str,
    report: &MemoryReport,
    out: *mut *mut c_char,
    len: *mut usize,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(function, "out is null"));
    }
    let json = serde_json::to_string(report)
        .map_err(|err| Failure::invalid(function, format!("the report did not serialise: {err}")))?;
    let length = json.len();
    let text =
        CString::new(json).map_err(|err| Failure::invalid(function, format!("the report holds a NUL byte: {err}")))?;
    if !len.is_null() {
        // SAFETY: not null, and the caller passes it valid for a write.
        unsafe { len.write(length) };
    }
    // SAFETY: not null (checked above), and the caller passes it valid for a write.
    unsafe { write_out(function, "out", out, text.into_raw()) }
}

/// What holds the device's memory, as JSON: every native allocation with its pieces
/// (live, idle, pending on which streams), per-stream and per-kind totals, the largest
/// idle piece, fragmentation, the graph pools and the event pool. `*out` receives a
/// NUL-terminated string to free with [`gpuhal_string_free`]; `*len` (when `len` is not
/// null) its length without the NUL.
///
/// # Safety
///
/// `out` is valid for a write; `len` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_memory_report_json(
    device_handle: GpuhalDevice,
    out: *mut *mut c_char,
    len: *mut usize,
) -> GpuhalStatus {
    const F: &str = "gpuhal_memory_report_json";
    guard(F, || {
        let report = device(F, device_handle)?.device.memory_report();
        // SAFETY: the caller passes `out` and `len` as the contract says.
        unsafe { write_json(F, &report, out, len) }
    })
}

/// Frees a string gpuhal returned (a memory report). Null is a no-op.
///
/// # Safety
///
/// `text` is null or a string from gpuhal not yet freed.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_string_free(text: *mut c_char) {
    if text.is_null() {
        return;
    }
    // SAFETY: the caller passes a string `CString::into_raw` made, not yet freed.
    drop(unsafe { CString::from_raw(text) });
}
