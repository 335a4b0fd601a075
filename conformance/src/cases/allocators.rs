//! Memory areas beyond the device's own allocator: a caching allocator over an
//! `Allocator` the framework wrote, and devices opened with growable segments.

use std::sync::atomic::{AtomicU64, Ordering};

use gpuhal_hal::pool::{Allocator, CachingAllocator, NativeBlock};
use gpuhal_hal::{Backend, Capabilities, Device, DeviceId, MemoryKind, Result, SegmentStrategy, Stream, StreamId};

use super::{ensure_bytes, pattern, read_back, KIB, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Memory;
    let growable = Capabilities::GROWABLE_SEGMENTS;
    vec![
        Case::new(
            "user_allocator_under_the_cache",
            area,
            Capabilities::empty(),
            user_allocator_under_the_cache::<B>,
        ),
        Case::new(
            "growable_segments_map_whole_granules",
            area,
            growable,
            growable_segments_map_whole_granules::<B>,
        ),
        Case::new(
            "growable_segments_trim_returns_device_memory",
            area,
            growable,
            growable_segments_trim_returns_memory::<B>,
        ),
        Case::new(
            "sleep_keeps_chosen_buffers_and_releases_the_rest",
            area,
            growable,
            sleep_keeps_chosen_buffers_and_releases_the_rest::<B>,
        ),
        Case::new(
            "sleep_is_refused_without_growable_segments",
            area,
            Capabilities::empty(),
            sleep_is_refused_without_growable_segments::<B>,
        ),
    ]
}

/// The mapping granularity of a device opened with growable segments; a skip otherwise.
fn granularity<B: Backend>(ctx: &Context<B>) -> Result<u64, Failure> {
    let allocator = ctx.device().allocator();
    if allocator.config().segments != SegmentStrategy::Growable {
        return Err(Failure::skip(
            "the device was opened with native segments (run the suite with --segments growable)",
        ));
    }
    let granularity = allocator.native().native_size(1, MemoryKind::Device);
    ensure!(
        granularity > 1,
        "growable segments map device memory in granules, yet a 1-byte request asks the native API for {granularity} bytes"
    );
    Ok(granularity)
}

/// Small requests share a granule, a request that is no multiple of the granule leaves
/// the rest of its last one to the next request, and every byte of each is usable.
fn growable_segments_map_whole_granules<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let granule = granularity(ctx)?;
    let device = ctx.device();
    let stream = ctx.stream()?;
    let before = device.memory_stats();
    let count = (granule / (64 * KIB)).clamp(1, 16);
    let small: Vec<_> = (0..count)
        .map(|_| device.allocate(64 * KIB, MemoryKind::Device, &stream))
        .collect::<gpuhal_hal::Result<_>>()
        .during("allocating small buffers")?;
    let after = device.memory_stats();
    ensure_eq!(
        after.native_allocations - before.native_allocations,
        1,
        "native allocations for {count} × 64 KiB under a {granule}-byte granule"
    );
    let odd = granule + 4 * KIB;
    let large = device
        .allocate(odd, MemoryKind::Device, &stream)
        .during("allocating a granule and a bit")?;
    let tail = device
        .allocate(granule / 2, MemoryKind::Device, &stream)
        .during("allocating half a granule")?;
    let stats = device.memory_stats();
    ensure!(
        stats.reserved_bytes.is_multiple_of(granule),
        "{} bytes reserved is no whole number of {granule}-byte granules",
        stats.reserved_bytes
    );
    ensure_eq!(
        stats.native_allocations - before.native_allocations,
        2,
        "native allocations (the half granule comes from the rest of the odd request's last granule)"
    );
    for (index, buffer) in small.iter().chain([&large, &tail]).enumerate() {
        let data = pattern(buffer.len() as usize, index as u8);
        stream.write(buffer, 0, &data).during("writing")?;
    }
    for (index, buffer) in small.iter().chain([&large, &tail]).enumerate() {
        let data = pattern(buffer.len() as usize, index as u8);
        let read = read_back::<B>(&stream, buffer, 0, data.len())?;
        ensure_bytes(&read, &data, &format!("buffer {index} read back"))?;
    }
    Ok(())
}

/// What trim releases from growable segments is unmapped and shows as free device
/// memory once the stream has passed its last use.
fn growable_segments_trim_returns_memory<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let granule = granularity(ctx)?;
    let device = ctx.device();
    let stream = ctx.stream()?;
    let size = 32 * MIB + 4 * KIB;
    let (free_before, _) = device.memory_info().during("reading memory info")?;
    if free_before < 16 * size {
        return Err(Failure::skip(format!("only {free_before} bytes of device memory free")));
    }
    let buffers: Vec<_> = (0..3)
        .map(|_| device.allocate(size, MemoryKind::Device, &stream))
        .collect::<gpuhal_hal::Result<_>>()
        .during("allocating")?;
    for buffer in &buffers {
        stream.fill(buffer, 0, size, 5).during("filling")?;
    }
    let (free_live, _) = device.memory_info().during("reading memory info")?;
    let held = 3 * size.next_multiple_of(granule);
    ensure!(
        free_before.saturating_sub(free_live) >= held,
        "free memory fell by {} bytes with {held} bytes mapped",
        free_before.saturating_sub(free_live)
    );
    drop(buffers);
    let released = device.allocator().trim();
    ensure_eq!(released, held, "bytes trim released");
    stream.synchronize().during("synchronizing after trim")?;
    let (free_after, _) = device.memory_info().during("reading memory info")?;
    // Allow a granule or two for what the driver itself allocates meanwhile.
    ensure!(
        free_after + 2 * granule >= free_before,
        "free memory {free_after} after trim is below the {free_before} bytes free before the allocations"
    );
    Ok(())
}

/// Sleep releases the physical memory of idle and live blocks alike, keeps the buffers
/// named, and wake restores them at the same addresses; the others are usable again.
fn sleep_keeps_chosen_buffers_and_releases_the_rest<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let granule = granularity(ctx)?;
    let device = ctx.device();
    let stream = ctx.stream()?;
    let (free_before, _) = device.memory_info().during("reading memory info")?;
    let (kept_len, discarded_len, idle_len) = (3 * MIB + 4 * KIB, 40 * MIB, 24 * MIB);
    if free_before < 4 * (kept_len + discarded_len + idle_len) {
        return Err(Failure::skip(format!("only {free_before} bytes of device memory free")));
    }
    let kept = device
        .allocate(kept_len, MemoryKind::Device, &stream)
        .during("allocating the buffer to keep")?;
    let discarded = device
        .allocate(discarded_len, MemoryKind::Device, &stream)
        .during("allocating the buffer to discard")?;
    let idle = device
        .allocate(idle_len, MemoryKind::Device, &stream)
        .during("allocating the buffer left idle")?;
    let data = pattern(kept_len as usize, 0x3c);
    stream.write(&kept, 0, &data).during("writing the kept buffer")?;
    stream.fill(&discarded, 0, discarded_len, 0x11).during("filling")?;
    drop(idle);
    stream.synchronize().during("synchronizing")?;
    let reserved = device.memory_stats().reserved_bytes;
    let (free_awake, _) = device.memory_info().during("reading memory info")?;
    let (kept_address, discarded_address) = (kept.address(), discarded.address());

    let slept = device.allocator().sleep(&[&kept]).during("sleep")?;
    ensure_eq!(slept.kept_bytes, kept_len, "bytes kept across sleep");
    ensure!(
        slept.released_bytes >= reserved,
        "sleep released {} bytes of the {reserved} reserved (idle and live)",
        slept.released_bytes
    );
    let stats = device.memory_stats();
    ensure!(
        stats.asleep_bytes >= kept_len + discarded_len,
        "{} bytes asleep with the kept and discarded buffers' blocks sleeping",
        stats.asleep_bytes
    );
    let (free_asleep, _) = device.memory_info().during("reading memory info")?;
    ensure!(
        free_asleep + 2 * granule >= free_awake + reserved,
        "free device memory went from {free_awake} to {free_asleep} bytes asleep, with {reserved} bytes reserved"
    );

    let woken = device.allocator().wake().during("wake")?;
    ensure_eq!(woken.restored_bytes, kept_len, "bytes restored on wake");
    ensure_eq!(device.memory_stats().asleep_bytes, 0, "bytes asleep after wake");
    ensure_eq!(
        (kept.address(), discarded.address()),
        (kept_address, discarded_address),
        "addresses across sleep"
    );
    let read = read_back::<B>(&stream, &kept, 0, data.len())?;
    ensure_bytes(&read, &data, "the kept buffer after wake")?;
    // The discarded buffer's contents are undefined, but it is memory again.
    stream
        .fill(&discarded, 0, discarded_len, 0x77)
        .during("filling after wake")?;
    let read = read_back::<B>(&stream, &discarded, discarded_len - 64, 64)?;
    ensure_bytes(&read, &[0x77; 64], "the discarded buffer refilled after wake")?;
    Ok(())
}

/// Without growable segments sleep says so and changes nothing.
fn sleep_is_refused_without_growable_segments<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    if device.allocator().config().segments == SegmentStrategy::Growable {
        return Err(Failure::skip("the device was opened with growable segments"));
    }
    let stream = ctx.stream()?;
    drop(device.allocate(MIB, MemoryKind::Device, &stream).during("allocating")?);
    let before = device.memory_stats();
    let refused = device.allocator().sleep(&[]);
    ensure!(
        matches!(refused, Err(gpuhal_hal::Error::Unsupported { .. })),
        "sleep without growable segments: {refused:?}"
    );
    let after = device.memory_stats();
    ensure_eq!(
        (after.cached_bytes, after.reserved_bytes, after.asleep_bytes),
        (before.cached_bytes, before.reserved_bytes, 0),
        "the cache after a refused sleep"
    );
    Ok(())
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
