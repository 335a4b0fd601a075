//! Allocation and free by pointer, `record_use`, and stream work addressed by pointer.

use std::ffi::c_void;
use std::sync::Arc;

use gpuhal::{DynBuffer, DynDevice, DynStream, MemoryKind};

use crate::allocations::{Located, LocatedMemory};
use crate::device::{DeviceEntry, DEVICES};
use crate::ffi::{host_slice, host_slice_mut, produce};
use crate::handles::{GpuhalDevice, GpuhalStream};
use crate::status::{guard, Failure, GpuhalStatus, InFunction};
use crate::stream::{stream, StreamEntry};

/// Stream-ordered device memory (the default).
pub const GPUHAL_MEMORY_DEVICE: u32 = 0;
/// Managed (unified) memory, with the device's managed policy applied.
pub const GPUHAL_MEMORY_MANAGED: u32 = 1;
/// Page-locked host memory mapped for the device.
pub const GPUHAL_MEMORY_HOST_PINNED: u32 = 2;

/// The memory kind with C code `kind`.
pub fn memory_kind(function: &str, kind: u32) -> Result<MemoryKind, Failure> {
    match kind {
        GPUHAL_MEMORY_DEVICE => Ok(MemoryKind::Device),
        GPUHAL_MEMORY_MANAGED => Ok(MemoryKind::Managed),
        GPUHAL_MEMORY_HOST_PINNED => Ok(MemoryKind::HostPinned),
        other => Err(Failure::invalid(
            function,
            format!("memory kind {other} is none of GPUHAL_MEMORY_DEVICE (0), _MANAGED (1), _HOST_PINNED (2)"),
        )),
    }
}

/// Allocates `size` bytes of `kind` on `stream` and registers the buffer; returns its
/// address (0 for `size` 0).
pub fn allocate(
    function: &str,
    device: &DeviceEntry,
    size: u64,
    kind: MemoryKind,
    on: &StreamEntry,
) -> Result<u64, Failure> {
    let buffer = device.device.allocate(size, kind, &on.stream).in_function(function)?;
    Ok(device.allocations.insert(buffer))
}

/// Takes the buffer starting at `address` out of `device`'s table; the caller drops it,
/// which frees it stream-ordered on the stream it was allocated on.
pub fn take(
    function: &str,
    device_id: u64,
    device: &DeviceEntry,
    address: u64,
) -> Result<Arc<gpuhal::AnyBuffer>, Failure> {
    device
        .allocations
        .remove(address)
        .ok_or_else(|| unknown_pointer(function, device_id, device, address))
}

/// The buffer starting at `address` on `device` (left in the table), or why there is none.
pub fn buffer_at(
    function: &str,
    device_id: u64,
    device: &DeviceEntry,
    address: u64,
) -> Result<Arc<gpuhal::AnyBuffer>, Failure> {
    match device.allocations.locate(address, 0) {
        Some(Located { buffer, offset: 0 }) => Ok(buffer),
        _ => Err(unknown_pointer(function, device_id, device, address)),
    }
}

/// Why `address` is not a buffer of `device`: another device's, inside one of this
/// device's buffers, or not gpuhal's (or freed already).
pub fn unknown_pointer(function: &str, device_id: u64, device: &DeviceEntry, address: u64) -> Failure {
    if let Some(Located { buffer, offset }) = device.allocations.locate(address, 0) {
        return Failure::new(
            GpuhalStatus::UnknownPointer,
            format!(
                "{function}: pointer {address:#x} is {offset} bytes into the allocation at {:#x}; \
                 pass the address the allocation returned",
                buffer.address()
            ),
        );
    }
    if device.allocations.holds_import(address) {
        return Failure::new(
            GpuhalStatus::UnknownPointer,
            format!(
                "{function}: pointer {address:#x} is in shared memory this device imported, not an allocation of \
                 it (release imports with gpuhal_shared_import_release)"
            ),
        );
    }
    for (other_id, other) in DEVICES.all() {
        if other_id != device_id && other.allocations.holds(address) {
            return Failure::new(
                GpuhalStatus::Foreign,
                format!("{function}: pointer {address:#x} belongs to device handle {other_id}, not device handle {device_id}"),
            );
        }
    }
    Failure::new(
        GpuhalStatus::UnknownPointer,
        format!(
            "{function}: pointer {address:#x} was not handed out by device handle {device_id}, or was freed already \
             (a double free)"
        ),
    )
}

/// The buffer or import holding `address .. address + len` on `device`, or why there is
/// none.
fn locate(function: &str, entry: &StreamEntry, address: u64, len: u64) -> Result<LocatedMemory, Failure> {
    entry.device.allocations.locate_memory(address, len).ok_or_else(|| {
        let allocations = &entry.device.allocations;
        if allocations.holds(address) || allocations.holds_import(address) {
            Failure::invalid(
                function,
                format!("{len} bytes from {address:#x} run past the end of its allocation"),
            )
        } else {
            unknown_pointer(function, entry.device_id, &entry.device, address)
        }
    })
}

/// Allocates `size` bytes of `kind` (`GPUHAL_MEMORY_*`) on `stream` from the device's
/// caching allocator. `*out` receives the address, aligned to at least 256 bytes, or NULL
/// for `size` 0.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_malloc(
    device: GpuhalDevice,
    size: u64,
    kind: u32,
    stream: GpuhalStream,
    out: *mut *mut c_void,
) -> GpuhalStatus {
    const F: &str = "gpuhal_malloc";
    guard(F, || {
        let make = || {
            let kind = memory_kind(F, kind)?;
            let entry = DEVICES.get(F, device.id)?;
            let on = self::stream(F, stream)?;
            if on.device_id != device.id {
                return Err(Failure::new(
                    GpuhalStatus::Foreign,
                    format!(
                        "{F}: stream handle {} belongs to device handle {}, not {}",
                        stream.id, on.device_id, device.id
                    ),
                ));
            }
            Ok(allocate(F, &entry, size, kind, &on)? as *mut c_void)
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Frees what `gpuhal_malloc` returned, stream-ordered on the stream it was allocated on
/// (and after the streams `gpuhal_record_use` named). NULL is a no-op. A pointer this
/// device did not hand out, or freed already, is `GPUHAL_STATUS_UNKNOWN_POINTER`, and
/// nothing changes.
#[no_mangle]
pub extern "C" fn gpuhal_free(device: GpuhalDevice, ptr: *mut c_void) -> GpuhalStatus {
    const F: &str = "gpuhal_free";
    guard(F, || {
        let entry = DEVICES.get(F, device.id)?;
        if ptr.is_null() {
            return Ok(());
        }
        take(F, device.id, &entry, ptr as u64).map(drop)
    })
}

/// Declares that `stream` uses the allocation at `ptr`: when it is freed, its memory is
/// not handed out again until `stream`'s work so far has completed.
#[no_mangle]
pub extern "C" fn gpuhal_record_use(device: GpuhalDevice, ptr: *mut c_void, stream: GpuhalStream) -> GpuhalStatus {
    const F: &str = "gpuhal_record_use";
    guard(F, || {
        let entry = DEVICES.get(F, device.id)?;
        let on = self::stream(F, stream)?;
        let address = ptr as u64;
        let located = entry
            .allocations
            .locate(address, 0)
            .ok_or_else(|| unknown_pointer(F, device.id, &entry, address))?;
        located.buffer.record_use(&on.stream).in_function(F)
    })
}

/// Sets `len` bytes from `dst` (inside a gpuhal allocation or an import of shared memory)
/// to `value`, on `stream`.
#[no_mangle]
pub extern "C" fn gpuhal_stream_fill(stream: GpuhalStream, dst: *mut c_void, len: u64, value: u8) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_fill";
    guard(F, || {
        let on = self::stream(F, stream)?;
        let at = locate(F, &on, dst as u64, len)?;
        on.stream.fill(&at.memory, at.offset, len, value).in_function(F)
    })
}

/// Copies `len` bytes from `src` to `dst` (both inside gpuhal allocations of the stream's
/// device), on `stream`.
#[no_mangle]
pub extern "C" fn gpuhal_stream_copy(
    stream: GpuhalStream,
    dst: *mut c_void,
    src: *const c_void,
    len: u64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_copy";
    guard(F, || {
        let on = self::stream(F, stream)?;
        let from = locate(F, &on, src as u64, len)?;
        let to = locate(F, &on, dst as u64, len)?;
        on.stream
            .copy(&from.memory, from.offset, &to.memory, to.offset, len)
            .in_function(F)
    })
}

/// Copies `len` bytes of host memory at `host` to `dst`, on `stream`; returns once
/// `host` may be reused.
///
/// # Safety
///
/// `host` is valid for reads of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_stream_write(
    stream: GpuhalStream,
    dst: *mut c_void,
    host: *const c_void,
    len: u64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_write";
    guard(F, || {
        // SAFETY: the caller passes `len` readable bytes at `host` (null is refused).
        let data = unsafe { host_slice(F, "host", host.cast(), len) }?;
        let on = self::stream(F, stream)?;
        let to = locate(F, &on, dst as u64, len)?;
        on.stream.write(&to.memory, to.offset, data).in_function(F)
    })
}

/// Copies `len` bytes from `src` into host memory at `host`, after the stream's earlier
/// work; returns when the bytes are there.
///
/// # Safety
///
/// `host` is valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_stream_read(
    stream: GpuhalStream,
    src: *const c_void,
    host: *mut c_void,
    len: u64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_stream_read";
    guard(F, || {
        // SAFETY: the caller passes `len` writable bytes at `host` (null is refused).
        let out = unsafe { host_slice_mut(F, "host", host.cast(), len) }?;
        let on = self::stream(F, stream)?;
        let from = locate(F, &on, src as u64, len)?;
        on.stream.read(&from.memory, from.offset, out).in_function(F)
    })
}
