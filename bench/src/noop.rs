//! Native memory that does nothing, so the caching pool can be measured alone.

use std::sync::atomic::{AtomicU64, Ordering};

use gpuhal_hal::pool::{CachingAllocator, NativeBlock, NativeMemory, StreamCache};
use gpuhal_hal::{DeviceId, MemoryKind, Result, StreamId};

/// Hands out made-up, 256-byte-aligned addresses and touches no memory: the pool's own
/// cost is all that is left to measure.
#[derive(Debug)]
pub struct NoopMemory {
    device: DeviceId,
    next_address: AtomicU64,
}

impl Default for NoopMemory {
    fn default() -> Self {
        NoopMemory {
            device: DeviceId::fresh(),
            // Not zero: address 0 means "empty buffer" to the pool.
            next_address: AtomicU64::new(1 << 40),
        }
    }
}

impl NativeMemory for NoopMemory {
    type Stream = ();
    type Marker = ();

    fn device(&self) -> DeviceId {
        self.device
    }

    fn allocate(&self, size: u64, kind: MemoryKind, _stream: Option<&()>) -> Result<NativeBlock> {
        let address = self
            .next_address
            .fetch_add(size.next_multiple_of(256), Ordering::Relaxed);
        Ok(NativeBlock {
            address,
            size,
            kind,
            native: address,
            native_offset: 0,
        })
    }

    fn free(&self, _block: NativeBlock, _stream: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn record_marker(&self, _stream: &()) -> Result<()> {
        Ok(())
    }

    fn is_marker_complete(&self, _marker: &()) -> Result<bool> {
        Ok(true)
    }

    fn wait_marker(&self, _stream: &(), _marker: &()) -> Result<()> {
        Ok(())
    }
}

/// A caching allocator over [`NoopMemory`] and one stream cache on it.
pub fn pool_alone() -> (CachingAllocator<NoopMemory>, StreamCache<NoopMemory>) {
    let allocator = CachingAllocator::new(NoopMemory::default());
    let cache = allocator.stream_cache((), StreamId::fresh());
    (allocator, cache)
}
