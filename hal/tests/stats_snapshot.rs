//! Pins the allocator statistics after a fixed scenario, so a change in what the pool
//! does (or in what it reports) shows up as a snapshot diff.

use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream};
use gpuhal_hal::{MemoryKind, StreamId};

#[test]
fn stats_after_fixed_scenario() {
    let allocator = CachingAllocator::new(CountingMemory::new(1 << 30));
    let main_native = CountingStream::new();
    let main = allocator.stream_cache(main_native, StreamId::fresh());
    let side_native = CountingStream::new();
    let side = allocator.stream_cache(side_native.clone(), StreamId::fresh());

    // A steady loop: one native allocation per size, then hits.
    for _ in 0..10 {
        let a = allocator.allocate(1000, MemoryKind::Device, &main).unwrap();
        let b = allocator.allocate(3 << 20, MemoryKind::Device, &main).unwrap();
        drop((a, b));
    }
    // Kinds never share blocks.
    let pinned = allocator.allocate(1000, MemoryKind::HostPinned, &main).unwrap();
    // A buffer used on the side stream while it is busy is held back when freed.
    let shared = allocator.allocate(1 << 20, MemoryKind::Device, &main).unwrap();
    shared.record_use(&side);
    side_native.submit();
    drop(shared);
    let meanwhile = allocator.allocate(1 << 20, MemoryKind::Device, &main).unwrap();
    let held = allocator.stats();
    side_native.finish();
    drop(meanwhile);
    let zero = allocator.allocate(0, MemoryKind::Device, &main).unwrap();
    let trimmed = allocator.trim();
    drop((pinned, zero));

    insta::assert_debug_snapshot!("while_held_back", held);
    insta::assert_debug_snapshot!("after_trim", (trimmed, allocator.stats()));
}

#[test]
fn totals_survive_dropped_streams() {
    let allocator = CachingAllocator::new(CountingMemory::new(1 << 30));
    {
        let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        for _ in 0..3 {
            drop(allocator.allocate(4096, MemoryKind::Device, &stream).unwrap());
        }
    }
    let stats = allocator.stats();
    assert_eq!((stats.cache_hits, stats.cache_misses), (2, 1));
    assert_eq!(stats.peak_live_bytes, 4096);
    assert_eq!(stats.reserved_bytes, 0, "a dropped stream's idle blocks are released");
    assert_eq!(stats.native_frees, 1);
}
