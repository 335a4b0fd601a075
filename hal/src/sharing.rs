//! Sharing device memory with another process or device: the handles that travel between
//! them, and what an importer gets back.
//!
//! A device opened with sharing enabled serves [`MemoryKind::Device`](crate::MemoryKind)
//! allocations from an exportable native pool (the caching allocator works over it as
//! before). [`Device::export`](crate::Device::export) turns a buffer into a
//! [`SharedMemory`] handle: what the driver needs to open the exporter's pool, which native
//! allocation of it holds the buffer, and the buffer's offset and length inside that
//! allocation (a cached buffer is usually a piece of a larger native allocation).
//! [`Device::import_shared`](crate::Device::import_shared) turns the handle back into a
//! [`SharedImport`], a region the importer's streams use like any other.
//!
//! The handle crosses to another process with
//! [`handle_transfer::send_shared`](crate::handle_transfer::send_shared) and
//! [`receive_shared`](crate::handle_transfer::receive_shared) over a Unix socket (the
//! pool's file descriptor as `SCM_RIGHTS`).
//!
//! Ordering between the two sides goes through an interprocess event made with
//! [`Device::shared_event`](crate::Device::shared_event) and opened on the other side
//! with [`Device::import_event`](crate::Device::import_event): one side records it after
//! its work, the other makes its stream wait on it before touching the memory.
//!
//! # Who keeps the memory alive
//!
//! **The exporter does, and it is the caller's duty.** The exporter's [`Buffer`](crate::Buffer)
//! must outlive every import of it: keep it until each importer has dropped its
//! [`SharedImport`] *and* the importer's last work on it has completed (have the importer
//! record a shared event after that work and wait on it before dropping the buffer). A
//! [`SharedImport`] keeps nothing alive on the exporter's side; dropping it only releases
//! the importer's mapping. Dropping the exporter's buffer first hands its memory back to
//! the exporter's cache, where it can be handed out again while an importer still writes
//! it; a checking backend (the mock) reports the importer's next use as
//! [`Error::UseAfterFree`](crate::Error::UseAfterFree). This is the driver's own rule for
//! exportable pools (memory imported with `cuMemPoolImportPointer` must be freed in every
//! importer before the exporter frees it), which no library can enforce across processes
//! without a protocol of its own.
//!
//! The same holds for interprocess events: the side that made one with
//! [`Device::shared_event`](crate::Device::shared_event) keeps it until every side that
//! opened it has dropped its event (CUDA: using an opened event after the original was
//! destroyed is undefined behaviour).
//!
//! Drivers may refuse to open a handle in the process that exported it (CUDA's
//! interprocess handles are made for other processes); the mock opens them in-process,
//! between the devices of one machine.

use crate::types::{AsRegion, Region};

/// Bytes of opaque data a native export carries (CUDA's `CUmemPoolPtrExportData` and
/// `CUipcEventHandle` are both 64 bytes).
pub const EXPORT_DATA_LEN: usize = 64;

/// What the driver needs to open the exporter's native pool in the importer.
#[derive(Debug)]
pub enum PoolHandle {
    /// A POSIX file descriptor for the pool (CUDA's
    /// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` from `cuMemPoolExportToShareableHandle`,
    /// Vulkan's `VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT`). It crosses to another
    /// process over a Unix socket as `SCM_RIGHTS` ancillary data.
    #[cfg(unix)]
    Fd(std::os::fd::OwnedFd),
    /// A backend token, meaningful only inside the process that made it (the mock's
    /// pools, which are host memory of this process).
    Token(u64),
}

/// A buffer exported for another process or device: everything an importer needs.
///
/// Not `Clone`: it may own a file descriptor. Send it to each importer (the descriptor
/// is duplicated by `SCM_RIGHTS` on the way).
#[derive(Debug)]
pub struct SharedMemory {
    /// The backend that exported it; another backend refuses it.
    pub backend: &'static str,
    /// The exporter's pool.
    pub pool: PoolHandle,
    /// Which native allocation of the pool holds the buffer (CUDA: the
    /// `cuMemPoolExportPointer` data of the native allocation's base address).
    pub allocation: [u8; EXPORT_DATA_LEN],
    /// Offset of the buffer inside that native allocation.
    pub offset: u64,
    /// Length of the buffer in bytes.
    pub len: u64,
}

/// An interprocess event exported for another process or device. Plain data (CUDA's
/// `CUipcEventHandle`), so it can travel over any byte channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedEvent {
    /// The backend that made it; another backend refuses it.
    pub backend: &'static str,
    /// What the driver needs to open the event.
    pub data: [u8; EXPORT_DATA_LEN],
}

/// Memory another process or device exported, opened for this device's streams.
///
/// Dropping it releases this side's mapping only: the memory stays the exporter's, and
/// the exporter must keep its buffer until every import is dropped (see the
/// [module documentation](self)). Work enqueued on the import must have completed before
/// it is dropped: synchronize, or record an event the exporter waits on.
pub struct SharedImport {
    region: Region,
    _release: Box<dyn Send + Sync>,
}

impl SharedImport {
    /// Builds an import. `release` is dropped when the import is: its `Drop` undoes the
    /// native import.
    pub fn new(region: Region, release: Box<dyn Send + Sync>) -> Self {
        SharedImport {
            region,
            _release: release,
        }
    }

    /// The address of the imported bytes in this device's address space.
    pub fn device_address(&self) -> u64 {
        self.region.address
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.region.len
    }

    /// True for an empty import.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }
}

impl AsRegion for SharedImport {
    fn region(&self) -> Region {
        self.region
    }
}

impl std::fmt::Debug for SharedImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedImport")
            .field("device", &self.region.device)
            .field("address", &format_args!("{:#x}", self.region.address))
            .field("len", &self.region.len)
            .finish()
    }
}
