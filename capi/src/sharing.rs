//! Sharing device memory with another process or device: export a buffer, import it on
//! the other side, interprocess events to order the two, the handle sent over a Unix
//! socket, and peer access between devices.
//!
//! The exporter keeps the memory alive: its allocation must stay unfreed until every
//! importer has released its import and that importer's last work on it has completed
//! (see `gpuhal::sharing`). Likewise the event made by `gpuhal_shared_event_create` must
//! outlive every event opened from its handle.

use std::ffi::{c_char, c_int, c_void};
use std::mem::ManuallyDrop;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;

use gpuhal::handle_transfer::{receive_shared, send_shared};
use gpuhal::sharing::EXPORT_DATA_LEN;
use gpuhal::{DynDevice, PoolHandle, SharedEvent, SharedMemory};

use crate::device::device;
use crate::event::{EventEntry, EVENTS};
use crate::ffi::{produce, read_in, write_out};
use crate::handles::{GpuhalDevice, GpuhalEvent};
use crate::memory::buffer_at;
use crate::status::{guard, Failure, GpuhalStatus, InFunction};

/// Bytes of opaque driver data in a shared handle (`GpuhalSharedMemory::allocation`,
/// `GpuhalSharedEvent::data`).
pub const GPUHAL_EXPORT_DATA_LEN: usize = 64;

const _: () = assert!(GPUHAL_EXPORT_DATA_LEN == EXPORT_DATA_LEN);

/// An exported allocation: everything an importer needs, as `gpuhal::SharedMemory`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalSharedMemory {
    /// The exporting backend's name, NUL-terminated ("cuda", "mock").
    pub backend: [c_char; 16],
    /// The exporter's pool as a file descriptor (CUDA), or -1 when the pool is a token
    /// (the mock). A descriptor from `gpuhal_export` or `gpuhal_receive_shared` is the
    /// caller's to close once it has been sent or imported; gpuhal only duplicates it.
    pub fd: c_int,
    /// The pool's token when `fd` is -1.
    pub token: u64,
    /// Which native allocation of the pool holds the memory (driver data).
    pub allocation: [u8; 64],
    /// Offset of the exported allocation inside that native allocation.
    pub offset: u64,
    /// Length of the exported allocation in bytes.
    pub len: u64,
}

/// An interprocess event's handle, as `gpuhal::SharedEvent`: plain data.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalSharedEvent {
    /// The backend that made it, NUL-terminated.
    pub backend: [c_char; 16],
    /// What the driver needs to open the event.
    pub data: [u8; 64],
}

fn backend_to_c(name: &str) -> [c_char; 16] {
    let mut out = [0 as c_char; 16];
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte as c_char;
    }
    out
}

fn backend_from_c(function: &str, name: &[c_char; 16]) -> Result<&'static str, Failure> {
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let bytes: Vec<u8> = name[..len].iter().map(|&c| c as u8).collect();
    gpuhal::COMPILED_BACKENDS
        .iter()
        .copied()
        .find(|known| known.as_bytes() == bytes.as_slice())
        .ok_or_else(|| {
            Failure::invalid(
                function,
                format!(
                    "the handle names backend {:?}, none of this build's ({})",
                    String::from_utf8_lossy(&bytes),
                    gpuhal::COMPILED_BACKENDS.join(", ")
                ),
            )
        })
}

fn memory_to_c(memory: SharedMemory) -> GpuhalSharedMemory {
    let (fd, token) = match memory.pool {
        PoolHandle::Fd(fd) => (fd.into_raw_fd(), 0),
        PoolHandle::Token(token) => (-1, token),
    };
    GpuhalSharedMemory {
        backend: backend_to_c(memory.backend),
        fd,
        token,
        allocation: memory.allocation,
        offset: memory.offset,
        len: memory.len,
    }
}

/// The handle `c` describes, with its descriptor (if any) duplicated: the caller keeps
/// its own.
///
/// # Safety
///
/// `c.fd` is -1 or an open file descriptor.
unsafe fn memory_from_c(function: &str, c: &GpuhalSharedMemory) -> Result<SharedMemory, Failure> {
    let backend = backend_from_c(function, &c.backend)?;
    let pool = if c.fd == -1 {
        PoolHandle::Token(c.token)
    } else if c.fd < 0 {
        return Err(Failure::invalid(
            function,
            format!("fd {} is not a file descriptor (nor -1)", c.fd),
        ));
    } else {
        // SAFETY: the caller passes an open descriptor, and it stays open for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(c.fd) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|err| Failure::invalid(function, format!("fd {} could not be duplicated: {err}", c.fd)))?;
        PoolHandle::Fd(owned)
    };
    Ok(SharedMemory {
        backend,
        pool,
        allocation: c.allocation,
        offset: c.offset,
        len: c.len,
    })
}

fn event_to_c(event: SharedEvent) -> GpuhalSharedEvent {
    GpuhalSharedEvent {
        backend: backend_to_c(event.backend),
        data: event.data,
    }
}

fn event_from_c(function: &str, c: &GpuhalSharedEvent) -> Result<SharedEvent, Failure> {
    Ok(SharedEvent {
        backend: backend_from_c(function, &c.backend)?,
        data: c.data,
    })
}

/// Exports the allocation starting at `ptr` (what `gpuhal_malloc` returned; device memory
/// of a device opened with `GpuhalOpenOptions::sharing`) for another process or device.
/// The allocation must stay unfreed until every import of it is released. `*out` receives
/// the handle; its `fd` (when not -1) is the caller's to close.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_export(
    device_handle: GpuhalDevice,
    ptr: *const c_void,
    out: *mut GpuhalSharedMemory,
) -> GpuhalStatus {
    const F: &str = "gpuhal_export";
    guard(F, || {
        let make = || {
            let entry = device(F, device_handle)?;
            let buffer = buffer_at(F, device_handle.id, &entry, ptr as u64)?;
            Ok(memory_to_c(entry.device.export(&buffer).in_function(F)?))
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Opens memory another process or device exported, for this device's streams. `*out`
/// receives its address: `gpuhal_stream_fill/write/read/copy` take it and pointers inside
/// it, as for an allocation. Release it with `gpuhal_shared_import_release` once the work
/// on it has completed. The handle's `fd` stays the caller's.
///
/// # Safety
///
/// `handle` is valid for a read, its `fd` -1 or an open descriptor; `out` is valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_import_shared(
    device_handle: GpuhalDevice,
    handle: *const GpuhalSharedMemory,
    out: *mut *mut c_void,
) -> GpuhalStatus {
    const F: &str = "gpuhal_import_shared";
    guard(F, || {
        // SAFETY: the caller passes it valid for a read (null is refused).
        let c = unsafe { read_in(F, "handle", handle) }?;
        let make = || {
            let entry = device(F, device_handle)?;
            // SAFETY: the caller passes `fd` as -1 or an open descriptor.
            let memory = unsafe { memory_from_c(F, &c) }?;
            let import = entry.device.import_shared(&memory).in_function(F)?;
            let address = entry.allocations.insert_import(import).map_err(|import| {
                Failure::invalid(
                    F,
                    format!(
                        "this device already holds an import at {:#x} (the same handle imported twice); release \
                         it first",
                        import.address()
                    ),
                )
            })?;
            Ok(address as *mut c_void)
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Releases this side's import at `ptr` (what `gpuhal_import_shared` returned); the
/// memory stays the exporter's. Work enqueued on it must have completed.
#[no_mangle]
pub extern "C" fn gpuhal_shared_import_release(device_handle: GpuhalDevice, ptr: *mut c_void) -> GpuhalStatus {
    const F: &str = "gpuhal_shared_import_release";
    guard(F, || {
        let entry = device(F, device_handle)?;
        let address = ptr as u64;
        entry.allocations.remove_import(address).map(drop).ok_or_else(|| {
            if entry.allocations.holds_import(address) {
                Failure::new(
                    GpuhalStatus::UnknownPointer,
                    format!(
                        "{F}: pointer {address:#x} is inside an import; pass the address gpuhal_import_shared returned"
                    ),
                )
            } else {
                Failure::new(
                    GpuhalStatus::UnknownPointer,
                    format!(
                        "{F}: pointer {address:#x} is no import of device handle {} (never imported, or released \
                         already)",
                        device_handle.id
                    ),
                )
            }
        })
    })
}

/// A new interprocess event: `*event` receives it (record, wait and release it as any
/// event), `*handle` what the other side opens with `gpuhal_shared_event_open`. It must
/// outlive every event opened from the handle.
///
/// # Safety
///
/// `event` and `handle` are valid for writes.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_shared_event_create(
    device_handle: GpuhalDevice,
    event: *mut GpuhalEvent,
    handle: *mut GpuhalSharedEvent,
) -> GpuhalStatus {
    const F: &str = "gpuhal_shared_event_create";
    guard(F, || {
        if handle.is_null() {
            return Err(Failure::invalid(F, "handle is null"));
        }
        let mut shared = None;
        let make = || {
            let (made, exported) = device(F, device_handle)?.device.shared_event().in_function(F)?;
            shared = Some(exported);
            Ok(GpuhalEvent {
                id: EVENTS.insert(EventEntry { event: made }),
            })
        };
        // SAFETY: the caller passes `event` valid for a write (null is refused before anything is made).
        unsafe { produce(F, event, make) }?;
        match shared {
            // SAFETY: not null (checked above), and the caller passes it valid for a write.
            Some(exported) => unsafe { write_out(F, "handle", handle, event_to_c(exported)) },
            None => Err(Failure::new(GpuhalStatus::Internal, format!("{F}: no handle was made"))),
        }
    })
}

/// Opens an interprocess event another process or device made; `*out` receives it.
///
/// # Safety
///
/// `handle` is valid for a read; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_shared_event_open(
    device_handle: GpuhalDevice,
    handle: *const GpuhalSharedEvent,
    out: *mut GpuhalEvent,
) -> GpuhalStatus {
    const F: &str = "gpuhal_shared_event_open";
    guard(F, || {
        // SAFETY: the caller passes it valid for a read (null is refused).
        let c = unsafe { read_in(F, "handle", handle) }?;
        let make = || {
            let shared = event_from_c(F, &c)?;
            let event = device(F, device_handle)?.device.import_event(&shared).in_function(F)?;
            Ok(GpuhalEvent {
                id: EVENTS.insert(EventEntry { event }),
            })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// `*out` receives whether `device` could be given access to `peer`'s memory (false for
/// the device itself, and for devices that are not peers).
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_can_access_peer(
    device_handle: GpuhalDevice,
    peer: GpuhalDevice,
    out: *mut bool,
) -> GpuhalStatus {
    const F: &str = "gpuhal_can_access_peer";
    guard(F, || {
        let entry = device(F, device_handle)?;
        let peer = device(F, peer)?;
        let can = entry.device.can_access_peer(&peer.device);
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, can) }
    })
}

/// Gives `device`'s streams access to `peer`'s memory (one direction; enabling twice is
/// not an error). Devices that cannot be peers: `GPUHAL_STATUS_UNSUPPORTED`.
#[no_mangle]
pub extern "C" fn gpuhal_enable_peer_access(device_handle: GpuhalDevice, peer: GpuhalDevice) -> GpuhalStatus {
    const F: &str = "gpuhal_enable_peer_access";
    guard(F, || {
        let entry = device(F, device_handle)?;
        let peer = device(F, peer)?;
        entry.device.enable_peer_access(&peer.device).in_function(F)
    })
}

/// The Unix socket `socket` names, borrowed for one call (never closed here).
///
/// # Safety
///
/// `socket` is an open file descriptor for the length of the call.
unsafe fn borrowed_socket(function: &str, socket: c_int) -> Result<ManuallyDrop<UnixStream>, Failure> {
    if socket < 0 {
        return Err(Failure::invalid(
            function,
            format!("socket {socket} is not a file descriptor"),
        ));
    }
    // SAFETY: the caller passes an open descriptor; ManuallyDrop keeps it from being closed.
    Ok(ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(socket as RawFd) }))
}

/// Sends `memory` (and `event`, which may be NULL) over the connected Unix socket
/// `socket`: the pool's descriptor travels as `SCM_RIGHTS`, duplicated into the receiver;
/// the caller keeps its own.
///
/// # Safety
///
/// `socket` is an open descriptor; `memory` is valid for a read and its `fd` -1 or an
/// open descriptor; `event` is NULL or valid for a read.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_send_shared(
    socket: c_int,
    memory: *const GpuhalSharedMemory,
    event: *const GpuhalSharedEvent,
) -> GpuhalStatus {
    const F: &str = "gpuhal_send_shared";
    guard(F, || {
        // SAFETY: the caller passes it valid for a read (null is refused).
        let c = unsafe { read_in(F, "memory", memory) }?;
        // SAFETY: the caller passes `fd` as -1 or an open descriptor.
        let memory = unsafe { memory_from_c(F, &c) }?;
        let event = if event.is_null() {
            None
        } else {
            // SAFETY: not null, and the caller passes it valid for a read.
            Some(event_from_c(F, &unsafe { read_in(F, "event", event) }?)?)
        };
        // SAFETY: the caller passes an open descriptor.
        let socket = unsafe { borrowed_socket(F, socket) }?;
        send_shared(&socket, &memory, event.as_ref()).in_function(F)
    })
}

/// Receives what `gpuhal_send_shared` sent on `socket`: `*memory` the handle (its `fd`,
/// when not -1, is the caller's to close), `*event` the event's handle if one was sent
/// (`event` may be NULL), `*has_event` (may be NULL) whether one was.
///
/// # Safety
///
/// `socket` is an open descriptor; `memory` is valid for a write; `event` and
/// `has_event` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_receive_shared(
    socket: c_int,
    memory: *mut GpuhalSharedMemory,
    event: *mut GpuhalSharedEvent,
    has_event: *mut bool,
) -> GpuhalStatus {
    const F: &str = "gpuhal_receive_shared";
    guard(F, || {
        if memory.is_null() {
            return Err(Failure::invalid(F, "memory is null"));
        }
        // SAFETY: the caller passes an open descriptor.
        let socket = unsafe { borrowed_socket(F, socket) }?;
        let (received, received_event) = receive_shared(&socket).in_function(F)?;
        let sent_event = received_event.is_some();
        if let (Some(shared), false) = (received_event, event.is_null()) {
            // SAFETY: not null, and the caller passes it valid for a write.
            unsafe { write_out(F, "event", event, event_to_c(shared)) }?;
        }
        if !has_event.is_null() {
            // SAFETY: not null, and the caller passes it valid for a write.
            unsafe { write_out(F, "has_event", has_event, sent_event) }?;
        }
        // SAFETY: not null (checked above), and the caller passes it valid for a write.
        unsafe { write_out(F, "memory", memory, memory_to_c(received)) }
    })
}
