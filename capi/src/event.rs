//! Events from a device's pool: record, wait, time, release.

use gpuhal::{AnyEvent, DynDevice, DynEvent};

use crate::device::DEVICES;
use crate::ffi::{produce, write_out};
use crate::handles::{GpuhalDevice, GpuhalEvent, GpuhalStream, Table};
use crate::status::{guard, GpuhalStatus, InFunction};
use crate::stream::stream;

/// An event handed to C.
pub struct EventEntry {
    /// The event.
    pub event: AnyEvent,
}

/// Every acquired event.
pub static EVENTS: Table<EventEntry> = Table::new("event");

/// An event from the device's pool; `timing` enables `gpuhal_event_elapsed`.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_event_acquire(
    device: GpuhalDevice,
    timing: bool,
    out: *mut GpuhalEvent,
) -> GpuhalStatus {
    const F: &str = "gpuhal_event_acquire";
    guard(F, || {
        let make = || {
            let event = DEVICES.get(F, device.id)?.device.event(timing).in_function(F)?;
            let id = EVENTS.insert(EventEntry { event });
            Ok(GpuhalEvent { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Marks the current end of `stream`'s work.
#[no_mangle]
pub extern "C" fn gpuhal_event_record(event: GpuhalEvent, stream: GpuhalStream) -> GpuhalStatus {
    const F: &str = "gpuhal_event_record";
    guard(F, || {
        let on = self::stream(F, stream)?;
        EVENTS.get(F, event.id)?.event.record(&on.stream).in_function(F)
    })
}

/// Waits on the CPU until the recorded work has completed.
#[no_mangle]
pub extern "C" fn gpuhal_event_synchronize(event: GpuhalEvent) -> GpuhalStatus {
    const F: &str = "gpuhal_event_synchronize";
    guard(F, || EVENTS.get(F, event.id)?.event.synchronize().in_function(F))
}

/// `*complete` receives whether the recorded work has completed.
///
/// # Safety
///
/// `complete` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_event_query(event: GpuhalEvent, complete: *mut bool) -> GpuhalStatus {
    const F: &str = "gpuhal_event_query";
    guard(F, || {
        let done = EVENTS.get(F, event.id)?.event.is_complete().in_function(F)?;
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "complete", complete, done) }
    })
}

/// `*milliseconds` receives the time from `start` (recorded first) to `end`; both need
/// timing.
///
/// # Safety
///
/// `milliseconds` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_event_elapsed(
    start: GpuhalEvent,
    end: GpuhalEvent,
    milliseconds: *mut f64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_event_elapsed";
    guard(F, || {
        let end = EVENTS.get(F, end.id)?;
        let elapsed = EVENTS.get(F, start.id)?.event.elapsed(&end.event).in_function(F)?;
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "milliseconds", milliseconds, elapsed.as_secs_f64() * 1e3) }
    })
}

/// Returns the event to its device's pool.
#[no_mangle]
pub extern "C" fn gpuhal_event_release(event: GpuhalEvent) -> GpuhalStatus {
    guard("gpuhal_event_release", || {
        EVENTS.remove("gpuhal_event_release", event.id).map(drop)
    })
}
