//! Allocation trace recording: every allocation and free, written as the JSON-lines trace
//! that `cargo xtask replay` (and `--timeline`) reads.

use std::ffi::c_char;
use std::path::Path;

use gpuhal::trace::TraceRecorder;
use gpuhal::DynDevice;

use crate::device::DEVICES;
use crate::ffi::{read_str, write_out};
use crate::handles::GpuhalDevice;
use crate::status::{guard, Failure, GpuhalStatus, InFunction};

/// Starts recording `device`'s allocations and frees into the file at `path` (`.jsonl`,
/// or `.jsonl.gz` to compress), replacing a recording already running (which is stopped
/// and flushed first).
///
/// # Safety
///
/// `path` is a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_trace_start(device: GpuhalDevice, path: *const c_char) -> GpuhalStatus {
    const F: &str = "gpuhal_trace_start";
    guard(F, || {
        // SAFETY: the caller passes a NUL-terminated string (null is refused).
        let path = Path::new(unsafe { read_str(F, "path", path) }?);
        let entry = DEVICES.get(F, device.id)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("trace");
        let name = name.split('.').next().unwrap_or(name);
        let recorder = TraceRecorder::create(name, path).in_function(F)?;
        if let Some(previous) = entry.device.stop_trace() {
            previous.finish().in_function(F)?;
        }
        entry.device.start_trace(recorder);
        Ok(())
    })
}

/// Stops the recording `gpuhal_trace_start` began and finishes the file; `*events` (when
/// not null) receives how many events it holds. No recording running is
/// `GPUHAL_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `events` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_trace_stop(device: GpuhalDevice, events: *mut u64) -> GpuhalStatus {
    const F: &str = "gpuhal_trace_stop";
    guard(F, || {
        let entry = DEVICES.get(F, device.id)?;
        let recorder = entry
            .device
            .stop_trace()
            .ok_or_else(|| Failure::invalid(F, format!("device handle {} is not recording a trace", device.id)))?;
        let written = recorder.finish().in_function(F)?;
        if events.is_null() {
            return Ok(());
        }
        // SAFETY: not null, and the caller passes it valid for a write.
        unsafe { write_out(F, "events", events, written) }
    })
}
