//! Memory areas beyond the device's own allocator: a caching allocator over an
//! `Allocator` the framework wrote, and devices opened with growable segments.

use std::sync::atomic::{AtomicU64, Ordering};

use gpuhal_hal::pool::{Allocator, CachingAllocator, NativeBlock};
use gpuhal_hal::{Backend, Capabilities, Device, DeviceId, MemoryKind, Result, Stream, StreamId};

use super::{ensure_bytes, pattern, read_back, KIB, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Memory;
    vec![Case::new(
        "user_allocator_under_the_cache",
        area,
        Capabilities::empty(),
        user_allocator_under_the_cache::<B>,
    )]
}

/// What a framework writes: the device's native memory, counted.
struct Counted<B: Backend> {
    device: CachingAllocator<B::Memory>,
    allocations: AtomicU64,
    frees: AtomicU64,
}

impl<B: Backend> Allocator for Counted<B> {
    type Stream = <B::Memory as Allocator>::Stream;
    type Marker = <B::Memory as Allocator>::Marker;
    const CHECKS_LIFETIMES: bool = <B::Memory as Allocator>::CHECKS_LIFETIMES;

    fn device(&self) -> DeviceId {
        self.device.native().device()
    }

    fn native_size(&self, rounded: u64, kind: MemoryKind) -> u64 {
        self.device.native().native_size(rounded, kind)
    }

    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&Self::Stream>) -> Result<NativeBlock> {
        let block = self.device.native().allocate(size, kind, stream)?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    fn free(&self, block: NativeBlock, stream: Option<&Self::Stream>) -> Result<()> {
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.device.native().free(block, stream)
    }

    fn record_marker(&self, stream: &Self::Stream) -> Result<Self::Marker> {
        self.device.native().record_marker(stream)
    }

    fn is_marker_complete(&self, marker: &Self::Marker) -> Result<bool> {
        self.device.native().is_marker_complete(marker)
    }

    fn wait_marker(&self, stream: &Self::Stream, marker: &Self::Marker) -> Result<()> {
        self.device.native().wait_marker(stream, marker)
    }

    fn on_handed_out(&self, block: &NativeBlock, len: u64, stream: StreamId) {
        self.device.native().on_handed_out(block, len, stream);
    }

    fn on_returned(&self, block: &NativeBlock, stream: StreamId) {
        self.device.native().on_returned(block, stream);
    }
}

/// A caching allocator over a user-written allocator serves buffers that the device's
/// streams read and write, caches them (hits never reach the user's allocator), and
/// gives everything back through it on trim.
fn user_allocator_under_the_cache<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let before = device.memory_stats();
    let counted = Counted::<B> {
        device: device.allocator().clone(),
        allocations: AtomicU64::new(0),
        frees: AtomicU64::new(0),
    };
    let allocator = CachingAllocator::new(counted);
    let cache = allocator.stream_cache(stream.cache().native_stream().clone(), StreamId::fresh());
    let data = pattern(256 * KIB as usize, 11);
    for round in 0..8 {
        let buffer = allocator
            .allocate(data.len() as u64, MemoryKind::Device, &cache)
            .during("allocating from the user's allocator")?;
        let large = allocator
            .allocate(3 * MIB, MemoryKind::Device, &cache)
            .during("allocating a large block from the user's allocator")?;
        stream.write(&buffer, 0, &data).during("writing")?;
        stream
            .copy(&buffer, 0, &large, MIB, data.len() as u64)
            .during("copying")?;
        let read = read_back::<B>(&stream, &large, MIB, data.len())?;
        ensure_bytes(
            &read,
            &data,
            &format!("round {round}: data copied through the user's buffers"),
        )?;
    }
    let native = allocator.native();
    let allocations = native.allocations.load(Ordering::Relaxed);
    ensure!(
        (1..=2).contains(&allocations),
        "8 rounds of the same two requests reached the user's allocator {allocations} times (1 or 2 expected)"
    );
    let stats = allocator.stats();
    ensure_eq!(stats.cache_hits, 16 - stats.cache_misses, "cache hits");
    ensure_eq!(
        stats.native_allocations,
        allocations,
        "native allocations the pool counted"
    );
    let after = device.memory_stats();
    ensure_eq!(
        after.native_allocations,
        before.native_allocations,
        "the device's own allocator's native allocations"
    );
    stream.synchronize().during("synchronizing")?;
    let released = allocator.trim();
    ensure_eq!(released, stats.reserved_bytes, "bytes trim released");
    ensure_eq!(
        native.frees.load(Ordering::Relaxed),
        allocations,
        "frees through the user's allocator"
    );
    Ok(())
}
