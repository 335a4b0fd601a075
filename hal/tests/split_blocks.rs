//! Splitting idle blocks and merging pieces back, seen through the allocator's API.

use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream, StreamCache};
use gpuhal_hal::{AsRegion, MemoryKind, StreamId};

const MIB: u64 = 1 << 20;

fn pool() -> (CachingAllocator<CountingMemory>, StreamCache<CountingMemory>) {
    let allocator = CachingAllocator::new(CountingMemory::new(1 << 40));
    let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
    (allocator, stream)
}

#[test]
fn a_miss_is_cut_from_a_larger_idle_block() {
    let (allocator, stream) = pool();
    let big = allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap();
    let base = big.address();
    drop(big);
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let b = allocator.allocate(8192, MemoryKind::Device, &stream).unwrap();
    assert_eq!(allocator.stats().native_allocations, 1, "both came from the idle 2 MiB");
    assert_eq!(
        (a.address(), a.region().native_offset, a.reserved_len()),
        (base, 0, 4096)
    );
    assert_eq!(
        (b.address(), b.region().native_offset, b.reserved_len()),
        (base + 4096, 4096, 8192)
    );
    let stats = allocator.stats();
    assert_eq!(stats.reserved_bytes, 2 * MIB);
    assert_eq!(stats.cached_bytes, 2 * MIB - 4096 - 8192);
    assert_eq!(stats.cached_count, 1);
    assert_eq!((stats.cache_hits, stats.cache_misses), (2, 1));
}

#[test]
fn freed_neighbours_merge_and_serve_a_larger_request() {
    let (allocator, stream) = pool();
    drop(allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap());
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let b = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let c = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    // a b c [idle rest]
    let start = a.address();
    drop(a);
    drop(b);
    assert_eq!(
        allocator.stats().cached_count,
        2,
        "a and b merged; c keeps them from the rest"
    );
    let ab = allocator.allocate(8192, MemoryKind::Device, &stream).unwrap();
    assert_eq!(ab.address(), start, "served from the merged range, the best fit");
    assert_eq!(allocator.stats().native_allocations, 1);
    drop(c);
    assert_eq!(allocator.stats().cached_count, 1, "c merged with the rest");
    drop(ab);
    assert_eq!(allocator.stats().cached_bytes, 2 * MIB);
}

#[test]
fn only_wholly_idle_native_allocations_are_released() {
    let (allocator, stream) = pool();
    drop(allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap());
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let b = allocator.allocate(8192, MemoryKind::Device, &stream).unwrap();
    assert_eq!(allocator.trim(), 0, "the native allocation still has live pieces");
    drop(a);
    assert_eq!(allocator.trim(), 0, "b is still live");
    assert_eq!(allocator.stats().reserved_bytes, 2 * MIB);
    drop(b);
    let stats = allocator.stats();
    assert_eq!(
        (stats.cached_bytes, stats.cached_count),
        (2 * MIB, 1),
        "merged back whole"
    );
    // The whole block is back on the exact-class hit path.
    let again = allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap();
    assert_eq!(allocator.stats().native_allocations, 1);
    drop(again);
    assert_eq!(allocator.trim(), 2 * MIB);
    let stats = allocator.stats();
    assert_eq!((stats.reserved_bytes, stats.native_frees), (0, 1));
    assert_eq!(allocator.native().in_use(), 0, "the native free got the whole block");
}

#[test]
fn the_cache_limit_counts_only_releasable_blocks() {
    let (allocator, stream) = pool();
    drop(allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap());
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    allocator.set_cache_limit(Some(0));
    let stats = allocator.stats();
    assert_eq!(
        stats.reserved_bytes,
        2 * MIB,
        "the idle rest cannot be released while a lives"
    );
    drop(a);
    let stats = allocator.stats();
    assert_eq!(
        (stats.reserved_bytes, stats.cached_bytes),
        (0, 0),
        "whole again, then released"
    );
}

#[test]
fn pieces_outlive_their_stream() {
    let (allocator, stream) = pool();
    drop(allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap());
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let b = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    drop(stream);
    assert_eq!(allocator.stats().reserved_bytes, 2 * MIB);
    drop(a);
    assert_eq!(allocator.stats().reserved_bytes, 2 * MIB);
    drop(b);
    let stats = allocator.stats();
    assert_eq!(
        (stats.reserved_bytes, stats.cached_bytes, stats.native_frees),
        (0, 0, 1)
    );
}

#[test]
fn a_pending_piece_is_not_reused_before_the_other_stream_finishes() {
    let (allocator, stream) = pool();
    let side_native = CountingStream::new();
    let side = allocator.stream_cache(side_native.clone(), StreamId::fresh());
    drop(allocator.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap());
    let a = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let keep = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let start = a.address();
    a.record_use(&side);
    side_native.submit();
    drop(a);
    let other = allocator.allocate(4096, MemoryKind::Device, &stream).unwrap();
    assert_ne!(other.address(), start, "a is pending");
    side_native.finish();
    assert_eq!(allocator.trim(), 0, "keep and other are live");
    drop((keep, other));
    assert_eq!(allocator.trim(), 2 * MIB, "a came back from pending and merged");
}
