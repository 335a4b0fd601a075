//! Streams: created by gpuhal or adopted from the framework, and the work that orders them.

use std::ffi::c_void;
use std::sync::Arc;

use gpuhal::{AnyStream, DynDevice, DynStream};

use crate::device::{DeviceEntry, DEVICES};
use crate::event::EVENTS;
use crate::fence::FENCES;
use crate::ffi::produce;
use crate::graph::{GRAPHS, POOLS};
use crate::handles::{GpuhalDevice, GpuhalEvent, GpuhalFence, GpuhalGraph, GpuhalGraphPool, GpuhalStream, Table};
use crate::status::{guard, Failure, GpuhalStatus, InFunction};

/// A stream and the device whose allocations its pointer arguments are looked up in.
pub struct StreamEntry {
    /// The stream.
    pub stream: AnyStream,
    /// Its device.
    pub device: Arc<DeviceEntry>,
    /// Its device's handle id.
    pub device_id: u64,
}

/// Every live stream.
pub static STREAMS: Table<StreamEntry> = Table::new("stream");

/// The stream behind `handle`.
pub fn stream(function: &str, handle: GpuhalStream) -> Result<Arc<StreamEntry>, Failure> {
    STREAMS.get(function, handle.id)
}

/// Registers `stream` of device `device_id`; returns its handle id.
pub fn register(stream: AnyStream, device: Arc<DeviceEntry>, device_id: u64) -> u64 {
    STREAMS.insert(StreamEntry {
        stream,
        device,
        device_id,
    })
}

/// A new stream on `device`.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_stream_create(device: GpuhalDevice, out: *mut GpuhalStream) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_create";
    guard(F, || {
        let make = || {
            let entry = DEVICES.get(F, device.id)?;
            let stream = entry.device.create_stream().in_function(F)?;
            let id = register(stream, entry, device.id);
            Ok(GpuhalStream { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// A gpuhal stream over the framework's native stream `raw` (a `CUstream`; NULL is the
/// legacy default stream, `(void*)2` the per-thread default stream). It caches like any
/// stream; gpuhal never destroys `raw`. CUDA only: other backends return
/// `GPUHAL_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `raw` is a stream of this device's CUDA context that outlives the returned stream and
/// every allocation made on it; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_stream_adopt(
    device: GpuhalDevice,
    raw: *mut c_void,
    out: *mut GpuhalStream,
) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_adopt";
    guard(F, || {
        let make = || {
            let entry = DEVICES.get(F, device.id)?;
            // SAFETY: the caller upholds adopt_stream's contract (documented above).
            let stream = unsafe { entry.device.adopt_stream(raw) }.in_function(F)?;
            let id = register(stream, entry, device.id);
            Ok(GpuhalStream { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Destroys a stream (an adopted one is only released: its native stream lives on).
/// Buffers allocated on it stay valid and still free in its order.
#[no_mangle]
pub extern "C" fn gpuhal_stream_destroy(stream: GpuhalStream) -> GpuhalStatus {
    guard("gpuhal_stream_destroy", || {
        STREAMS.remove("gpuhal_stream_destroy", stream.id).map(drop)
    })
}

/// Waits on the CPU until the stream's work so far has completed.
#[no_mangle]
pub extern "C" fn gpuhal_stream_synchronize(stream: GpuhalStream) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_synchronize";
    guard(F, || self::stream(F, stream)?.stream.synchronize().in_function(F))
}

/// Makes later work on `stream` wait (on the device) for what `event` recorded.
#[no_mangle]
pub extern "C" fn gpuhal_stream_wait_event(stream: GpuhalStream, event: GpuhalEvent) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_wait_event";
    guard(F, || {
        let on = self::stream(F, stream)?;
        on.stream.wait_event(&EVENTS.get(F, event.id)?.event).in_function(F)
    })
}

/// Enqueues on `stream` a signal of `fence` to `value`.
#[no_mangle]
pub extern "C" fn gpuhal_stream_signal_fence(stream: GpuhalStream, fence: GpuhalFence, value: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_signal_fence";
    guard(F, || {
        let on = self::stream(F, stream)?;
        on.stream.signal(&*FENCES.get(F, fence.id)?, value).in_function(F)
    })
}

/// Makes later work on `stream` wait (on the device) until `fence` reaches `value`.
#[no_mangle]
pub extern "C" fn gpuhal_stream_wait_fence(stream: GpuhalStream, fence: GpuhalFence, value: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_wait_fence";
    guard(F, || {
        let on = self::stream(F, stream)?;
        on.stream.wait(&*FENCES.get(F, fence.id)?, value).in_function(F)
    })
}

/// Starts capturing `stream`'s work into a graph; allocations made on it until
/// `gpuhal_stream_end_capture` come from `pool`, which several captures may share.
#[no_mangle]
pub extern "C" fn gpuhal_stream_begin_capture(stream: GpuhalStream, pool: GpuhalGraphPool) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_begin_capture";
    guard(F, || {
        let on = self::stream(F, stream)?;
        on.stream.begin_capture(&*POOLS.get(F, pool.id)?).in_function(F)
    })
}

/// Ends the capture; `*out` receives the graph.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_stream_end_capture(stream: GpuhalStream, out: *mut GpuhalGraph) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_end_capture";
    guard(F, || {
        let make = || {
            let graph = self::stream(F, stream)?.stream.end_capture().in_function(F)?;
            let id = GRAPHS.insert(graph);
            Ok(GpuhalGraph { id })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}
