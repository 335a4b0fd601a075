//! The caching pool on its own: hal's counting native memory hands out address ranges
//! and touches no memory, so what is left to measure is the pool's own cost.

use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream, StreamCache};
use gpuhal_hal::StreamId;

/// Address space the pool-alone benchmarks may reserve (nothing is committed).
const CAPACITY: u64 = 1 << 50;

/// A caching allocator over [`CountingMemory`] and one stream cache on it.
pub fn pool_alone() -> (CachingAllocator<CountingMemory>, StreamCache<CountingMemory>) {
    let allocator = CachingAllocator::new(CountingMemory::new(CAPACITY));
    let cache = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
    (allocator, cache)
}
