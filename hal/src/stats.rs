//! Counters that prove what the allocator, event pool and host import did.

use serde::Serialize;

/// A snapshot of allocator state and history.
///
/// `live_bytes` counts bytes as requested; `reserved_bytes` counts what is held from the
/// native API (rounded sizes, live and idle). `reserved_bytes / peak_live_bytes` is the
/// fragmentation and rounding overhead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Bytes handed out and not yet returned (as requested).
    pub live_bytes: u64,
    /// Buffers handed out and not yet returned.
    pub live_count: u64,
    /// Highest `live_bytes` seen. Exact for one stream; across several streams, the
    /// highest sum observed at each native allocation (when reservation can grow) and at
    /// each `stats()` call, and never below any single stream's exact peak.
    pub peak_live_bytes: u64,
    /// Bytes held from the native API, live or idle.
    pub reserved_bytes: u64,
    /// Native allocations currently held.
    pub reserved_count: u64,
    /// Highest `reserved_bytes` seen.
    pub peak_reserved_bytes: u64,
    /// Bytes held idle in the cache, ready for reuse.
    pub cached_bytes: u64,
    /// Blocks held idle in the cache.
    pub cached_count: u64,
    /// Blocks freed while another stream may still use them, waiting for that work.
    pub pending_count: u64,
    /// Native allocation calls made so far.
    pub native_allocations: u64,
    /// Native free calls made so far.
    pub native_frees: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that needed a native allocation.
    pub cache_misses: u64,
    /// Times a native allocation failed for lack of memory and was retried after the
    /// cache was released.
    pub oom_retries: u64,
    /// Requests refused with `OutOfMemory`.
    pub oom_errors: u64,
    /// Native frees that failed (the memory is leaked, counted here rather than lost).
    pub failed_frees: u64,
    /// Bytes of native blocks asleep: their physical memory released by
    /// [`sleep`](crate::CachingAllocator::sleep), their addresses kept for `wake`.
    pub asleep_bytes: u64,
}

impl MemoryStats {
    /// Fraction of requests served from the cache (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let total = self.cache_hits + self.cache_misses;
        if total == 0 {
            0.0
        } else {
            self.cache_hits as f64 / total as f64
        }
    }
}

/// Counters of an event pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventStats {
    /// Native events that exist now (in use or idle in the pool).
    pub native_live: u64,
    /// Native events created since the device opened.
    pub native_created: u64,
    /// Events handed out by the pool.
    pub acquired: u64,
    /// Events idle in the pool.
    pub idle: u64,
}

/// Counters of host import, by the path taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportStats {
    /// Imports served by direct (coherent or HMM) access.
    pub coherent: u64,
    /// Imports served by page-locking and mapping.
    pub registered: u64,
    /// Imports served by a device copy.
    pub copied: u64,
    /// Bytes duplicated on the device by `Copied` imports.
    pub copied_bytes: u64,
    /// Imports refused by the policy.
    pub refused: u64,
}
