//! Plain data shared by every backend: kinds, capability and advice flags, policies, ids.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Which memory an allocation lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum MemoryKind {
    /// Stream-ordered device memory: the default, and the fast one.
    #[default]
    Device,
    /// Managed (unified) memory, migrated between host and device. Opt-in.
    Managed,
    /// Page-locked host memory mapped for device access.
    HostPinned,
}

impl MemoryKind {
    /// Every kind, in a fixed order.
    pub const ALL: [MemoryKind; 3] = [MemoryKind::Device, MemoryKind::Managed, MemoryKind::HostPinned];

    /// A dense index (0..3) for per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The capability a device needs to allocate this kind.
    pub fn required_capability(self) -> Capabilities {
        match self {
            MemoryKind::Device => Capabilities::empty(),
            MemoryKind::Managed => Capabilities::MANAGED,
            MemoryKind::HostPinned => Capabilities::HOST_PINNED,
        }
    }
}

bitflags::bitflags! {
    /// What a device can do, read from the device, never assumed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Capabilities: u32 {
        /// Managed (unified) memory can be allocated.
        const MANAGED = 1 << 0;
        /// Host and device may touch managed memory concurrently.
        const CONCURRENT_MANAGED = 1 << 1;
        /// Existing host memory can be page-locked and mapped (`cuMemHostRegister`).
        const HOST_REGISTER = 1 << 2;
        /// The device reads pageable host memory directly (HMM or a coherent platform).
        const PAGEABLE_ACCESS = 1 << 3;
        /// Allocation and free are ordered on streams (`cuMemAllocAsync`).
        const STREAM_ORDERED_ALLOC = 1 << 4;
        /// Streams can be captured into graphs and replayed.
        const GRAPHS = 1 << 5;
        /// Graphs can contain allocation nodes.
        const GRAPH_MEM_NODES = 1 << 6;
        /// Events can measure elapsed time.
        const TIMING_EVENTS = 1 << 7;
        /// Timeline fences: a stream can wait on a counter value.
        const TIMELINE_FENCE = 1 << 8;
        /// Page-locked host allocations can be made.
        const HOST_PINNED = 1 << 9;
        /// Managed memory accepts placement advice and prefetch.
        const MANAGED_ADVICE = 1 << 10;
        /// Device memory can come from growable virtual-memory segments
        /// ([`SegmentStrategy::Growable`](crate::pool::SegmentStrategy::Growable)).
        const GROWABLE_SEGMENTS = 1 << 11;
        /// The device can be given access to the memory of another device of this
        /// process ([`Device::enable_peer_access`](crate::Device::enable_peer_access)):
        /// copies between them and cross-device event waits keep stream order on both.
        const PEER_ACCESS = 1 << 12;
        /// Device memory can be shared with another process (or device) through an
        /// exportable native pool ([`Device::export`](crate::Device::export),
        /// [`Device::import_shared`](crate::Device::import_shared)), ordered by
        /// interprocess events ([`Device::shared_event`](crate::Device::shared_event)).
        const IPC = 1 << 13;
    }
}

bitflags::bitflags! {
    /// Placement advice for managed memory.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Advice: u32 {
        /// Prefer to keep pages on the device.
        const PREFER_DEVICE = 1 << 0;
        /// Prefer to keep pages on the host.
        const PREFER_HOST = 1 << 1;
        /// The host will access the range: map it there so accesses need no migration back.
        const ACCESSED_BY_HOST = 1 << 2;
        /// The device will access the range: keep a mapping there.
        const ACCESSED_BY_DEVICE = 1 << 3;
        /// Mostly read: pages may be duplicated on each accessor.
        const READ_MOSTLY = 1 << 4;
    }
}

/// Where managed memory is prefetched to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The device that owns the allocation.
    Device,
    /// Host memory.
    Host,
}

/// How managed allocations are placed when they are made.
///
/// The defaults follow what worked for large models on coherent platforms: prefer the
/// device, let the host access without migrating pages back, and prefetch only
/// allocations under a threshold (weights), leaving large ones (KV-cache blocks) to fault
/// in on demand.
///
/// ```
/// use gpuhal_hal::{Advice, ManagedPolicy};
/// let policy = ManagedPolicy { prefetch_below: 512 << 20, ..ManagedPolicy::default() };
/// assert!(policy.advice.contains(Advice::PREFER_DEVICE));
/// assert!(policy.should_prefetch(1 << 20));
/// assert!(!policy.should_prefetch(1 << 30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedPolicy {
    /// Advice applied to every new managed allocation.
    pub advice: Advice,
    /// Allocations smaller than this many bytes are prefetched to the device when made.
    /// 0 disables prefetch.
    pub prefetch_below: u64,
    /// Allow a managed allocation larger than the device's free memory. Off by default:
    /// oversubscribing managed memory can hang a GPU.
    pub allow_oversubscription: bool,
}

impl ManagedPolicy {
    /// The default prefetch threshold: 2 GiB.
    pub const DEFAULT_PREFETCH_BELOW: u64 = 2 << 30;

    /// A policy that applies no advice and never prefetches.
    pub const NONE: ManagedPolicy = ManagedPolicy {
        advice: Advice::empty(),
        prefetch_below: 0,
        allow_oversubscription: false,
    };

    /// Whether an allocation of `size` bytes is prefetched under this policy.
    pub fn should_prefetch(&self, size: u64) -> bool {
        size > 0 && size < self.prefetch_below
    }
}

impl Default for ManagedPolicy {
    fn default() -> Self {
        ManagedPolicy {
            advice: Advice::PREFER_DEVICE | Advice::ACCESSED_BY_HOST,
            prefetch_below: Self::DEFAULT_PREFETCH_BELOW,
            allow_oversubscription: false,
        }
    }
}

/// Placement state of a managed range, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedRangeInfo {
    /// Advice in effect on the whole range.
    pub advice: Advice,
    /// Where the range was last prefetched to, if it was.
    pub last_prefetch: Option<Location>,
}

/// The path host import took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImportPath {
    /// The device reads the pageable host memory directly; nothing was copied or pinned.
    Coherent,
    /// The memory was page-locked and mapped for the device.
    Registered,
    /// A device copy was made (the data now exists twice).
    Copied,
}

/// Which paths [`import_host`](crate::Device::import_host) may take.
///
/// Paths are tried cheapest first: `Coherent`, then `Registered`, then `Copied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportPolicy {
    /// Accept direct access to pageable memory where the device supports it.
    pub allow_coherent: bool,
    /// With `Coherent`, prefetch the range towards the device after import.
    pub prefetch_coherent: bool,
    /// Accept page-locking and mapping the memory.
    pub allow_registered: bool,
    /// Accept a full device copy. Off by default: a silent copy of a model file doubles its
    /// memory footprint.
    pub allow_copy: bool,
}

impl ImportPolicy {
    /// Every zero-copy path, never a copy (the default).
    pub const ZERO_COPY: ImportPolicy = ImportPolicy {
        allow_coherent: true,
        prefetch_coherent: false,
        allow_registered: true,
        allow_copy: false,
    };

    /// Any path, a copy included.
    pub const ANY: ImportPolicy = ImportPolicy {
        allow_copy: true,
        ..Self::ZERO_COPY
    };
}

impl Default for ImportPolicy {
    fn default() -> Self {
        Self::ZERO_COPY
    }
}

/// Identity of a device within this process (unique across backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl DeviceId {
    /// A fresh id, never handed out before in this process.
    pub fn fresh() -> DeviceId {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        DeviceId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identity of a stream within this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// A fresh id, never handed out before in this process.
    pub fn fresh() -> StreamId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        StreamId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// A span of device-accessible memory, as stream operations and kernels see it.
///
/// A region is a plain value: it does not keep its memory alive. Stream operations take
/// regions (through [`AsRegion`]) so that a framework holding raw addresses for its own
/// kernels goes through the same checks; a checking backend reports a region whose
/// allocation was freed as [`Error::UseAfterFree`](crate::Error::UseAfterFree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// Device the memory belongs to.
    pub device: DeviceId,
    /// Device address of the first byte (0 for an empty region).
    pub address: u64,
    /// Length in bytes.
    pub len: u64,
    /// Backend token for the native object behind the address (a Vulkan buffer handle, a
    /// mock allocation id); 0 where the address alone identifies the memory.
    pub native: u64,
    /// Byte offset of `address` inside the native object.
    pub native_offset: u64,
    /// Kind of memory.
    pub kind: MemoryKind,
}

impl Region {
    /// A sub-range of this region, bounds-checked.
    pub fn slice(&self, offset: u64, len: u64) -> crate::Result<Region> {
        crate::error::check_range("Region::slice", offset, len, self.len)?;
        Ok(Region {
            address: if len == 0 { self.address } else { self.address + offset },
            len,
            native_offset: self.native_offset + offset,
            ..*self
        })
    }
}

/// Anything that names device memory: buffers, host imports, raw regions.
pub trait AsRegion {
    /// The memory this value names.
    fn region(&self) -> Region;
}

impl AsRegion for Region {
    fn region(&self) -> Region {
        *self
    }
}

impl<T: AsRegion + ?Sized> AsRegion for &T {
    fn region(&self) -> Region {
        (**self).region()
    }
}
