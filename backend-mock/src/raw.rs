//! The mock's "FFI edge": host memory standing in for device memory, and the raw byte
//! operations stream workers run on it. Every `unsafe` block of the crate lives here.
//!
//! Safety rests on one invariant: a [`Target`] can only be built for a range that lies
//! inside memory it keeps alive (a native allocation it holds an `Arc` to, or an
//! imported host range whose import waits for the target's lease before it ends).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use gpuhal_hal::{ImportPath, Location, ManagedRangeInfo, MemoryKind};
use parking_lot::{Condvar, Mutex};

/// Device addresses are aligned to this many bytes.
pub(crate) const DEVICE_ALIGNMENT: usize = 256;

/// What a sleeping allocation keeps: (offset, bytes) per kept range.
pub(crate) type KeptRanges = Vec<(u64, Vec<u8>)>;

/// A native allocation of the mock device: zeroed host memory.
pub(crate) struct NativeAllocation {
    /// Backend token (`Region::native`).
    pub(crate) id: u64,
    /// The device that allocated it.
    pub(crate) device: gpuhal_hal::DeviceId,
    /// Served from an exportable pool (a device opened with sharing enabled).
    pub(crate) exportable: bool,
    backing: Backing,
    /// Offset of the aligned device address from the backing's base.
    skew: usize,
    /// Usable bytes from the aligned address.
    pub(crate) size: u64,
    pub(crate) kind: MemoryKind,
    /// Made for a graph pool (no stream): replays may touch ranges whose buffers were
    /// returned during capture.
    pub(crate) graph_segment: bool,
    /// Advice and prefetch state of managed memory.
    pub(crate) managed: Mutex<ManagedRangeInfo>,
    /// Set for memory mapped in a growable segment: it is unmapped when the last holder
    /// (the stream that runs its free, or an operation still using it) lets it go.
    pub(crate) mapping: Option<std::sync::Arc<crate::segments::MockSegments>>,
    /// Set while the device sleeps: the kept ranges (offset, bytes); the rest of the
    /// memory holds a poison pattern.
    pub(crate) asleep: Mutex<Option<KeptRanges>>,
}

impl Drop for NativeAllocation {
    fn drop(&mut self) {
        if let Some(segments) = &self.mapping {
            if self.asleep.get_mut().is_some() {
                segments.freed_asleep(self.size);
            } else {
                segments.unmapped(self.size);
            }
        }
    }
}

// SAFETY: the backing is plain bytes owned by this value; its pointer is only dereferenced through `Target`, whose ranges are bounds-checked, and freed once in Drop.
unsafe impl Send for Backing {}
// SAFETY: as above; shared access only reads the pointer value.
unsafe impl Sync for Backing {}

impl NativeAllocation {
    /// Allocates `size` zeroed bytes aligned to [`DEVICE_ALIGNMENT`]; `None` when the host
    /// cannot provide them. Pages are committed only when written, so a multi-gigabyte
    /// device allocation costs nothing until used.
    pub(crate) fn new(
        id: u64,
        device: gpuhal_hal::DeviceId,
        size: u64,
        kind: MemoryKind,
        graph_segment: bool,
    ) -> Option<NativeAllocation> {
        let usable = usize::try_from(size).ok().filter(|&s| s > 0)?;
        let backing = Backing::new(usable)?;
        let address = backing.base().as_ptr() as usize;
        let skew = address.next_multiple_of(DEVICE_ALIGNMENT) - address;
        Some(NativeAllocation {
            id,
            device,
            exportable: false,
            backing,
            skew,
            size,
            kind,
            graph_segment,
            managed: Mutex::new(ManagedRangeInfo {
                advice: gpuhal_hal::Advice::empty(),
                last_prefetch: None,
            }),
            mapping: None,
            asleep: Mutex::new(None),
        })
    }

    /// The device address of the first usable byte.
    pub(crate) fn address(&self) -> u64 {
        self.backing.base().as_ptr() as u64 + self.skew as u64
    }

    fn start(&self) -> *mut u8 {
        // SAFETY: `skew < DEVICE_ALIGNMENT`, and the backing reserved that many extra bytes.
        unsafe { self.backing.base().as_ptr().add(self.skew) }
    }
}

/// Below this size a heap allocation is cheaper than mapping pages.
#[cfg(unix)]
const MAP_AT_LEAST: usize = 1 << 20;

/// Host memory behind a native allocation.
enum Backing {
    /// From the global allocator, asking for 16-byte alignment (the device alignment is
    /// applied by hand: `alloc_zeroed` with a larger alignment would memset every page).
    Heap { base: NonNull<u8>, layout: Layout },
    /// Anonymous pages mapped for a large allocation: zero-filled on first touch and
    /// returned to the system on free, where a heap allocator may memset reused memory.
    #[cfg(unix)]
    Mapped { base: NonNull<u8>, len: usize },
}

impl Backing {
    fn new(usable: usize) -> Option<Backing> {
        #[cfg(unix)]
        if usable >= MAP_AT_LEAST {
            return Self::map(usable);
        }
        let layout = Layout::from_size_align(usable.checked_add(DEVICE_ALIGNMENT)?, 16).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Backing::Heap { base, layout })
    }

    /// Maps `len` bytes of fresh anonymous memory (page-aligned, so already aligned for
    /// the device).
    #[cfg(unix)]
    fn map(len: usize) -> Option<Backing> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no existing memory; failure is reported as MAP_FAILED and checked.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return None;
        }
        let base = NonNull::new(address.cast::<u8>())?;
        Some(Backing::Mapped { base, len })
    }

    fn base(&self) -> NonNull<u8> {
        match self {
            Backing::Heap { base, .. } => *base,
            #[cfg(unix)]
            Backing::Mapped { base, .. } => *base,
        }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        match self {
            // SAFETY: `base` came from `alloc_zeroed(layout)` and is freed only here.
            Backing::Heap { base, layout } => unsafe { std::alloc::dealloc(base.as_ptr(), *layout) },
            #[cfg(unix)]
            Backing::Mapped { base, len } => {
                // An unmap failure leaves the pages mapped: a leak, never unsoundness.
                // SAFETY: `base..base + len` is a mapping made by `map` and unmapped only here; nothing references it once the allocation is dropped.
                let _ = unsafe { libc::munmap(base.as_ptr().cast(), *len) };
            }
        }
    }
}

impl std::fmt::Debug for NativeAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeAllocation")
            .field("id", &self.id)
            .field("address", &format_args!("{:#x}", self.address()))
            .field("size", &self.size)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Host memory made usable by the device through a coherent or registered import.
pub(crate) struct ImportedHost {
    /// Backend token (`Region::native`), tagged with [`IMPORT_TAG`](crate::checker::IMPORT_TAG).
    pub(crate) token: u64,
    start: *const u8,
    pub(crate) len: u64,
    pub(crate) path: ImportPath,
    /// Where a coherent import was prefetched to.
    pub(crate) prefetched: Option<Location>,
    /// Operations enqueued on the range that have not run yet; the import's undo waits
    /// for zero so the host memory outlives every device access.
    in_flight: Mutex<usize>,
    drained: Condvar,
}

// SAFETY: the pointer names host memory borrowed by a `HostImport` for its whole life; it is read only through `Target`s, and the import waits for them before it ends.
unsafe impl Send for ImportedHost {}
// SAFETY: as above; shared access only reads the pointer value and the counter.
unsafe impl Sync for ImportedHost {}

impl ImportedHost {
    pub(crate) fn new(token: u64, host: &[u8], path: ImportPath, prefetched: Option<Location>) -> ImportedHost {
        ImportedHost {
            token,
            start: host.as_ptr(),
            len: host.len() as u64,
            path,
            prefetched,
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
        }
    }

    /// The device address of the first byte (the host address: the device reads it as is).
    pub(crate) fn address(&self) -> u64 {
        self.start as u64
    }

    /// Blocks until no enqueued operation reads the range any more.
    pub(crate) fn wait_idle(&self) {
        let mut count = self.in_flight.lock();
        while *count > 0 {
            self.drained.wait(&mut count);
        }
    }
}

/// Keeps an import's host memory borrowed while an operation on it is in flight.
pub(crate) struct ImportLease(Arc<ImportedHost>);

impl ImportLease {
    pub(crate) fn new(import: Arc<ImportedHost>) -> ImportLease {
        *import.in_flight.lock() += 1;
        ImportLease(import)
    }
}

impl Drop for ImportLease {
    fn drop(&mut self) {
        let mut count = self.0.in_flight.lock();
        *count -= 1;
        if *count == 0 {
            self.0.drained.notify_all();
        }
    }
}

enum Memory {
    Native(Arc<NativeAllocation>),
    /// Imported host memory: read-only for the device.
    Host(ImportLease),
}

/// A bounds-checked byte range that an enqueued operation reads or writes, keeping its
/// memory alive until the operation has run.
pub(crate) struct Target {
    memory: Memory,
    offset: usize,
    len: usize,
}

impl Target {
    /// `len` bytes at `offset` into a native allocation; `None` if they do not fit.
    pub(crate) fn native(allocation: Arc<NativeAllocation>, offset: u64, len: u64) -> Option<Target> {
        if offset.checked_add(len)? > allocation.size {
            return None;
        }
        Some(Target {
            memory: Memory::Native(allocation),
            offset: usize::try_from(offset).ok()?,
            len: usize::try_from(len).ok()?,
        })
    }

    /// `len` bytes at `offset` into imported host memory; `None` if they do not fit.
    pub(crate) fn host(import: Arc<ImportedHost>, offset: u64, len: u64) -> Option<Target> {
        if offset.checked_add(len)? > import.len {
            return None;
        }
        Some(Target {
            offset: usize::try_from(offset).ok()?,
            len: usize::try_from(len).ok()?,
            memory: Memory::Host(ImportLease::new(import)),
        })
    }

    fn read_ptr(&self) -> *const u8 {
        match &self.memory {
            // SAFETY: `offset + len <= size` was checked when the target was built.
            Memory::Native(allocation) => unsafe { allocation.start().add(self.offset) },
            // SAFETY: `offset + len <= import.len` was checked when the target was built.
            Memory::Host(lease) => unsafe { lease.0.start.add(self.offset) },
        }
    }

    fn write_ptr(&self) -> Option<*mut u8> {
        match &self.memory {
            // SAFETY: `offset + len <= size` was checked when the target was built.
            Memory::Native(allocation) => Some(unsafe { allocation.start().add(self.offset) }),
            Memory::Host(_) => None,
        }
    }
}

/// Copies `src` into `dst` (ranges may overlap); the shorter length wins. Does nothing
/// when `dst` is not writable (the enqueuing call refuses that case first).
pub(crate) fn copy(src: &Target, dst: &Target) {
    let Some(to) = dst.write_ptr() else { return };
    let len = src.len.min(dst.len);
    // SAFETY: both ranges are in bounds of live memory for `len` bytes (Target's invariant); `ptr::copy` allows overlap. Device memory is plain bytes: concurrent unsynchronised use is what the race checker reports before it is enqueued.
    unsafe { std::ptr::copy(src.read_ptr(), to, len) }
}

/// Sets every byte of `dst` to `value`.
pub(crate) fn fill(dst: &Target, value: u8) {
    let Some(to) = dst.write_ptr() else { return };
    // SAFETY: the range is in bounds of live memory (Target's invariant).
    unsafe { std::ptr::write_bytes(to, value, dst.len) }
}

/// Copies host `data` into `dst`; the shorter length wins.
pub(crate) fn write(dst: &Target, data: &[u8]) {
    let Some(to) = dst.write_ptr() else { return };
    let len = data.len().min(dst.len);
    // SAFETY: the destination is in bounds of live memory (Target's invariant) and cannot overlap `data`, which the operation owns.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), to, len) }
}

/// The bytes of `src`.
pub(crate) fn read(src: &Target) -> Vec<u8> {
    let mut out = vec![0u8; src.len];
    // SAFETY: the source is in bounds of live memory (Target's invariant) and cannot overlap `out`, freshly allocated here.
    unsafe { std::ptr::copy_nonoverlapping(src.read_ptr(), out.as_mut_ptr(), src.len) }
    out
}
