//! Sleep and wake: giving a device's physical memory back while its addresses stay valid.
//!
//! With [`SegmentStrategy::Growable`](crate::SegmentStrategy), gpuhal maps device memory
//! itself, so it can release the physical memory under a buffer without freeing the
//! buffer. [`CachingAllocator::sleep`](crate::CachingAllocator::sleep) releases
//! everything idle in the cache and the physical memory of every live buffer, after
//! copying the buffers the caller names to page-locked host memory;
//! [`wake`](crate::CachingAllocator::wake) maps new physical memory at the same
//! addresses and copies the kept contents back. Buffers not named come back with
//! undefined contents (a KV cache, activations), which is what makes sleeping cheap. This
//! is vLLM's sleep mode: an engine gives its GPU to another job between requests and
//! keeps its weights.
//!
//! Between sleep and wake the device's memory must not be used: no kernel or copy may
//! touch a sleeping buffer, and no allocation should be made, since the cache may hand
//! out idle parts of sleeping memory. The mock reports a sleeping buffer that work
//! touches.

use serde::Serialize;

/// What [`sleep`](crate::CachingAllocator::sleep) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SleepReport {
    /// Physical memory given back to the device: idle blocks released from the cache and
    /// the memory under live blocks.
    pub released_bytes: u64,
    /// Bytes copied to host memory, to be restored on wake.
    pub kept_bytes: u64,
    /// Bytes of sleeping blocks not kept: undefined after wake.
    pub discarded_bytes: u64,
    /// Native blocks put to sleep.
    pub blocks: u64,
}

/// What [`wake`](crate::CachingAllocator::wake) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WakeReport {
    /// Physical memory mapped again under sleeping blocks.
    pub mapped_bytes: u64,
    /// Kept bytes copied back.
    pub restored_bytes: u64,
    /// Native blocks woken.
    pub blocks: u64,
}
