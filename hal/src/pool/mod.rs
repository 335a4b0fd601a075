//! The caching pool, written once for every backend.
//!
//! A backend (or a framework with a memory source of its own) implements [`Allocator`]
//! (allocate, free, stream markers) and gets a
//! [`CachingAllocator`]: per-stream caches with size classes, misses served by cutting a
//! larger idle block and pieces merged back when freed, cross-stream reuse only
//! after the other stream's recorded use has completed, release-and-retry on out of
//! memory, memory and cache limits, `trim`, statistics, trace recording, and
//! [`GraphPool`]s for captures.

mod allocator;
mod buffer;
mod counting;
mod graph_pool;
mod native;
mod report;
pub mod size_class;
mod split;
mod stream_cache;

pub use allocator::{CachingAllocator, PoolConfig, PoolShared, SegmentStrategy, DEFAULT_RESERVE_FLOOR};
pub use buffer::Buffer;
pub use counting::{CountingMarker, CountingMemory, CountingStream};
pub use graph_pool::GraphPool;
pub use native::{Allocator, NativeBlock};
pub use stream_cache::{Shard, StreamCache};
