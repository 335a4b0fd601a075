//! [`Allocator`]: where the caching pool's memory comes from, the extension point for
//! backends and for frameworks that bring their own memory source.

use crate::error::{Error, Result};
use crate::sleep::{SleepReport, WakeReport};
use crate::types::Capabilities;
use crate::types::{DeviceId, MemoryKind, StreamId};

/// A block of memory obtained from the native API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NativeBlock {
    /// Device address of the first byte.
    pub address: u64,
    /// Size in bytes, as allocated.
    pub size: u64,
    /// Kind of memory.
    pub kind: MemoryKind,
    /// Backend token for the native object (see [`Region::native`](crate::Region::native)).
    pub native: u64,
    /// Offset of `address` inside the native object.
    pub native_offset: u64,
}

/// Where memory comes from: the native source under a [`CachingAllocator`](super::CachingAllocator).
///
/// Every backend implements it (CUDA: its stream-ordered pool or growable virtual-memory
/// segments, managed and page-locked memory; Vulkan; the mock), and the caching pool,
/// written once in `hal`, runs over any implementation: size classes, splitting and
/// merging, per-stream caches, cross-stream reuse, limits, `trim` and statistics all
/// come with it. A framework supplies its own by implementing this trait, often as a
/// wrapper over a backend's (a limit, accounting, a memory source of its own for some
/// kinds), and building `CachingAllocator::new(its_allocator)`.
///
/// The pool is generic over the implementation, so nothing here is dynamically
/// dispatched, and the pool calls it only off its hit path: when its cache cannot serve
/// a request, when it releases cached memory, and when a buffer used on several streams
/// is freed. A cache hit never reaches it.
///
/// # A limiting wrapper
///
/// Forward to the memory underneath and refuse what would go past a budget. Returning
/// an out-of-memory error makes the pool release idle blocks and retry once, exactly as
/// when the device runs out.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use gpuhal_hal::pool::{Allocator, CachingAllocator, CountingMemory, CountingStream, NativeBlock};
/// use gpuhal_hal::{DeviceId, Error, MemoryKind, NativeError, Result, StreamId};
///
/// /// Native memory of `A`, never more than `budget` bytes of it at once.
/// struct Limited<A> {
///     inner: A,
///     budget: u64,
///     taken: AtomicU64,
/// }
///
/// impl<A: Allocator> Allocator for Limited<A> {
///     type Stream = A::Stream;
///     type Marker = A::Marker;
///     // A checking backend (the mock) watches the blocks it hands out: let it see them.
///     const CHECKS_LIFETIMES: bool = A::CHECKS_LIFETIMES;
///
///     fn device(&self) -> DeviceId {
///         self.inner.device()
///     }
///
///     fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&A::Stream>) -> Result<NativeBlock> {
///         let before = self.taken.fetch_add(size, Ordering::AcqRel);
///         if before + size > self.budget {
///             self.taken.fetch_sub(size, Ordering::AcqRel);
///             let why = NativeError { call: "limited_allocate", code: 2, name: "OUT_OF_MEMORY".into() };
///             return Err(Error::native(format!("{size} bytes over a budget of {}", self.budget), why));
///         }
///         self.inner.allocate(size, kind, stream).inspect_err(|_| {
///             self.taken.fetch_sub(size, Ordering::AcqRel);
///         })
///     }
///
///     fn free(&self, block: NativeBlock, stream: Option<&A::Stream>) -> Result<()> {
///         self.taken.fetch_sub(block.size, Ordering::AcqRel);
///         self.inner.free(block, stream)
///     }
///
///     fn record_marker(&self, stream: &A::Stream) -> Result<A::Marker> {
///         self.inner.record_marker(stream)
///     }
///
///     fn is_marker_complete(&self, marker: &A::Marker) -> Result<bool> {
///         self.inner.is_marker_complete(marker)
///     }
///
///     fn wait_marker(&self, stream: &A::Stream, marker: &A::Marker) -> Result<()> {
///         self.inner.wait_marker(stream, marker)
///     }
///
///     fn on_handed_out(&self, block: &NativeBlock, len: u64, stream: StreamId) {
///         self.inner.on_handed_out(block, len, stream)
///     }
///
///     fn on_returned(&self, block: &NativeBlock, stream: StreamId) {
///         self.inner.on_returned(block, stream)
///     }
/// }
///
/// # fn main() -> Result<()> {
/// let limited = Limited { inner: CountingMemory::new(1 << 30), budget: 1 << 20, taken: AtomicU64::new(0) };
/// let allocator = CachingAllocator::new(limited);
/// let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
/// let first = allocator.allocate(768 << 10, MemoryKind::Device, &stream)?;
/// let refused = allocator.allocate(768 << 10, MemoryKind::Device, &stream);
/// assert!(matches!(refused, Err(Error::OutOfMemory { .. })), "the budget holds");
/// drop(first);
/// // The cache serves the same request again without asking the wrapper.
/// let again = allocator.allocate(768 << 10, MemoryKind::Device, &stream)?;
/// assert_eq!(allocator.stats().native_allocations, 1);
/// # drop(again);
/// # Ok(())
/// # }
/// ```
///
/// To wrap a device's own memory source, hold a clone of its allocator
/// ([`Device::allocator`](crate::Device::allocator), a cheap handle) and forward to its
/// [`native`](super::CachingAllocator::native) memory; buffers from your caching
/// allocator are then used on the device's streams like any other (the stream's native
/// handle is [`StreamCache::native_stream`](super::StreamCache::native_stream)).
pub trait Allocator: Send + Sync + Sized + 'static {
    /// A native stream handle the pool keeps to order frees. It must keep the native
    /// stream alive while the pool holds it (a reference-counted handle), since cached
    /// blocks can outlive the backend's stream object.
    type Stream: Clone + Send + Sync + 'static;
    /// A point in a stream's work (a pooled event), used to hold back cross-stream reuse.
    type Marker: Send + 'static;

    /// When true, the pool reports every hand-out and return of a block through
    /// [`on_handed_out`](Self::on_handed_out) and [`on_returned`](Self::on_returned), so
    /// a checking backend can catch use after free. Production backends leave it false
    /// and pay nothing.
    const CHECKS_LIFETIMES: bool = false;

    /// The device this memory belongs to.
    fn device(&self) -> DeviceId;

    /// Allocates `size` bytes of `kind`. With a stream, the allocation is ordered on it
    /// (`cuMemAllocAsync`); without one (graph pools) it must be usable by any stream and
    /// legal while a stream is capturing.
    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&Self::Stream>) -> Result<NativeBlock>;

    /// How many bytes to ask [`allocate`](Self::allocate) for when the pool needs a block
    /// of at least `rounded` bytes of `kind`. A source whose memory comes in chunks (the
    /// mapping granularity of virtual-memory segments) rounds up here, and the pool keeps
    /// what the request does not use as an idle piece for later requests instead of
    /// wasting it. The default asks for exactly `rounded`.
    fn native_size(&self, rounded: u64, _kind: MemoryKind) -> u64 {
        rounded
    }

    /// Frees a block, ordered on `stream` when given (`cuMemFreeAsync`).
    fn free(&self, block: NativeBlock, stream: Option<&Self::Stream>) -> Result<()>;

    /// Records a marker at the current end of `stream`'s work.
    fn record_marker(&self, stream: &Self::Stream) -> Result<Self::Marker>;

    /// Whether the work before `marker` has completed.
    fn is_marker_complete(&self, marker: &Self::Marker) -> Result<bool>;

    /// Makes `stream` wait (on the device, not the CPU) for the work before `marker`.
    fn wait_marker(&self, stream: &Self::Stream, marker: &Self::Marker) -> Result<()>;

    /// A block is handed out as a buffer of `len` bytes on `stream` (checking backends only).
    fn on_handed_out(&self, _block: &NativeBlock, _len: u64, _stream: StreamId) {}

    /// A buffer's block went back to the pool (checking backends only).
    fn on_returned(&self, _block: &NativeBlock, _stream: StreamId) {}

    /// The pool has finished releasing what [`trim`](super::CachingAllocator::trim) asked
    /// of it. A source that keeps released memory for the allocation that usually follows
    /// a release (growable segments do) gives it back to the device now.
    fn trimmed(&self) {}

    /// Whether [`sleep`](Self::sleep) can work now.
    fn can_sleep(&self) -> bool {
        false
    }

    /// Releases the physical memory of every block this source has handed out and not
    /// had back, keeping the blocks' addresses; the ranges in `keep` (address, length)
    /// are copied to host memory first. See [`CachingAllocator::sleep`](super::CachingAllocator::sleep),
    /// which releases the cache's idle blocks before calling this. A source that cannot
    /// (the default) says so.
    fn sleep(&self, _keep: &[(u64, u64)]) -> Result<SleepReport> {
        Err(Error::Unsupported {
            operation: "sleep",
            needed: Capabilities::GROWABLE_SEGMENTS,
        })
    }

    /// Maps physical memory again under every sleeping block and restores what was kept.
    fn wake(&self) -> Result<WakeReport> {
        Err(Error::Unsupported {
            operation: "wake",
            needed: Capabilities::GROWABLE_SEGMENTS,
        })
    }

    /// Bytes of blocks asleep now.
    fn asleep_bytes(&self) -> u64 {
        0
    }
}
