//! A framework's own `Allocator` under gpuhal's caching pool: a wrapper over another
//! allocator that counts the native calls and can round requests up to a chunk size.

use std::sync::atomic::{AtomicU64, Ordering};

use gpuhal_hal::pool::{Allocator, CachingAllocator, CountingMemory, CountingStream, NativeBlock};
use gpuhal_hal::{DeviceId, MemoryKind, Result, StreamId};

/// Counts what reaches the memory underneath; with `chunk`, device memory comes in
/// multiples of it (as virtual-memory mappings do).
struct Counted<A> {
    inner: A,
    chunk: u64,
    allocations: AtomicU64,
    frees: AtomicU64,
    bytes: AtomicU64,
}

impl<A: Allocator> Counted<A> {
    fn new(inner: A, chunk: u64) -> Self {
        Counted {
            inner,
            chunk,
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl<A: Allocator> Allocator for Counted<A> {
    type Stream = A::Stream;
    type Marker = A::Marker;

    fn device(&self) -> DeviceId {
        self.inner.device()
    }

    fn native_size(&self, rounded: u64, kind: MemoryKind) -> u64 {
        match kind {
            MemoryKind::Device if self.chunk > 1 => rounded.next_multiple_of(self.chunk),
            _ => rounded,
        }
    }

    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&A::Stream>) -> Result<NativeBlock> {
        let block = self.inner.allocate(size, kind, stream)?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(block.size, Ordering::Relaxed);
        Ok(block)
    }

    fn free(&self, block: NativeBlock, stream: Option<&A::Stream>) -> Result<()> {
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_sub(block.size, Ordering::Relaxed);
        self.inner.free(block, stream)
    }

    fn record_marker(&self, stream: &A::Stream) -> Result<A::Marker> {
        self.inner.record_marker(stream)
    }

    fn is_marker_complete(&self, marker: &A::Marker) -> Result<bool> {
        self.inner.is_marker_complete(marker)
    }

    fn wait_marker(&self, stream: &A::Stream, marker: &A::Marker) -> Result<()> {
        self.inner.wait_marker(stream, marker)
    }
}

#[test]
fn cache_hits_never_reach_a_user_allocator() -> Result<()> {
    let allocator = CachingAllocator::new(Counted::new(CountingMemory::new(1 << 30), 1));
    let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
    for _ in 0..100 {
        let a = allocator.allocate(64 << 10, MemoryKind::Device, &stream)?;
        let b = allocator.allocate(3 << 20, MemoryKind::HostPinned, &stream)?;
        drop((a, b));
    }
    let counted = allocator.native();
    assert_eq!(
        counted.allocations.load(Ordering::Relaxed),
        2,
        "one native call per distinct block"
    );
    assert_eq!(
        counted.inner.allocations(),
        2,
        "the wrapper forwards to the memory underneath"
    );
    let stats = allocator.stats();
    assert_eq!(stats.cache_hits, 198);
    assert_eq!(stats.reserved_bytes, counted.bytes.load(Ordering::Relaxed));
    assert_eq!(allocator.trim(), stats.reserved_bytes);
    assert_eq!(counted.frees.load(Ordering::Relaxed), 2);
    assert_eq!(
        counted.inner.in_use(),
        0,
        "trim gave everything back through the wrapper"
    );
    Ok(())
}

#[test]
fn a_chunked_source_serves_small_requests_from_one_chunk() -> Result<()> {
    const CHUNK: u64 = 2 << 20;
    let allocator = CachingAllocator::new(Counted::new(CountingMemory::new(1 << 30), CHUNK));
    let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
    // Sixteen 64 KiB buffers fit one chunk: one native call, no overlap.
    let small: Vec<_> = (0..16)
        .map(|_| allocator.allocate(64 << 10, MemoryKind::Device, &stream))
        .collect::<Result<_>>()?;
    assert_eq!(allocator.native().allocations.load(Ordering::Relaxed), 1);
    let mut ranges: Vec<(u64, u64)> = small.iter().map(|b| (b.address(), b.address() + b.len())).collect();
    ranges.sort_unstable();
    assert!(
        ranges.windows(2).all(|w| w[0].1 <= w[1].0),
        "live buffers overlap: {ranges:?}"
    );
    let stats = allocator.stats();
    assert_eq!(stats.reserved_bytes, CHUNK);
    assert_eq!(stats.live_count, 16);
    // A request that is not a multiple of the chunk gets the rest of its last chunk as
    // an idle piece, which a later request uses without a native call.
    let large = allocator.allocate(3 << 20, MemoryKind::Device, &stream)?;
    assert_eq!(allocator.native().allocations.load(Ordering::Relaxed), 2);
    assert_eq!(allocator.stats().reserved_bytes, 3 * CHUNK);
    let rest = allocator.allocate(1 << 20, MemoryKind::Device, &stream)?;
    assert_eq!(
        allocator.native().allocations.load(Ordering::Relaxed),
        2,
        "the chunk's rest served it"
    );
    assert_eq!(rest.address(), large.address() + (3 << 20));
    // Nothing can be released while a piece of a chunk is live; all of it once idle.
    drop(small);
    assert_eq!(allocator.trim(), CHUNK, "the small chunk is wholly idle");
    drop((large, rest));
    assert_eq!(allocator.trim(), 2 * CHUNK);
    assert_eq!(allocator.native().inner.in_use(), 0);
    Ok(())
}

#[test]
fn managed_memory_is_never_cut_so_it_is_asked_for_exactly() -> Result<()> {
    let allocator = CachingAllocator::new(Counted::new(CountingMemory::new(1 << 30), 2 << 20));
    let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
    let managed = allocator.allocate(4096, MemoryKind::Managed, &stream)?;
    assert_eq!(allocator.native().bytes.load(Ordering::Relaxed), 4096);
    drop(managed);
    Ok(())
}
