//! Native memory that hands out address ranges but no memory: for testing and measuring
//! the caching pool on its own, with no backend and no device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::native::{Allocator, NativeBlock};
use crate::error::{Error, NativeError, Result};
use crate::types::{DeviceId, MemoryKind};

/// A simulated stream: work is "submitted" and "finished" by the caller, so tests can
/// hold a stream busy and release it at a chosen moment.
#[derive(Debug, Default)]
pub struct CountingStream {
    submitted: AtomicU64,
    finished: AtomicU64,
}

impl CountingStream {
    /// A new idle stream.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Enqueues one unit of work that stays unfinished until [`finish`](Self::finish).
    pub fn submit(&self) {
        self.submitted.fetch_add(1, Ordering::AcqRel);
    }

    /// Completes everything submitted so far.
    pub fn finish(&self) {
        self.finished
            .store(self.submitted.load(Ordering::Acquire), Ordering::Release);
    }
}

/// A marker: the stream's submitted count when it was recorded.
#[derive(Debug)]
pub struct CountingMarker {
    stream: Arc<CountingStream>,
    ticket: u64,
}

/// Native memory with a capacity, a bump address space and call counters.
///
/// ```
/// use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream};
/// use gpuhal_hal::{MemoryKind, StreamId};
/// # fn main() -> gpuhal_hal::Result<()> {
/// let allocator = CachingAllocator::new(CountingMemory::new(1 << 30));
/// let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
/// let first = allocator.allocate(4096, MemoryKind::Device, &stream)?.address();
/// let second = allocator.allocate(4096, MemoryKind::Device, &stream)?.address();
/// assert_eq!(first, second, "the block came back from the cache");
/// assert_eq!(allocator.stats().native_allocations, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CountingMemory {
    device: DeviceId,
    capacity: u64,
    in_use: AtomicU64,
    next_address: AtomicU64,
    allocations: AtomicU64,
    frees: AtomicU64,
}

impl CountingMemory {
    /// First address handed out; non-zero so a null address always means "empty".
    const BASE: u64 = 1 << 40;

    /// A native memory of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        CountingMemory {
            device: DeviceId::fresh(),
            capacity,
            in_use: AtomicU64::new(0),
            next_address: AtomicU64::new(Self::BASE),
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// Bytes allocated and not freed.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Acquire)
    }

    /// Native allocation calls that succeeded.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Native free calls.
    pub fn frees(&self) -> u64 {
        self.frees.load(Ordering::Relaxed)
    }
}

impl Allocator for CountingMemory {
    type Stream = Arc<CountingStream>;
    type Marker = CountingMarker;

    fn device(&self) -> DeviceId {
        self.device
    }

    fn allocate(&self, size: u64, kind: MemoryKind, _stream: Option<&Self::Stream>) -> Result<NativeBlock> {
        let reserved = self.in_use.fetch_add(size, Ordering::AcqRel) + size;
        if reserved > self.capacity {
            self.in_use.fetch_sub(size, Ordering::AcqRel);
            return Err(Error::native(
                format!(
                    "allocating {size} bytes of {kind:?} memory ({} of {} in use)",
                    reserved - size,
                    self.capacity
                ),
                NativeError {
                    call: "counting_allocate",
                    code: 2,
                    name: "COUNTING_ERROR_OUT_OF_MEMORY".into(),
                },
            ));
        }
        self.allocations.fetch_add(1, Ordering::Relaxed);
        let address = self.next_address.fetch_add(size.div_ceil(512) * 512, Ordering::Relaxed);
        Ok(NativeBlock {
            address,
            size,
            kind,
            native: 0,
            native_offset: 0,
        })
    }

    fn free(&self, block: NativeBlock, _stream: Option<&Self::Stream>) -> Result<()> {
        self.in_use.fetch_sub(block.size, Ordering::AcqRel);
        self.frees.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn record_marker(&self, stream: &Self::Stream) -> Result<Self::Marker> {
        Ok(CountingMarker {
            stream: stream.clone(),
            ticket: stream.submitted.load(Ordering::Acquire),
        })
    }

    fn is_marker_complete(&self, marker: &Self::Marker) -> Result<bool> {
        Ok(marker.stream.finished.load(Ordering::Acquire) >= marker.ticket)
    }

    fn wait_marker(&self, _stream: &Self::Stream, _marker: &Self::Marker) -> Result<()> {
        Ok(())
    }
}
