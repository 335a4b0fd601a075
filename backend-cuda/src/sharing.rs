//! Sharing memory with other processes and devices: exportable pools, interprocess
//! events and peer access.
//!
//! A device opened with [`CudaDevice::open_shared`] serves
//! [`MemoryKind::Device`] allocations from a memory pool created with
//! `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`. An export is the pool's file descriptor
//! (`cuMemPoolExportToShareableHandle`), the `cuMemPoolExportPointer` data of the native
//! allocation holding the buffer, and the buffer's offset and length in it. An importer
//! opens the pool (`cuMemPoolImportFromShareableHandle`), maps that allocation
//! (`cuMemPoolImportPointer`) and, when the import drops, frees its mapping (`cuMemFree`)
//! before destroying its handle of the pool.
//!
//! The exporter keeps the memory alive: the driver requires every importer to free its
//! mapping before the exporter frees the allocation, and gpuhal leaves that ordering to
//! the caller (see [`gpuhal_hal::sharing`]).

use std::sync::Arc;

use gpuhal_hal::{
    check_device, AsRegion, Buffer, Capabilities, DeviceId, Error, MemoryKind, PoolHandle, Region, Result, SharedEvent,
    SharedImport, SharedMemory,
};
use parking_lot::{Mutex, RwLock};

use crate::context::Context;
use crate::device::CudaDevice;
use crate::error::Context as _;
use crate::event::CudaEvent;
use crate::memory::CudaMemory;
use crate::raw::{self, CUdevice, CUdeviceptr, CUevent, CUmemoryPool};
use crate::CudaBackend;

/// Every open CUDA device of the process and the driver device behind it, so a stream can
/// tell a buffer of another GPU (peer access) from a buffer of another opening of its own
/// GPU (a foreign handle).
static OPEN_DEVICES: Mutex<Vec<(DeviceId, CUdevice)>> = Mutex::new(Vec::new());

/// Keeps a device in [`OPEN_DEVICES`] while it is open.
pub(crate) struct Registration(DeviceId);

impl Registration {
    pub(crate) fn new(id: DeviceId, device: CUdevice) -> Self {
        OPEN_DEVICES.lock().push((id, device));
        Registration(id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        OPEN_DEVICES.lock().retain(|(id, _)| *id != self.0);
    }
}

fn driver_device_of(id: DeviceId) -> Option<CUdevice> {
    OPEN_DEVICES
        .lock()
        .iter()
        .find(|(open, _)| *open == id)
        .map(|&(_, device)| device)
}

/// The devices whose memory a device's streams were given access to
/// ([`gpuhal_hal::Device::enable_peer_access`]).
#[derive(Default)]
pub(crate) struct Peers(RwLock<Vec<DeviceId>>);

impl Peers {
    fn add(&self, peer: DeviceId) {
        let mut peers = self.0.write();
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }

    /// Refuses `operation` by a stream of `device` (driver device `native`) on memory of
    /// `owner`, unless `owner` is `device` or a peer it was given access to. Memory of
    /// another GPU is [`Error::PeerAccess`] naming both; of another opening of the same
    /// GPU (or of no open device), [`Error::ForeignHandle`].
    pub(crate) fn check(
        &self,
        operation: &'static str,
        device: DeviceId,
        native: CUdevice,
        owner: DeviceId,
    ) -> Result<()> {
        if owner == device || self.0.read().contains(&owner) {
            return Ok(());
        }
        match driver_device_of(owner) {
            Some(other) if other != native => Err(Error::PeerAccess {
                operation,
                device: device.0,
                peer: owner.0,
                possible: raw::device_can_access_peer(native, other).unwrap_or(false),
            }),
            _ => check_device(operation, "buffer", device, owner),
        }
    }
}

/// Whether a stream of `device` (driver device `native`) may wait on an event of
/// `owner`: any open CUDA device other than another opening of the same GPU (waiting
/// needs no peer access).
pub(crate) fn check_event_device(
    operation: &'static str,
    device: DeviceId,
    native: CUdevice,
    owner: DeviceId,
) -> Result<()> {
    if owner == device {
        return Ok(());
    }
    match driver_device_of(owner) {
        Some(other) if other != native => Ok(()),
        _ => check_device(operation, "event", device, owner),
    }
}

/// Whether the driver can share this device's pool memory through file descriptors.
pub(crate) fn ipc_supported(ctx: &Context, memory_pools: bool) -> Result<bool> {
    if !memory_pools {
        return Ok(false);
    }
    let fd = raw::device_attribute(
        ctx.device(),
        raw::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
    )
    .context(|| {
        format!(
            "reading attribute HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED of CUDA device {}",
            ctx.ordinal()
        )
    })?;
    Ok(fd != 0)
}

/// Whether any other device of the driver can be given access to this one's memory, or
/// this one to theirs.
pub(crate) fn peer_access_possible(ctx: &Context) -> bool {
    let Ok(count) = raw::device_count() else {
        return false;
    };
    (0..count)
        .filter_map(|ordinal| raw::device_get(ordinal).ok())
        .any(|other| other != ctx.device() && raw::device_can_access_peer(ctx.device(), other).unwrap_or(false))
}

fn needs_ipc(device: &CudaDevice, operation: &'static str) -> Result<()> {
    if device.capabilities_inner().contains(Capabilities::IPC) {
        Ok(())
    } else {
        Err(Error::Unsupported {
            operation,
            needed: Capabilities::IPC,
        })
    }
}

fn takes_cuda_handle(device: &CudaDevice, operation: &'static str, backend: &'static str) -> Result<()> {
    needs_ipc(device, operation)?;
    if backend == "cuda" {
        Ok(())
    } else {
        Err(Error::BackendMismatch {
            operation,
            expected: "cuda",
            found: backend,
        })
    }
}

pub(crate) fn export(device: &CudaDevice, buffer: &Buffer<CudaBackend>) -> Result<SharedMemory> {
    const OPERATION: &str = "export";
    needs_ipc(device, OPERATION)?;
    let region = buffer.region();
    check_device(OPERATION, "buffer", device.id_inner(), region.device)?;
    let ordinal = device.ordinal();
    if region.len == 0 {
        return Err(Error::invalid(OPERATION, "a zero-size buffer has no memory to share"));
    }
    if region.kind != MemoryKind::Device {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "only Device memory comes from the exportable pool, not {:?} memory",
                region.kind
            ),
        ));
    }
    let Some(pool) = device.memory().exportable_pool() else {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "CUDA device {ordinal} was not opened with sharing enabled (CudaDevice::open_shared), so its memory \
                 is not from an exportable pool"
            ),
        ));
    };
    if !CudaMemory::is_pool_memory(region.native) {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "the {} bytes at {:#x} are not from CUDA device {ordinal}'s exportable pool (graph pool memory is not \
                 exportable)",
                region.len, region.address
            ),
        ));
    }
    let base = region.address - region.native_offset;
    device.bind()?;
    // The pool first: the driver refuses (INVALID_VALUE) to export a pointer of a pool
    // that was never exported.
    let fd = raw::mem_pool_export_fd(pool)
        .context(|| format!("exporting CUDA device {ordinal}'s memory pool as a file descriptor"))?;
    let allocation = raw::mem_pool_export_pointer(base).context(|| {
        format!(
            "exporting the native allocation at {base:#x} (holding {} bytes at offset {}) of CUDA device {ordinal}",
            region.len, region.native_offset
        )
    })?;
    Ok(SharedMemory {
        backend: "cuda",
        pool: PoolHandle::Fd(fd),
        allocation,
        offset: region.native_offset,
        len: region.len,
    })
}

/// An imported pool and the allocation mapped from it; undone when the
/// [`SharedImport`] drops.
struct ImportedAllocation {
    ctx: Arc<Context>,
    pool: CUmemoryPool,
    base: CUdeviceptr,
}

// SAFETY: pool handles and device addresses may be used from any thread; the handle is only passed to driver calls.
unsafe impl Send for ImportedAllocation {}
// SAFETY: as above; nothing is reached through shared references.
unsafe impl Sync for ImportedAllocation {}

impl Drop for ImportedAllocation {
    fn drop(&mut self) {
        if self.ctx.bind().is_err() {
            return;
        }
        // The mapping goes first: the pool handle must outlive the pointers imported from
        // it. Nothing useful can be done with a failure at drop.
        let _ = raw::mem_free(self.base);
        let _ = raw::mem_pool_destroy(self.pool);
    }
}

pub(crate) fn import(device: &CudaDevice, handle: &SharedMemory) -> Result<SharedImport> {
    const OPERATION: &str = "import_shared";
    takes_cuda_handle(device, OPERATION, handle.backend)?;
    let PoolHandle::Fd(fd) = &handle.pool else {
        return Err(Error::invalid(
            OPERATION,
            "a CUDA pool travels as a file descriptor, but the handle carries a token",
        ));
    };
    if handle.len == 0 {
        return Err(Error::invalid(OPERATION, "the handle names zero bytes"));
    }
    let ordinal = device.ordinal();
    device.bind()?;
    let pool = raw::mem_pool_import_fd(std::os::fd::AsFd::as_fd(fd)).context(|| {
        format!(
            "opening an exported memory pool on CUDA device {ordinal} (drivers refuse this in the exporting process)"
        )
    })?;
    let base = match raw::mem_pool_import_pointer(pool, &handle.allocation) {
        Ok(base) => base,
        Err(native) => {
            let _ = raw::mem_pool_destroy(pool);
            return Err(Error::native(
                format!(
                    "mapping an exported allocation ({} bytes at offset {}) on CUDA device {ordinal}",
                    handle.len, handle.offset
                ),
                native,
            ));
        }
    };
    let imported = ImportedAllocation {
        ctx: device.ctx().clone(),
        pool,
        base,
    };
    let size = raw::mem_get_address_range(base)
        .context(|| format!("reading the size of an imported allocation at {base:#x} on CUDA device {ordinal}"))?;
    let end = handle.offset.checked_add(handle.len);
    if end.is_none_or(|end| end > size) {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "the handle names {} bytes at offset {}, but the exported allocation holds {size} bytes",
                handle.len, handle.offset
            ),
        ));
    }
    let region = Region {
        device: device.id_inner(),
        address: base + handle.offset,
        len: handle.len,
        native: 0,
        native_offset: handle.offset,
        kind: MemoryKind::Device,
    };
    Ok(SharedImport::new(region, Box::new(imported)))
}

/// An interprocess event (made with `CU_EVENT_INTERPROCESS`, or opened from another
/// process's handle), destroyed on drop.
pub(crate) struct InterprocessEvent {
    raw: CUevent,
    ctx: Arc<Context>,
}

// SAFETY: CUDA events may be recorded, queried and waited on from any thread.
unsafe impl Send for InterprocessEvent {}
// SAFETY: as above; shared use only passes the handle to thread-safe driver calls.
unsafe impl Sync for InterprocessEvent {}

impl InterprocessEvent {
    pub(crate) fn raw(&self) -> CUevent {
        self.raw
    }

    pub(crate) fn ctx(&self) -> &Context {
        &self.ctx
    }
}

impl Drop for InterprocessEvent {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // A failed destroy at drop leaves nothing to act on.
            let _ = raw::event_destroy(self.raw);
        }
    }
}

pub(crate) fn shared_event(device: &CudaDevice) -> Result<(CudaEvent, SharedEvent)> {
    needs_ipc(device, "shared_event")?;
    device.bind()?;
    let (raw, data) = raw::ipc_event_create()
        .context(|| format!("creating an interprocess event on CUDA device {}", device.ordinal()))?;
    let event = InterprocessEvent {
        raw,
        ctx: device.ctx().clone(),
    };
    Ok((
        CudaEvent::interprocess(event, device.id_inner()),
        SharedEvent { backend: "cuda", data },
    ))
}

pub(crate) fn import_event(device: &CudaDevice, handle: &SharedEvent) -> Result<CudaEvent> {
    takes_cuda_handle(device, "import_event", handle.backend)?;
    device.bind()?;
    let raw = raw::ipc_event_open(&handle.data).context(|| {
        format!(
            "opening an interprocess event on CUDA device {} (drivers refuse this in the process that made it)",
            device.ordinal()
        )
    })?;
    let event = InterprocessEvent {
        raw,
        ctx: device.ctx().clone(),
    };
    Ok(CudaEvent::interprocess(event, device.id_inner()))
}

pub(crate) fn can_access_peer(device: &CudaDevice, peer: &CudaDevice) -> bool {
    let (native, other) = (device.ctx().device(), peer.ctx().device());
    native != other && raw::device_can_access_peer(native, other).unwrap_or(false)
}

pub(crate) fn enable_peer_access(device: &CudaDevice, peer: &CudaDevice) -> Result<()> {
    const OPERATION: &str = "enable_peer_access";
    let (ordinal, peer_ordinal) = (device.ordinal(), peer.ordinal());
    if device.ctx().device() == peer.ctx().device() {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "devices {} and {} are both CUDA device {ordinal}: a device always has access to its own memory",
                device.id_inner(),
                peer.id_inner()
            ),
        ));
    }
    if !can_access_peer(device, peer) {
        return Err(Error::PeerAccess {
            operation: OPERATION,
            device: device.id_inner().0,
            peer: peer.id_inner().0,
            possible: false,
        });
    }
    if peer.memory().mapping_granularity().is_some() {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "CUDA device {peer_ordinal} uses growable segments, whose mappings are not yet opened to peers; open \
                 it with native segments"
            ),
        ));
    }
    device.bind()?;
    raw::ctx_enable_peer_access(peer.raw_context())
        .context(|| format!("giving CUDA device {ordinal}'s context access to CUDA device {peer_ordinal}'s memory"))?;
    if let Some(pool) = peer.memory().raw_pool() {
        raw::mem_pool_set_access(pool, device.ctx().ordinal_i32())
            .context(|| format!("giving CUDA device {ordinal} access to CUDA device {peer_ordinal}'s memory pool"))?;
    }
    device.ctx().peers().add(peer.id_inner());
    Ok(())
}
