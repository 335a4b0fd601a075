//! One stream's share of the caching pool: its free lists, blocks waiting on other
//! streams, and its counters. The hit path locks only this shard, so threads that each
//! allocate on their own stream never contend.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::allocator::PoolShared;
use super::buffer::Buffer;
use super::graph_pool::GraphPool;
use super::native::{NativeBlock, NativeMemory};
use super::size_class::rounded_size;
use crate::types::{DeviceId, MemoryKind, StreamId};

/// Size classes above the requested one that an idle block may come from.
pub(crate) const NEAR_FIT_STEPS: usize = 8;

/// Free-list key: rounded size and kind packed into one integer.
pub(crate) fn free_key(rounded: u64, kind: MemoryKind) -> u64 {
    (rounded << 2) | kind.index() as u64
}

/// Keys are already well spread (sizes), so a multiplicative hash is enough and costs a
/// fraction of SipHash on the hit path.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

pub(crate) type FreeLists = HashMap<u64, Vec<CachedBlock>, BuildHasherDefault<KeyHasher>>;

/// A block idle in a free list, stamped with when it was returned (for LRU release).
pub(crate) struct CachedBlock {
    pub(crate) block: NativeBlock,
    pub(crate) returned_at: u64,
}

/// A block freed while other streams may still be using it.
pub(crate) struct PendingBlock<N: NativeMemory> {
    pub(crate) block: NativeBlock,
    pub(crate) markers: Vec<N::Marker>,
}

#[derive(Default)]
pub(crate) struct ShardCounters {
    pub(crate) live_bytes: u64,
    pub(crate) live_count: u64,
    pub(crate) peak_live_bytes: u64,
    pub(crate) cached_bytes: u64,
    pub(crate) cached_count: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

pub(crate) struct ShardState<N: NativeMemory> {
    pub(crate) free: FreeLists,
    pub(crate) pending: Vec<PendingBlock<N>>,
    pub(crate) counters: ShardCounters,
    pub(crate) clock: u64,
}

/// The cache of one stream. Owned through `Arc` by the stream and by every buffer
/// allocated on it, so it outlives whichever of them goes last.
pub struct Shard<N: NativeMemory> {
    pub(crate) shared: Arc<PoolShared<N>>,
    pub(crate) stream: N::Stream,
    pub(crate) id: StreamId,
    pub(crate) state: Mutex<ShardState<N>>,
    /// Rounded live bytes, readable without the lock by the miss path's budget check.
    pub(crate) live_rounded: AtomicU64,
}

impl<N: NativeMemory> Shard<N> {
    pub(crate) fn device(&self) -> DeviceId {
        self.shared.native.device()
    }

    /// The hit path: an idle block of this class and kind, or failing that of one of the
    /// next few classes up (wasting at most [`NEAR_FIT_STEPS`] steps of rounding rather
    /// than reserving more memory).
    #[inline]
    pub(crate) fn take_cached(&self, rounded: u64, kind: MemoryKind, len: u64) -> Option<NativeBlock> {
        let mut state = self.state.lock();
        let mut found = Self::pop_fit(&mut state, rounded, kind);
        if found.is_none() && !state.pending.is_empty() {
            self.poll_pending(&mut state);
            found = Self::pop_fit(&mut state, rounded, kind);
        }
        let block = found?.block;
        let c = &mut state.counters;
        c.hits += 1;
        c.cached_bytes -= block.size;
        c.cached_count -= 1;
        Self::count_live(c, len, 1);
        self.live_rounded.fetch_add(block.size, Ordering::Relaxed);
        drop(state);
        self.shared.note_idle_change(-(block.size as i64));
        Some(block)
    }

    #[inline]
    fn pop_fit(state: &mut ShardState<N>, rounded: u64, kind: MemoryKind) -> Option<CachedBlock> {
        if let Some(block) = state.free.get_mut(&free_key(rounded, kind)).and_then(Vec::pop) {
            return Some(block);
        }
        let mut class = rounded;
        for _ in 0..NEAR_FIT_STEPS {
            class = rounded_size(class + 1);
            if let Some(block) = state.free.get_mut(&free_key(class, kind)).and_then(Vec::pop) {
                return Some(block);
            }
        }
        None
    }

    /// Accounts a block just obtained from the native API.
    pub(crate) fn note_miss(&self, rounded: u64, len: u64) {
        let mut state = self.state.lock();
        state.counters.misses += 1;
        Self::count_live(&mut state.counters, len, 1);
        self.live_rounded.fetch_add(rounded, Ordering::Relaxed);
    }

    fn count_live(c: &mut ShardCounters, len: u64, count: u64) {
        c.live_bytes += len;
        c.live_count += count;
        c.peak_live_bytes = c.peak_live_bytes.max(c.live_bytes);
    }

    /// A buffer was dropped: back to the free list, or to the pending list when other
    /// streams used it.
    pub(crate) fn give_back(&self, block: NativeBlock, len: u64, uses: Vec<Arc<Shard<N>>>, trace_id: u64) {
        if N::CHECKS_LIFETIMES {
            self.shared.native.on_returned(&block, self.id);
        }
        if trace_id != 0 {
            self.shared.trace_free(trace_id, len, self.id);
        }
        let markers = self.record_markers(&uses);
        let mut state = self.state.lock();
        state.counters.live_bytes -= len;
        state.counters.live_count -= 1;
        self.live_rounded.fetch_sub(block.size, Ordering::Relaxed);
        match markers {
            None => {
                Self::push_free(&mut state, block);
                drop(state);
                self.shared.note_idle_change(block.size as i64);
                self.shared.enforce_cache_limit();
            }
            Some(markers) => state.pending.push(PendingBlock { block, markers }),
        }
    }

    /// Records a marker on every other stream that used the block. `None` when no other
    /// stream did. A marker that cannot be recorded leaves the block pending forever
    /// rather than risk handing out memory another stream may still write.
    fn record_markers(&self, uses: &[Arc<Shard<N>>]) -> Option<Vec<N::Marker>> {
        if uses.is_empty() {
            return None;
        }
        let mut markers = Vec::with_capacity(uses.len());
        for shard in uses {
            match self.shared.native.record_marker(&shard.stream) {
                Ok(marker) => markers.push(marker),
                Err(_) => {
                    self.shared.note_failed_free();
                    return Some(Vec::new());
                }
            }
        }
        Some(markers)
    }

    pub(crate) fn push_free(state: &mut ShardState<N>, block: NativeBlock) {
        state.clock += 1;
        let returned_at = state.clock;
        state
            .free
            .entry(free_key(block.size, block.kind))
            .or_default()
            .push(CachedBlock { block, returned_at });
        state.counters.cached_bytes += block.size;
        state.counters.cached_count += 1;
    }

    /// Moves pending blocks whose markers have all completed into the free lists.
    pub(crate) fn poll_pending(&self, state: &mut ShardState<N>) {
        let native = &self.shared.native;
        let mut released = 0i64;
        let mut index = 0;
        while index < state.pending.len() {
            let pending = &state.pending[index];
            // A block with no markers lost one to a native error: it stays held.
            let done = !pending.markers.is_empty()
                && pending
                    .markers
                    .iter()
                    .all(|m| native.is_marker_complete(m).unwrap_or(false));
            if done {
                let pending = state.pending.swap_remove(index);
                released += pending.block.size as i64;
                Self::push_free(state, pending.block);
            } else {
                index += 1;
            }
        }
        if released != 0 {
            self.shared.note_idle_change(released);
        }
    }
}

impl<N: NativeMemory> Drop for Shard<N> {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        let mut blocks: Vec<NativeBlock> = state.free.drain().flat_map(|(_, v)| v).map(|c| c.block).collect();
        let idle: u64 = blocks.iter().map(|b| b.size).sum();
        for pending in state.pending.drain(..) {
            // Order the free after the other streams' last uses, on the device.
            let ordered = !pending.markers.is_empty()
                && pending
                    .markers
                    .iter()
                    .all(|m| self.shared.native.wait_marker(&self.stream, m).is_ok());
            if ordered {
                blocks.push(pending.block);
            } else {
                self.shared.note_failed_free();
            }
        }
        self.shared.note_idle_change(-(idle as i64));
        self.shared.release_blocks(&blocks, Some(&self.stream));
    }
}

/// What a backend's stream embeds to allocate through the caching pool: its shard, and
/// the graph pool that serves allocations while the stream is capturing.
pub struct StreamCache<N: NativeMemory> {
    base: Arc<Shard<N>>,
    capturing: AtomicBool,
    capture_pool: Mutex<Option<GraphPool<N>>>,
}

impl<N: NativeMemory> StreamCache<N> {
    pub(crate) fn new(base: Arc<Shard<N>>) -> Self {
        StreamCache {
            base,
            capturing: AtomicBool::new(false),
            capture_pool: Mutex::new(None),
        }
    }

    pub(crate) fn base(&self) -> &Arc<Shard<N>> {
        &self.base
    }

    /// The stream's id.
    pub fn stream_id(&self) -> StreamId {
        self.base.id
    }

    /// The device whose allocator this cache belongs to.
    pub fn device(&self) -> DeviceId {
        self.base.device()
    }

    /// The native stream handle the pool orders frees on.
    pub fn native_stream(&self) -> &N::Stream {
        &self.base.stream
    }

    /// Routes allocations to `pool` until [`end_capture`](Self::end_capture). Backends call
    /// this when their stream begins capturing.
    pub fn begin_capture(&self, pool: GraphPool<N>) {
        *self.capture_pool.lock() = Some(pool);
        self.capturing.store(true, Ordering::Release);
    }

    /// Routes allocations back to the stream's own cache; returns the graph pool used.
    pub fn end_capture(&self) -> Option<GraphPool<N>> {
        self.capturing.store(false, Ordering::Release);
        self.capture_pool.lock().take()
    }

    /// The graph pool serving allocations now, if the stream is capturing.
    pub fn capture_pool(&self) -> Option<GraphPool<N>> {
        if self.capturing.load(Ordering::Acquire) {
            self.capture_pool.lock().clone()
        } else {
            None
        }
    }

    /// Allocates `len` bytes of `kind` on this stream: shorthand for the allocator's
    /// [`allocate`](super::CachingAllocator::allocate).
    pub fn allocate(&self, len: u64, kind: MemoryKind) -> crate::Result<Buffer<N>> {
        PoolShared::allocate(&self.base.shared, len, kind, self)
    }
}
