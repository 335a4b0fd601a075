//! The caching allocator: per-stream caches over a backend's native memory, with limits,
//! release on out-of-memory, and statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::buffer::{Buffer, Owner};
use super::graph_pool::GraphPoolInner;
use super::native::{Allocator, NativeBlock};
use super::size_class::{rounded_size, MAX_REQUEST};
use super::stream_cache::{FreeLists, Shard, ShardLock, ShardState, StreamCache};
use crate::error::{Error, Result};
use crate::sleep::{SleepReport, WakeReport};
use crate::spare;
use crate::stats::MemoryStats;
use crate::trace::{TraceEvent, TraceRecorder};
use crate::types::{DeviceId, MemoryKind, StreamId};

/// Tuning of the caching allocator.
///
/// # The release policy, and the figures behind its default
///
/// On a miss the pool may release idle blocks before it asks the native API for more.
/// The default keeps reserved memory within peak live + [`reserve_floor`](Self::reserve_floor)
/// (1 GiB), or (1 + [`reserve_slack`](Self::reserve_slack)) × peak live (1%) when that is
/// more, releasing the least recently returned idle blocks first. Out of memory still
/// releases every idle block and retries once, and a memory limit releases whatever it
/// needs.
///
/// The floor is there because a slack relative to peak live starves a small live set:
/// eight threads each handing random-sized buffers (8 KiB–4 MiB) from a producer stream to
/// a lagging consumer keep a few megabytes live, so 1% of it is a few hundred kilobytes,
/// and almost every idle block was released before its size came round again (25.8% hit
/// rate on an H200, 2.6x slower than never releasing). With the floor the same pattern
/// hits 99.1% over counting memory (never releasing: 99.1%; 256 MiB of floor: 66%). What
/// it costs is bounded: at most the floor more than peak live. Without a limit, the
/// recorded traces reserve 1.14 (gpt2 training), 1.13 (training at varying sequence
/// lengths) and 1.31 (a decode loop with a growing KV cache, 3.3 GiB live) × their peak
/// live, against 1.01 with the slack alone and 1.8–3.1 never releasing. Under a
/// [`memory_limit`](Self::memory_limit) the floor shrinks to half the headroom peak live
/// leaves below the limit, so every trace still completes under a limit of
/// 1.02 × its peak live. `BENCHMARKS.md` has the table of the candidates tried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Refuse requests that would take reserved memory past this many bytes.
    pub memory_limit: Option<u64>,
    /// Release idle cached blocks beyond this many bytes. Only wholly idle native
    /// allocations can be released, so idle pieces of a native allocation that still has
    /// a buffer live (or waiting on another stream) do not count against it.
    pub cache_limit: Option<u64>,
    /// Before asking the native API for more memory, release idle blocks until reserved
    /// memory would stay within `(1 + reserve_slack)` × the highest live memory seen (both
    /// in rounded bytes), or within that peak + [`reserve_floor`](Self::reserve_floor)
    /// when that is more. A larger slack keeps more idle blocks for reuse. Infinity
    /// disables the budget (floor included): idle blocks then go only on out of memory, a
    /// limit, or [`trim`](CachingAllocator::trim). Only wholly idle native allocations can
    /// be released, so idle pieces of a partly used one can keep reserved memory above
    /// the budget.
    pub reserve_slack: f64,
    /// Bytes of idle cache allowed above peak live whatever the slack says (1 GiB by
    /// default: 0.7% of an H200, 1.2% of an 80 GB H100). Under a memory limit it is at
    /// most half of `limit − peak live`.
    pub reserve_floor: u64,
    /// When non-zero, idle blocks between the slack's budget and the floor's are released
    /// too, once this many misses (allocator-wide) have passed since they were returned:
    /// memory that has stopped being reused goes back before the floor is reached, while
    /// blocks in reuse stay. 0 (the default) leaves the floor's bytes to the cache: on the
    /// hand-off above, 64 misses cost 0.9 points of hit rate and twice the native
    /// allocations, and lowers no trace's peak reserved.
    pub release_after_misses: u64,
    /// Where a backend's device memory comes from (read when the device is opened).
    pub segments: SegmentStrategy,
}

/// How a backend gets device memory from the driver, chosen when the device is opened.
///
/// Under [`Native`](Self::Native) every native allocation is one driver allocation (on
/// CUDA, from a stream-ordered memory pool). The driver's pool keeps memory in chunks of
/// its own, and a chunk goes back to the device only when nothing in it is allocated, so
/// device memory can stay well above what gpuhal reserves (a PyTorch GPT-2 run on an
/// H200: gpuhal reserved 1.08 × peak live, the device showed 1.72 ×).
///
/// Under [`Growable`](Self::Growable) the backend reserves a large range of device
/// addresses once and maps physical memory into it itself, in chunks of the driver's
/// mapping granularity (2 MiB on CUDA), so what gpuhal reserves is what the device holds:
/// requests are rounded up to the granularity ([`Allocator::native_size`]), the rest of a
/// chunk serves later requests as an idle piece, and a block gpuhal releases is unmapped
/// and its physical memory returned once the work that last used it has completed
/// (waited for through an event, never a device-wide synchronize). Backends without the
/// capability ([`Capabilities::GROWABLE_SEGMENTS`](crate::Capabilities::GROWABLE_SEGMENTS))
/// refuse to open with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SegmentStrategy {
    /// One driver allocation per native block (the default).
    #[default]
    Native,
    /// Physical memory mapped into reserved address ranges by gpuhal.
    Growable,
}

impl SegmentStrategy {
    /// Parses `native` or `growable` (what `GPUHAL_SEGMENTS` takes).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "native" | "stream-ordered" | "stream_ordered" => Some(Self::Native),
            "growable" | "expandable" => Some(Self::Growable),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Growable => "growable",
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            memory_limit: None,
            cache_limit: None,
            reserve_slack: 0.01,
            reserve_floor: DEFAULT_RESERVE_FLOOR,
            release_after_misses: 0,
            segments: SegmentStrategy::Native,
        }
    }
}

/// The default of [`PoolConfig::reserve_floor`]: 1 GiB.
pub const DEFAULT_RESERVE_FLOOR: u64 = 1 << 30;

/// State shared by the allocator, every stream cache and every buffer.
pub struct PoolShared<N: Allocator> {
    pub(crate) native: N,
    global: Mutex<GlobalState<N>>,
    /// Sum of idle bytes across shards, maintained only while a cache limit is set so
    /// the hit path touches no shared counter otherwise.
    idle_bytes: AtomicI64,
    cache_limit: AtomicU64,
    failed_frees: AtomicU64,
    /// History of shards that no longer exist (streams and their buffers all dropped),
    /// so totals never go backwards. Atomics: a shard can be dropped while the global
    /// lock is held.
    retired_hits: AtomicU64,
    retired_misses: AtomicU64,
    retired_peak_live: AtomicU64,
    tracing: AtomicBool,
    trace: Mutex<Option<TraceRecorder>>,
    next_trace_id: AtomicU64,
}

pub(crate) struct GlobalState<N: Allocator> {
    g: GlobalCounters,
    pub(crate) shards: Vec<Weak<Shard<N>>>,
    /// Every native allocation the stream caches hold, by address, with the stream whose
    /// cache owns it. Kept on the miss and release paths only (both under this lock), so
    /// that the memory report can name live blocks, which no free list holds.
    pub(crate) natives: HashMap<u64, (NativeBlock, StreamId)>,
    /// The graph pools drawing on this allocator, for the memory report.
    pub(crate) graph_pools: Vec<Weak<GraphPoolInner<N>>>,
}

#[derive(Default)]
struct GlobalCounters {
    reserved_bytes: u64,
    reserved_count: u64,
    peak_reserved_bytes: u64,
    peak_live_rounded: u64,
    peak_live_sampled: u64,
    native_allocations: u64,
    native_frees: u64,
    oom_retries: u64,
    oom_errors: u64,
    /// Misses so far: the clock idle blocks are stamped with (see `ShardState`).
    miss_clock: u64,
    config: PoolConfig,
}

const NO_LIMIT: u64 = u64::MAX;

/// A caching allocator over a backend's native memory.
///
/// Each stream has its own cache ([`StreamCache`]); a request is served from the cache of
/// its stream when a block of its size class and kind is idle there, without any native
/// call. Failing that, it cuts the request from the smallest suitable larger idle block
/// of the stream's cache and keeps the rest idle; pieces merge again when freed, and a
/// native allocation is released only once all of it is idle. Otherwise the allocator
/// asks the native API, releasing idle blocks first when reserved memory would outgrow
/// peak live memory by more than [`PoolConfig::reserve_floor`] (or
/// [`PoolConfig::reserve_slack`] of it, when that is more), and releasing the whole cache and retrying once when the native API is out of memory.
pub struct CachingAllocator<N: Allocator> {
    shared: Arc<PoolShared<N>>,
}

impl<N: Allocator> Clone for CachingAllocator<N> {
    fn clone(&self) -> Self {
        CachingAllocator {
            shared: self.shared.clone(),
        }
    }
}

impl<N: Allocator> CachingAllocator<N> {
    /// An allocator over `native` with the default configuration.
    pub fn new(native: N) -> Self {
        Self::with_config(native, PoolConfig::default())
    }

    /// An allocator over `native` with `config`.
    pub fn with_config(native: N, config: PoolConfig) -> Self {
        let shared = Arc::new(PoolShared {
            native,
            global: Mutex::new(GlobalState {
                g: GlobalCounters {
                    config,
                    ..GlobalCounters::default()
                },
                shards: Vec::new(),
                natives: HashMap::new(),
                graph_pools: Vec::new(),
            }),
            idle_bytes: AtomicI64::new(0),
            cache_limit: AtomicU64::new(config.cache_limit.unwrap_or(NO_LIMIT)),
            failed_frees: AtomicU64::new(0),
            retired_hits: AtomicU64::new(0),
            retired_misses: AtomicU64::new(0),
            retired_peak_live: AtomicU64::new(0),
            tracing: AtomicBool::new(false),
            trace: Mutex::new(None),
            next_trace_id: AtomicU64::new(1),
        });
        CachingAllocator { shared }
    }

    /// The native memory under the pool. A clone of this allocator (a cheap handle) keeps
    /// it alive, so an [`Allocator`] of your own can forward to a device's native memory
    /// through one and run under a caching allocator of its own.
    pub fn native(&self) -> &N {
        &self.shared.native
    }

    /// The device this allocator serves.
    pub fn device(&self) -> DeviceId {
        self.shared.native.device()
    }

    /// Creates the cache of a new stream. `stream` must keep the native stream alive
    /// (see [`Allocator::Stream`]).
    pub fn stream_cache(&self, stream: N::Stream, id: StreamId) -> StreamCache<N> {
        let shard = Arc::new(Shard {
            shared: self.shared.clone(),
            stream,
            id,
            state: spare::take(|| ShardLock::new(ShardState::new()), |_| {}),
        });
        let mut global = self.shared.global.lock();
        shard.state.lock().miss_clock = global.g.miss_clock;
        global.shards.retain(|w| w.strong_count() > 0);
        global.shards.push(Arc::downgrade(&shard));
        StreamCache::new(shard)
    }

    /// Allocates `len` bytes of `kind` on `stream`.
    ///
    /// Zero bytes succeed with an empty buffer (address 0) whose drop does nothing.
    /// While the stream is capturing, the memory comes from the capture's graph pool.
    pub fn allocate(&self, len: u64, kind: MemoryKind, stream: &StreamCache<N>) -> Result<Buffer<N>> {
        PoolShared::allocate(&self.shared, len, kind, stream)
    }

    /// Statistics now.
    pub fn stats(&self) -> MemoryStats {
        self.shared.stats()
    }

    /// Statistics of one stream's cache (its live, cached and hit counts; native counts
    /// are allocator-wide and left at 0).
    pub fn stream_stats(&self, stream: &StreamCache<N>) -> MemoryStats {
        let state = stream.base().state.lock();
        let c = &state.counters;
        MemoryStats {
            live_bytes: c.live_bytes,
            live_count: c.live_count,
            peak_live_bytes: c.peak_live_bytes,
            cached_bytes: c.cached_bytes,
            cached_count: c.cached_count,
            pending_count: state.pending.len() as u64,
            cache_hits: c.hits,
            cache_misses: c.misses,
            ..MemoryStats::default()
        }
    }

    /// Releases every idle cached block to the native API; returns the bytes released.
    /// Blocks still waiting on another stream's work stay held.
    pub fn trim(&self) -> u64 {
        let mut global = self.shared.global.lock();
        let released = self.shared.evict(&mut global, u64::MAX);
        drop(global);
        self.shared.native.trimmed();
        released
    }

    /// Puts the device's memory to sleep (see the [`sleep`](crate::SleepReport) module's
    /// rules): releases every idle block, then the physical memory under every live
    /// block, after copying the buffers in `keep` to host memory. The buffers stay valid
    /// objects with the same addresses; [`wake`](Self::wake) makes them usable again, with
    /// the kept ones' contents restored and the others' undefined. Needs a source that can
    /// sleep (growable segments); anything else is refused with
    /// [`Error::Unsupported`](crate::Error::Unsupported). Memory that is not in growable
    /// segments (managed, pinned, graph pools) stays resident.
    ///
    /// Blocks freed while another stream used them stay in the cache until the pool sees
    /// that work done, but their physical memory sleeps like a live buffer's.
    ///
    /// An engine that gives its GPU back between requests and keeps only its weights:
    ///
    /// ```
    /// use gpuhal_hal::{Backend, Buffer, Device, Result};
    ///
    /// fn pause<B: Backend>(device: &B::Device, weights: &[&Buffer<B>]) -> Result<u64> {
    ///     let slept = device.allocator().sleep(weights)?;
    ///     // The KV cache and activations are gone; the weights wait in host memory.
    ///     Ok(slept.released_bytes)
    /// }
    ///
    /// fn resume<B: Backend>(device: &B::Device) -> Result<()> {
    ///     device.allocator().wake()?;
    ///     Ok(())
    /// }
    /// ```
    pub fn sleep(&self, keep: &[&Buffer<N>]) -> Result<SleepReport> {
        let device = self.device();
        let mut ranges = Vec::with_capacity(keep.len());
        for buffer in keep {
            if buffer.device() != device {
                return Err(Error::invalid(
                    "sleep",
                    format!(
                        "the buffer at {:#x} to keep belongs to device {:?}, not {device:?}",
                        buffer.address(),
                        buffer.device()
                    ),
                ));
            }
            ranges.push((buffer.address(), buffer.len()));
        }
        // Refused (by the source) before anything is released when it cannot sleep.
        if !self.shared.native.can_sleep() {
            return self.shared.native.sleep(&ranges);
        }
        let idle = self.trim();
        let mut report = self.shared.native.sleep(&ranges)?;
        report.released_bytes += idle;
        Ok(report)
    }

    /// Wakes memory put to sleep by [`sleep`](Self::sleep): maps physical memory at the
    /// sleeping blocks' addresses and restores what was kept. On an error (the device is
    /// short of memory) the blocks woken so far stay awake and calling again retries the
    /// rest.
    pub fn wake(&self) -> Result<WakeReport> {
        self.shared.native.wake()
    }

    /// Sets or clears the memory limit. Requests that would take reserved memory past it
    /// fail with [`Error::OutOfMemory`] before the device is touched.
    pub fn set_memory_limit(&self, limit: Option<u64>) {
        self.shared.global.lock().g.config.memory_limit = limit;
    }

    /// Sets or clears the cache limit, releasing idle blocks now if the cache is over it.
    pub fn set_cache_limit(&self, limit: Option<u64>) {
        {
            let mut global = self.shared.global.lock();
            global.g.config.cache_limit = limit;
            // Recount idle bytes with every shard locked, so the running sum starts exact.
            let shards: Vec<_> = global.shards.iter().filter_map(Weak::upgrade).collect();
            let locks: Vec<_> = shards.iter().map(|s| s.state.lock()).collect();
            // Idle pieces of partly used native allocations cannot be released, so the
            // limit counts only whole idle blocks.
            let idle: u64 = locks
                .iter()
                .map(|s| s.counters.cached_bytes - s.counters.split_idle_bytes)
                .sum();
            self.shared.idle_bytes.store(idle as i64, Ordering::Relaxed);
            self.shared
                .cache_limit
                .store(limit.unwrap_or(NO_LIMIT), Ordering::Relaxed);
        }
        self.shared.enforce_cache_limit();
    }

    /// Sets the reserve slack (see [`PoolConfig::reserve_slack`]).
    pub fn set_reserve_slack(&self, slack: f64) {
        self.shared.global.lock().g.config.reserve_slack = slack.max(0.0);
    }

    /// Sets the reserve floor (see [`PoolConfig::reserve_floor`]).
    pub fn set_reserve_floor(&self, bytes: u64) {
        self.shared.global.lock().g.config.reserve_floor = bytes;
    }

    /// Sets how many misses must pass an idle block before the reserve slack may release
    /// it (see [`PoolConfig::release_after_misses`]).
    pub fn set_release_after_misses(&self, misses: u64) {
        self.shared.global.lock().g.config.release_after_misses = misses;
    }

    /// The configuration now.
    pub fn config(&self) -> PoolConfig {
        self.shared.global.lock().g.config
    }

    /// Starts recording alloc and free events (see [`crate::trace`]) into `recorder`,
    /// replacing any recorder already set.
    pub fn start_trace(&self, recorder: TraceRecorder) {
        *self.shared.trace.lock() = Some(recorder);
        self.shared.tracing.store(true, Ordering::Release);
    }

    /// Stops recording and returns the recorder, flushed.
    pub fn stop_trace(&self) -> Option<TraceRecorder> {
        self.shared.tracing.store(false, Ordering::Release);
        let mut recorder = self.shared.trace.lock().take()?;
        // A flush failure surfaces through the recorder's own error slot.
        recorder.flush();
        Some(recorder)
    }

    pub(crate) fn shared(&self) -> &Arc<PoolShared<N>> {
        &self.shared
    }
}

impl<N: Allocator> PoolShared<N> {
    pub(crate) fn allocate(this: &Arc<Self>, len: u64, kind: MemoryKind, stream: &StreamCache<N>) -> Result<Buffer<N>> {
        if len == 0 {
            return Ok(Buffer::empty(this.native.device(), kind));
        }
        if len > MAX_REQUEST {
            return Err(Error::invalid(
                "allocate",
                format!("{len} bytes is more than the largest request gpuhal accepts ({MAX_REQUEST})"),
            ));
        }
        if let Some(pool) = stream.capture_pool() {
            return pool.allocate(len, kind, stream.stream_id());
        }
        let shard = stream.base();
        let rounded = rounded_size(len);
        // A hit brings the reference to the shard the buffer holds along with the block;
        // only a block new to the cache needs a new one.
        let taken = match shard.take_cached(rounded, kind, len) {
            Some(taken) => taken,
            None => {
                let block = this.allocate_native(shard, rounded, kind, len)?;
                shard.take_fresh(block, rounded, len)
            }
        };
        let block = taken.block();
        if N::CHECKS_LIFETIMES {
            this.native.on_handed_out(&block, len, shard.id);
        }
        let trace_id = if this.tracing.load(Ordering::Relaxed) {
            this.trace_alloc(len, shard.id)
        } else {
            0
        };
        Ok(Buffer {
            owner: Owner::Stream(taken.home),
            block,
            piece: taken.piece,
            len,
            uses: Mutex::new(Vec::new()),
            trace_id,
        })
    }

    /// The miss path: limit check, budget release, native call, OOM release and retry.
    fn allocate_native(&self, shard: &Arc<Shard<N>>, rounded: u64, kind: MemoryKind, len: u64) -> Result<NativeBlock> {
        let size = self.native.native_size(rounded, kind).max(rounded);
        let mut global = self.global.lock();
        global.g.miss_clock += 1;
        let live_rounded = self.sample_live(&mut global, true);
        if let Some(limit) = self.make_room_under_limit(&mut global, size) {
            drop(global);
            return Err(self.out_of_memory(len, kind, Some(limit)));
        }

        let PoolConfig {
            reserve_slack: slack,
            reserve_floor: floor,
            release_after_misses: min_age,
            ..
        } = global.g.config;
        if slack.is_finite() {
            let peak = global.g.peak_live_rounded.max(live_rounded + rounded);
            let budget = (peak as f64 * (1.0 + slack)) as u64;
            // Under a memory limit the floor shrinks to half the headroom peak live leaves
            // below it: near the limit, idle blocks go as the slack says, so that what
            // the limit must release is whole blocks rather than pieces of them.
            let floor = match global.g.config.memory_limit {
                Some(limit) => floor.min(limit.saturating_sub(peak) / 2),
                None => floor,
            };
            let ceiling = budget.max(peak.saturating_add(floor));
            let after = global.g.reserved_bytes + size;
            if after > ceiling {
                self.evict(&mut global, after - ceiling);
            }
            let after = global.g.reserved_bytes + size;
            if after > budget && min_age > 0 {
                self.evict_idle(&mut global, after - budget, min_age);
            }
        }

        // The miss path's native call: a span (its duration is the call's) with the sizes.
        let span = tracing::debug_span!("native_allocate", size, requested = len, kind = ?kind).entered();
        let block = match self.native.allocate(size, kind, Some(&shard.stream)) {
            Ok(block) => block,
            Err(err) if err.is_out_of_memory() => {
                global.g.oom_retries += 1;
                let released = self.evict(&mut global, u64::MAX);
                tracing::warn!(
                    size,
                    kind = ?kind,
                    released,
                    reserved = global.g.reserved_bytes,
                    "out of device memory: released the idle cache, retrying once"
                );
                match self.native.allocate(size, kind, Some(&shard.stream)) {
                    Ok(block) => block,
                    Err(err) if err.is_out_of_memory() => {
                        global.g.oom_errors += 1;
                        tracing::warn!(size, kind = ?kind, "out of device memory after the retry: refused");
                        drop(global);
                        return Err(self.out_of_memory(len, kind, None));
                    }
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        drop(span);
        let g = &mut global.g;
        g.native_allocations += 1;
        g.reserved_bytes += block.size;
        g.reserved_count += 1;
        g.peak_reserved_bytes = g.peak_reserved_bytes.max(g.reserved_bytes);
        g.peak_live_rounded = g.peak_live_rounded.max(live_rounded + rounded);
        global.natives.insert(block.address, (block, shard.id));
        Ok(block)
    }

    /// Releases idle blocks until `rounded` more bytes fit under the memory limit. Returns
    /// the limit (and counts the refusal) when they still do not fit.
    fn make_room_under_limit(&self, global: &mut GlobalState<N>, rounded: u64) -> Option<u64> {
        let limit = global.g.config.memory_limit?;
        if global.g.reserved_bytes + rounded <= limit {
            return None;
        }
        let excess = global.g.reserved_bytes + rounded - limit;
        self.evict(global, excess);
        if global.g.reserved_bytes + rounded <= limit {
            return None;
        }
        global.g.oom_errors += 1;
        tracing::warn!(
            limit,
            requested = rounded,
            reserved = global.g.reserved_bytes,
            "refused: the request would take reserved memory past the memory limit"
        );
        Some(limit)
    }

    /// Sums live bytes across shards and folds the sum into the sampled peaks. Returns
    /// the rounded live bytes. With `tick` (a miss), brings every shard's miss clock up
    /// to date while it is locked.
    fn sample_live(&self, global: &mut GlobalState<N>, tick: bool) -> u64 {
        let mut rounded = 0;
        let mut requested = 0;
        let clock = global.g.miss_clock;
        global.shards.retain(|w| w.strong_count() > 0);
        for shard in global.shards.iter().filter_map(Weak::upgrade) {
            let mut state = shard.state.lock();
            if tick {
                state.miss_clock = clock;
            }
            rounded += state.counters.live_rounded;
            requested += state.counters.live_bytes;
        }
        global.g.peak_live_rounded = global.g.peak_live_rounded.max(rounded);
        global.g.peak_live_sampled = global.g.peak_live_sampled.max(requested);
        rounded
    }

    fn out_of_memory(&self, requested: u64, kind: MemoryKind, limit: Option<u64>) -> Error {
        Error::OutOfMemory {
            requested,
            kind,
            limit,
            stats: Box::new(self.stats()),
        }
    }

    /// Releases idle blocks, least recently returned first, until at least `bytes` are
    /// released or none are idle. Returns the bytes released.
    pub(crate) fn evict(&self, global: &mut GlobalState<N>, bytes: u64) -> u64 {
        self.evict_idle(global, bytes, 0)
    }

    /// [`evict`](Self::evict), releasing only blocks that at least `min_age` misses have
    /// passed by since they were returned.
    fn evict_idle(&self, global: &mut GlobalState<N>, bytes: u64, min_age: u64) -> u64 {
        // Stamps at or below this are old enough (all of them when `min_age` is 0).
        let Some(newest) = global.g.miss_clock.checked_sub(min_age) else {
            return 0;
        };
        let shards: Vec<Arc<Shard<N>>> = global.shards.iter().filter_map(Weak::upgrade).collect();
        let mut states: Vec<_> = shards.iter().map(|s| s.state.lock()).collect();
        for (shard, state) in shards.iter().zip(states.iter_mut()) {
            if !state.pending.is_empty() {
                shard.poll_pending(state);
            }
        }
        // Oldest first across every free list: each list is ordered by return time, so a
        // merge over the list heads finds the oldest blocks without sorting them all, and
        // what is taken from one list is always a prefix of it. The heap is built in one
        // go (linear) and each entry carries the index of its list's count in `counts`,
        // so no map is needed: this runs on every miss over the reserve budget.
        let mut heads = Vec::new();
        for (index, state) in states.iter().enumerate() {
            for (slot, list) in state.free.lists() {
                heads.push(std::cmp::Reverse((list[0].returned_at, index, slot, 0usize)));
            }
        }
        let mut heads = std::collections::BinaryHeap::from(heads);
        let mut released = 0u64;
        // (shard index, slot, blocks to take from the front of that list).
        let mut counts: Vec<(usize, usize, usize)> = Vec::new();
        while released < bytes {
            let Some(std::cmp::Reverse((returned_at, index, slot, position))) = heads.pop() else {
                break;
            };
            if returned_at > newest {
                // Oldest first: every block left was returned more recently.
                break;
            }
            let list = states[index].free.list(slot);
            released += list[position].size;
            // A list's blocks come off in order: its first pop opens its entry, and only
            // later pops (rare: few blocks go per call) search for it.
            if position == 0 {
                counts.push((index, slot, 1));
            } else if let Some(entry) = counts.iter_mut().rev().find(|e| e.0 == index && e.1 == slot) {
                entry.2 += 1;
            }
            if let Some(next) = list.get(position + 1) {
                heads.push(std::cmp::Reverse((next.returned_at, index, slot, position + 1)));
            }
        }
        let mut taken: Vec<Vec<NativeBlock>> = vec![Vec::new(); shards.len()];
        for (index, slot, count) in counts {
            // Through the guard once, so the free lists and the counters borrow apart.
            let state: &mut ShardState<N> = &mut states[index];
            // The blocks' references to their shard are dropped here, under the locks:
            // never the last, as `shards` holds one of each.
            let kind = FreeLists::<N>::kind_of(slot);
            for cached in state.free.take_oldest(slot, count) {
                let block = cached.block(kind);
                state.counters.cached_bytes -= block.size;
                state.counters.cached_count -= 1;
                taken[index].push(block);
            }
        }
        drop(states);
        if released > 0 {
            tracing::debug!(
                wanted = bytes,
                released,
                blocks = taken.iter().map(Vec::len).sum::<usize>(),
                min_age,
                "releasing idle blocks, least recently returned first"
            );
        }
        for (shard, blocks) in shards.iter().zip(&taken) {
            self.free_native(global, blocks, Some(&shard.stream));
        }
        self.note_idle_change(-(released as i64));
        released
    }

    fn free_native(&self, global: &mut GlobalState<N>, blocks: &[NativeBlock], stream: Option<&N::Stream>) {
        for block in blocks {
            let _span = tracing::debug_span!("native_free", size = block.size, kind = ?block.kind).entered();
            match self.native.free(*block, stream) {
                Ok(()) => global.g.native_frees += 1,
                Err(_) => self.note_failed_free(),
            }
            global.g.reserved_bytes -= block.size;
            global.g.reserved_count -= 1;
            global.natives.remove(&block.address);
        }
    }

    /// Frees blocks no shard holds any more (a shard being dropped).
    pub(crate) fn release_blocks(&self, blocks: &[NativeBlock], stream: Option<&N::Stream>) {
        if blocks.is_empty() {
            return;
        }
        let mut global = self.global.lock();
        self.free_native(&mut global, blocks, stream);
    }

    /// Accounts memory a graph pool took from or gave back to the native API, so that
    /// limits and reserved totals cover it.
    pub(crate) fn graph_reserve(&self, rounded: u64, len: u64, kind: MemoryKind) -> Result<()> {
        let mut global = self.global.lock();
        if let Some(limit) = self.make_room_under_limit(&mut global, rounded) {
            drop(global);
            return Err(self.out_of_memory(len, kind, Some(limit)));
        }
        let g = &mut global.g;
        g.native_allocations += 1;
        g.reserved_bytes += rounded;
        g.reserved_count += 1;
        g.peak_reserved_bytes = g.peak_reserved_bytes.max(g.reserved_bytes);
        Ok(())
    }

    pub(crate) fn graph_unreserve(&self, rounded: u64, freed: bool) {
        let mut global = self.global.lock();
        let g = &mut global.g;
        g.reserved_bytes -= rounded;
        g.reserved_count -= 1;
        if freed {
            g.native_frees += 1;
        }
    }

    /// Lists a new graph pool for the memory report.
    pub(crate) fn register_graph_pool(&self, pool: Weak<GraphPoolInner<N>>) {
        let mut global = self.global.lock();
        global.graph_pools.retain(|w| w.strong_count() > 0);
        global.graph_pools.push(pool);
    }

    /// Runs `f` with the global lock held (the memory report's view of every shard).
    pub(crate) fn with_global<R>(&self, f: impl FnOnce(&GlobalState<N>) -> R) -> R {
        f(&self.global.lock())
    }

    pub(crate) fn note_failed_free(&self) {
        self.failed_frees.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `delta` to the idle total when a cache limit is set; returns whether one is.
    #[inline]
    pub(crate) fn note_idle_change(&self, delta: i64) -> bool {
        let limited = self.cache_limit.load(Ordering::Relaxed) != NO_LIMIT;
        if limited {
            self.idle_bytes.fetch_add(delta, Ordering::Relaxed);
        }
        limited
    }

    #[inline]
    pub(crate) fn enforce_cache_limit(&self) {
        let limit = self.cache_limit.load(Ordering::Relaxed);
        if limit == NO_LIMIT {
            return;
        }
        if self.idle_bytes.load(Ordering::Relaxed) <= limit as i64 {
            return;
        }
        let mut global = self.global.lock();
        // Eviction first moves finished cross-stream blocks into the cache, which can
        // raise the idle total it started from; go again until under the limit.
        loop {
            let idle = self.idle_bytes.load(Ordering::Relaxed).max(0) as u64;
            if idle <= limit || self.evict(&mut global, idle - limit) == 0 {
                break;
            }
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        let mut global = self.global.lock();
        self.sample_live(&mut global, false);
        let mut stats = MemoryStats {
            reserved_bytes: global.g.reserved_bytes,
            reserved_count: global.g.reserved_count,
            peak_reserved_bytes: global.g.peak_reserved_bytes,
            native_allocations: global.g.native_allocations,
            native_frees: global.g.native_frees,
            oom_retries: global.g.oom_retries,
            oom_errors: global.g.oom_errors,
            failed_frees: self.failed_frees.load(Ordering::Relaxed),
            peak_live_bytes: global.g.peak_live_sampled,
            asleep_bytes: self.native.asleep_bytes(),
            ..MemoryStats::default()
        };
        for shard in global.shards.iter().filter_map(Weak::upgrade) {
            let state = shard.state.lock();
            let c = &state.counters;
            stats.live_bytes += c.live_bytes;
            stats.live_count += c.live_count;
            stats.peak_live_bytes = stats.peak_live_bytes.max(c.peak_live_bytes);
            stats.cached_bytes += c.cached_bytes;
            stats.cached_count += c.cached_count;
            stats.pending_count += state.pending.len() as u64;
            stats.cache_hits += c.hits;
            stats.cache_misses += c.misses;
        }
        stats.cache_hits += self.retired_hits.load(Ordering::Relaxed);
        stats.cache_misses += self.retired_misses.load(Ordering::Relaxed);
        stats.peak_live_bytes = stats
            .peak_live_bytes
            .max(self.retired_peak_live.load(Ordering::Relaxed));
        stats
    }

    /// Folds a departing shard's history into the allocator's totals.
    pub(crate) fn retire(&self, hits: u64, misses: u64, peak_live: u64) {
        self.retired_hits.fetch_add(hits, Ordering::Relaxed);
        self.retired_misses.fetch_add(misses, Ordering::Relaxed);
        self.retired_peak_live.fetch_max(peak_live, Ordering::Relaxed);
    }

    fn trace_alloc(&self, len: u64, stream: StreamId) -> u64 {
        let id = self.next_trace_id.fetch_add(1, Ordering::Relaxed);
        if let Some(recorder) = self.trace.lock().as_mut() {
            recorder.record(&TraceEvent::alloc(id - 1, len, stream.0));
        }
        id
    }

    pub(crate) fn trace_free(&self, trace_id: u64, len: u64, stream: StreamId) {
        if let Some(recorder) = self.trace.lock().as_mut() {
            recorder.record(&TraceEvent::free(trace_id - 1, len, stream.0));
        }
    }
}
