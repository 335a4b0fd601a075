//! One stream's share of the caching pool: its free lists, blocks waiting on other
//! streams, and its counters. The hit path locks only this shard, so threads that each
//! allocate on their own stream never contend, and the lock is a `HotLock`
//! biased to the thread that drives the stream, which takes it with no atomic
//! read-modify-write: a hit pair takes none at all. Nothing is parked per thread, so a
//! buffer dropped on another thread, `trim`, limits, eviction and `stats` reach the same
//! one state as before (paying a revocation of the bias when they come from another
//! thread).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) use crate::hot_lock::HotLock as ShardLock;

use super::allocator::PoolShared;
use super::buffer::Buffer;
use super::graph_pool::GraphPool;
use super::native::{Allocator, NativeBlock};
use super::size_class::class_index;
use super::split::{may_serve, splits, PieceId, SplitBlocks, MIN_REMAINDER, WHOLE};
use crate::spare;
use crate::types::{DeviceId, MemoryKind, StreamId};

/// Size classes above the requested one that an idle block may come from.
pub(crate) const NEAR_FIT_STEPS: usize = 8;

/// Free lists indexed by `class_index * 3 + kind`, grown on demand.
pub(crate) struct FreeLists<N: Allocator> {
    lists: Vec<Vec<CachedBlock<N>>>,
    /// A bit per slot, set when a block is pushed there and cleared lazily when the miss
    /// path finds the list empty: lets the miss path find the smallest larger whole block
    /// without walking every list, while the hit path's pop stays untouched.
    maybe_occupied: Vec<u64>,
}

// Not derived: a derive would ask `N: Default`.
impl<N: Allocator> Default for FreeLists<N> {
    fn default() -> Self {
        FreeLists {
            lists: Vec::new(),
            maybe_occupied: Vec::new(),
        }
    }
}

impl<N: Allocator> FreeLists<N> {
    #[inline]
    fn slot(class: usize, kind: MemoryKind) -> usize {
        class * MemoryKind::ALL.len() + kind.index()
    }

    /// The kind of the blocks in `slot`.
    pub(crate) fn kind_of(slot: usize) -> MemoryKind {
        MemoryKind::ALL[slot % MemoryKind::ALL.len()]
    }

    #[inline]
    fn pop(&mut self, class: usize, kind: MemoryKind) -> Option<CachedBlock<N>> {
        self.lists.get_mut(Self::slot(class, kind))?.pop()
    }

    #[inline(always)]
    fn push(&mut self, block: &NativeBlock, returned_at: u64, home: Arc<Shard<N>>) {
        let cached = CachedBlock {
            address: block.address,
            size: block.size,
            native: block.native,
            native_offset: block.native_offset,
            returned_at,
            home,
        };
        let slot = Self::slot(class_index(block.size), block.kind);
        if slot >= self.lists.len() {
            self.grow_to(slot);
        }
        self.lists[slot].push(cached);
        self.maybe_occupied[slot / 64] |= 1 << (slot % 64);
    }

    /// Makes room for `slot`: lists are grown on first use of a class, off the hot path.
    #[cold]
    fn grow_to(&mut self, slot: usize) {
        self.lists.resize_with(slot + 1, Vec::new);
        self.maybe_occupied.resize(slot / 64 + 1, 0);
    }

    /// The smallest class at or above `class` with an idle block of `kind`, and that
    /// block's size (the miss path, looking for a block to split).
    pub(crate) fn smallest_from(&mut self, class: usize, kind: MemoryKind) -> Option<(usize, u64)> {
        let kinds = MemoryKind::ALL.len();
        let mut slot = Self::slot(class, kind);
        while slot < self.lists.len() {
            let word = self.maybe_occupied[slot / 64] >> (slot % 64);
            if word == 0 {
                slot = (slot / 64 + 1) * 64;
                continue;
            }
            slot += word.trailing_zeros() as usize;
            if slot >= self.lists.len() {
                break;
            }
            if slot % kinds == kind.index() {
                match self.lists[slot].last() {
                    Some(cached) => return Some((slot / kinds, cached.size)),
                    None => self.maybe_occupied[slot / 64] &= !(1 << (slot % 64)),
                }
            }
            slot += 1;
        }
        None
    }

    /// Every non-empty list, by slot; each list is ordered by return time, oldest first
    /// (stamps never decrease along a list).
    ///
    /// Walks the occupancy bitmap rather than every list: there are thousands of slots
    /// (every class of every kind) and few hold blocks, and eviction runs this on every
    /// miss that goes over the reserve budget. A non-empty list always has its bit set.
    pub(crate) fn lists(&self) -> impl Iterator<Item = (usize, &Vec<CachedBlock<N>>)> {
        self.maybe_occupied
            .iter()
            .enumerate()
            .flat_map(|(word_index, &word)| {
                let mut bits = word;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(word_index * 64 + bit)
                })
            })
            .filter_map(|slot| self.lists.get(slot).filter(|l| !l.is_empty()).map(|l| (slot, l)))
    }

    /// The blocks of one slot, oldest first.
    pub(crate) fn list(&self, slot: usize) -> &[CachedBlock<N>] {
        self.lists.get(slot).map_or(&[], Vec::as_slice)
    }

    /// Removes the `count` oldest blocks of a slot.
    pub(crate) fn take_oldest(&mut self, slot: usize, count: usize) -> std::vec::Drain<'_, CachedBlock<N>> {
        let list = &mut self.lists[slot];
        let count = count.min(list.len());
        list.drain(..count)
    }

    /// Removes every block, with its reference to the shard.
    pub(crate) fn drain_all(&mut self) -> impl Iterator<Item = (NativeBlock, Arc<Shard<N>>)> + '_ {
        self.lists.iter_mut().enumerate().flat_map(|(slot, l)| {
            let kind = Self::kind_of(slot);
            l.drain(..).map(move |c| (c.block(kind), c.home))
        })
    }
}

/// A block idle in a free list, stamped with the allocator's miss count when it was
/// returned (for release by idle age, oldest first),
/// with the counted reference to its shard that the buffer made from it will hold.
///
/// The block's fields are stored without its kind (the list's slot says it), so the
/// entry has no padding: copying a `NativeBlock`'s padding bytes in and out of the list
/// compiled to partial copies that stalled the hit path on store forwarding.
pub(crate) struct CachedBlock<N: Allocator> {
    address: u64,
    pub(crate) size: u64,
    native: u64,
    native_offset: u64,
    pub(crate) returned_at: u64,
    pub(crate) home: Arc<Shard<N>>,
}

impl<N: Allocator> CachedBlock<N> {
    /// The block, given the kind of the list it is in.
    #[inline]
    pub(crate) fn block(&self, kind: MemoryKind) -> NativeBlock {
        NativeBlock {
            address: self.address,
            size: self.size,
            kind,
            native: self.native,
            native_offset: self.native_offset,
        }
    }
}

/// A block taken from the cache for a new buffer, with the reference to the shard that
/// the buffer will hold.
///
/// Scalars rather than a `NativeBlock`: moving a block's padding bytes through the hit
/// path's return value compiled to partial copies that stalled on store forwarding.
pub(crate) struct Taken<N: Allocator> {
    address: u64,
    size: u64,
    native: u64,
    native_offset: u64,
    kind: MemoryKind,
    pub(crate) piece: PieceId,
    pub(crate) home: Arc<Shard<N>>,
}

impl<N: Allocator> Taken<N> {
    #[inline]
    pub(crate) fn new(block: &NativeBlock, piece: PieceId, home: Arc<Shard<N>>) -> Self {
        Taken {
            address: block.address,
            size: block.size,
            native: block.native,
            native_offset: block.native_offset,
            kind: block.kind,
            piece,
            home,
        }
    }

    /// The block taken.
    #[inline]
    pub(crate) fn block(&self) -> NativeBlock {
        NativeBlock {
            address: self.address,
            size: self.size,
            kind: self.kind,
            native: self.native,
            native_offset: self.native_offset,
        }
    }
}

/// A block freed while other streams may still be using it.
pub(crate) struct PendingBlock<N: Allocator> {
    pub(crate) block: NativeBlock,
    /// Its piece id when it is a piece of a cut native allocation (see [`SplitBlocks`]);
    /// [`WHOLE`] otherwise.
    pub(crate) piece: PieceId,
    /// A marker on each other stream that used it, with that stream's id (the memory
    /// report says which streams a pending block waits on).
    pub(crate) markers: Vec<(StreamId, N::Marker)>,
    /// The returned buffer's reference to the shard, kept for the free list.
    pub(crate) home: Arc<Shard<N>>,
}

#[derive(Default)]
pub(crate) struct ShardCounters {
    pub(crate) live_bytes: u64,
    /// Live bytes in rounded (reserved) sizes, for the miss path's budget.
    pub(crate) live_rounded: u64,
    pub(crate) live_count: u64,
    pub(crate) peak_live_bytes: u64,
    /// Idle bytes, whole blocks and pieces.
    pub(crate) cached_bytes: u64,
    /// Idle blocks, whole blocks and pieces.
    pub(crate) cached_count: u64,
    /// Of `cached_bytes`, those in idle pieces of native allocations that are partly in
    /// use: they cannot be released, so the cache limit does not count them.
    pub(crate) split_idle_bytes: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

pub(crate) struct ShardState<N: Allocator> {
    pub(crate) free: FreeLists<N>,
    /// Pieces of native allocations cut to serve smaller requests.
    pub(crate) split: SplitBlocks,
    /// Set when the stream's cache is dropped: blocks returned afterwards go straight
    /// back to the native API.
    pub(crate) orphaned: bool,
    pub(crate) pending: Vec<PendingBlock<N>>,
    pub(crate) counters: ShardCounters,
    /// The allocator's miss count as this shard last saw it (every miss brings every
    /// shard up to date, under the locks the miss path takes anyway): idle blocks are
    /// stamped with it, so the age of an idle block is the number of misses that have
    /// passed it by. Nothing on the hit path reads a shared counter for it.
    pub(crate) miss_clock: u64,
}

impl<N: Allocator> ShardState<N> {
    /// The state of a new shard: nothing cached, nothing counted.
    pub(crate) fn new() -> Self {
        ShardState {
            free: FreeLists::default(),
            split: SplitBlocks::default(),
            orphaned: false,
            pending: Vec::new(),
            counters: ShardCounters::default(),
            miss_clock: 0,
        }
    }
}

/// The cache of one stream. Owned through `Arc` by the stream and by every buffer
/// allocated on it, so it outlives whichever of them goes last.
///
/// Every idle block holds one of those references too, the one the buffer made from it
/// will hold: the reference moves whole between free list and buffer, so a cache hit
/// and its return move no reference count (two atomic read-modify-writes per pair
/// saved); only a block new to the cache (a miss, a cut piece) clones one. The
/// resulting cycle (idle blocks hold the shard that holds them) is broken by `orphan`
/// when the stream's cache is dropped, and by eviction. The locked state lives in
/// `'static` storage (see `spare.rs`) so that a return can lock it while
/// moving the reference into it.
pub struct Shard<N: Allocator> {
    pub(crate) shared: Arc<PoolShared<N>>,
    pub(crate) stream: N::Stream,
    pub(crate) id: StreamId,
    pub(crate) state: &'static ShardLock<ShardState<N>>,
}

impl<N: Allocator> Shard<N> {
    pub(crate) fn device(&self) -> DeviceId {
        self.shared.native.device()
    }

    /// The hit path: an idle block of this class and kind, or failing that of one of the
    /// next few classes up (wasting at most [`NEAR_FIT_STEPS`] steps of rounding rather
    /// than reserving more memory), or failing that a piece cut from the smallest larger
    /// idle block. Returns it with the block's reference to this shard, which the buffer
    /// will hold (see [`Shard`]).
    #[inline(always)]
    pub(crate) fn take_cached(self: &Arc<Self>, rounded: u64, kind: MemoryKind, len: u64) -> Option<Taken<N>> {
        let class = class_index(rounded);
        let mut state = self.state.lock();
        let mut found = Self::pop_fit(&mut state.free, class, kind);
        if found.is_none() && !state.pending.is_empty() {
            self.poll_pending(&mut state);
            found = Self::pop_fit(&mut state.free, class, kind);
        }
        let Some(found) = found else {
            let (block, piece, home) = self.take_split(&mut state, class, rounded, kind)?;
            let c = &mut state.counters;
            c.hits += 1;
            Self::count_live(c, len, block.size);
            return Some(Taken::new(&block, piece, home));
        };
        let block = found.block(kind);
        let home = found.home;
        let c = &mut state.counters;
        c.hits += 1;
        c.cached_bytes -= block.size;
        c.cached_count -= 1;
        Self::count_live(c, len, block.size);
        drop(state);
        self.shared.note_idle_change(-(block.size as i64));
        Some(Taken::new(&block, WHOLE, home))
    }

    /// The split path (no idle block of the class or the few above it): the smallest
    /// idle piece or whole block of `kind` larger than the request, cut to `rounded`
    /// bytes when the rest is worth keeping. Adjusts the cached counters.
    #[cold]
    fn take_split(
        self: &Arc<Self>,
        state: &mut ShardState<N>,
        class: usize,
        rounded: u64,
        kind: MemoryKind,
    ) -> Option<(NativeBlock, PieceId, Arc<Shard<N>>)> {
        if !splits(kind) {
            return None;
        }
        let piece = state.split.best_fit(kind, rounded);
        // Classes up to `class + NEAR_FIT_STEPS` were just found empty of whole blocks,
        // so a piece from those classes is smaller than any whole block: no need to look.
        let whole = match piece {
            Some(fit) if fit.class <= class + NEAR_FIT_STEPS => None,
            _ => state.free.smallest_from(class + NEAR_FIT_STEPS + 1, kind),
        };
        let c = &mut state.counters;
        // A block no larger than what the native API would be asked for anyway (a source
        // that allocates in chunks) always serves: refusing it would only make another.
        let native = self.shared.native.native_size(rounded, kind);
        let serves = |size: u64| size <= native || may_serve(size, rounded);
        let whole = whole.filter(|&(_, size)| serves(size));
        let piece = piece.filter(|fit| serves(fit.size));
        let (block, id, home) = match (whole, piece) {
            // Best fit: the smaller of the two candidates (a piece when they tie, so that
            // whole blocks stay whole).
            (Some((whole_class, whole_size)), piece) if piece.is_none_or(|p| whole_size < p.size) => {
                let found = state.free.pop(whole_class, kind)?;
                let block = found.block(kind);
                let home = found.home;
                c.cached_bytes -= block.size;
                c.cached_count -= 1;
                self.shared.note_idle_change(-(block.size as i64));
                (block, WHOLE, home)
            }
            (_, Some(fit)) => {
                let (id, block) = state.split.take_fit(kind, fit.class)?;
                c.cached_bytes -= block.size;
                c.cached_count -= 1;
                c.split_idle_bytes -= block.size;
                // Idle pieces hold no reference: the buffer needs a new one.
                (block, id, self.clone())
            }
            (_, None) => return None,
        };
        if block.size < rounded + MIN_REMAINDER {
            // Too little would be left over: hand out the block as it is.
            return Some((block, id, home));
        }
        let (id, handed) = state.split.carve(block, id, rounded);
        let rest = block.size - rounded;
        c.cached_bytes += rest;
        c.cached_count += 1;
        c.split_idle_bytes += rest;
        Some((handed, id, home))
    }

    #[inline(always)]
    fn pop_fit(free: &mut FreeLists<N>, class: usize, kind: MemoryKind) -> Option<CachedBlock<N>> {
        (class..=class + NEAR_FIT_STEPS).find_map(|c| free.pop(c, kind))
    }

    /// Hands out a block just obtained from the native API for a request of `rounded`
    /// bytes. A block larger than that (a source that allocates in chunks, see
    /// [`Allocator::native_size`]) is cut, and the rest stays idle as a piece.
    #[cold]
    pub(crate) fn take_fresh(self: &Arc<Self>, block: NativeBlock, rounded: u64, len: u64) -> Taken<N> {
        let mut state = self.state.lock();
        state.counters.misses += 1;
        if !splits(block.kind) || block.size < rounded + MIN_REMAINDER {
            Self::count_live(&mut state.counters, len, block.size);
            return Taken::new(&block, WHOLE, self.clone());
        }
        let (id, handed) = state.split.carve(block, WHOLE, rounded);
        let rest = block.size - rounded;
        let c = &mut state.counters;
        c.cached_bytes += rest;
        c.cached_count += 1;
        c.split_idle_bytes += rest;
        Self::count_live(c, len, handed.size);
        Taken::new(&handed, id, self.clone())
    }

    fn count_live(c: &mut ShardCounters, len: u64, rounded: u64) {
        c.live_bytes += len;
        c.live_rounded += rounded;
        c.live_count += 1;
        c.peak_live_bytes = c.peak_live_bytes.max(c.live_bytes);
    }

    /// A buffer was dropped: back to the free list, or to the pending list when other
    /// streams used it. `self` is the buffer's reference to the shard, which moves into
    /// the free or pending list with the block (or is dropped when the block goes
    /// elsewhere).
    pub(crate) fn give_back(
        self: Arc<Self>,
        block: &NativeBlock,
        piece: PieceId,
        len: u64,
        uses: Vec<Arc<Shard<N>>>,
        trace_id: u64,
    ) {
        if N::CHECKS_LIFETIMES {
            self.shared.native.on_returned(block, self.id);
        }
        if trace_id != 0 {
            self.shared.trace_free(trace_id, len, self.id);
        }
        let markers = self.record_markers(&uses);
        // Copied out of the shard: `self` may move into the list behind this lock.
        let lock = self.state;
        let mut state = lock.lock();
        let c = &mut state.counters;
        c.live_bytes -= len;
        c.live_rounded -= block.size;
        c.live_count -= 1;
        if state.orphaned {
            drop(state);
            self.release_orphaned(*block, piece, markers);
            return;
        }
        // The common case reads the block where the buffer has it; the others copy it.
        let merged;
        let whole = match markers {
            None if piece == WHOLE => block,
            None => match self.return_piece(&mut state, *block, piece) {
                Some(whole) => {
                    merged = whole;
                    &merged
                }
                None => return,
            },
            Some(markers) => {
                state.pending.push(PendingBlock {
                    block: *block,
                    piece,
                    markers,
                    home: self,
                });
                return;
            }
        };
        // Idle bytes are counted under the shard lock (as `set_cache_limit` recounts
        // them); the limit is enforced after unlocking, through a reference of its own
        // taken only when a limit is set, since `self` moves into the free list.
        let enforce = self
            .shared
            .note_idle_change(whole.size as i64)
            .then(|| self.shared.clone());
        Self::push_free(&mut state, whole, self);
        drop(state);
        if let Some(shared) = enforce {
            shared.enforce_cache_limit();
        }
    }

    /// Puts a piece back into its segment, merging it with idle neighbours. Returns the
    /// whole native allocation when that made it wholly idle; it is then out of the
    /// split structure and not counted as cached, for the caller to cache or free.
    fn return_piece(&self, state: &mut ShardState<N>, piece: NativeBlock, id: PieceId) -> Option<NativeBlock> {
        let Some(returned) = state.split.give_back(id) else {
            // Not a piece of any segment here: cannot happen, but if it did the memory is
            // lost to the cache rather than handed out twice.
            self.shared.note_failed_free();
            return None;
        };
        let c = &mut state.counters;
        c.cached_bytes += piece.size;
        c.split_idle_bytes += piece.size;
        c.cached_count = c.cached_count + 1 - returned.merged;
        let whole = returned.whole?;
        c.cached_bytes -= whole.size;
        c.split_idle_bytes -= whole.size;
        c.cached_count -= 1;
        Some(whole)
    }

    /// Frees a block returned after the stream's cache was dropped, ordered after the
    /// other streams' uses.
    /// A piece goes back into its segment, and the native allocation is freed once the
    /// segment is wholly idle (the waits on the stream order that free after every piece's
    /// uses).
    fn release_orphaned(&self, block: NativeBlock, piece: PieceId, markers: Option<Vec<(StreamId, N::Marker)>>) {
        let ordered = markers.is_none_or(|markers| {
            !markers.is_empty()
                && markers
                    .iter()
                    .all(|(_, m)| self.shared.native.wait_marker(&self.stream, m).is_ok())
        });
        if !ordered {
            self.shared.note_failed_free();
            return;
        }
        let whole = if piece != WHOLE {
            let mut state = self.state.lock();
            self.return_piece(&mut state, block, piece)
        } else {
            Some(block)
        };
        if let Some(whole) = whole {
            self.shared.release_blocks(&[whole], Some(&self.stream));
        }
    }

    /// Records a marker on every other stream that used the block. `None` when no other
    /// stream did. A marker that cannot be recorded leaves the block pending forever
    /// rather than risk handing out memory another stream may still write.
    fn record_markers(&self, uses: &[Arc<Shard<N>>]) -> Option<Vec<(StreamId, N::Marker)>> {
        if uses.is_empty() {
            return None;
        }
        let mut markers = Vec::with_capacity(uses.len());
        for shard in uses {
            match self.shared.native.record_marker(&shard.stream) {
                Ok(marker) => markers.push((shard.id, marker)),
                Err(_) => {
                    self.shared.note_failed_free();
                    return Some(Vec::new());
                }
            }
        }
        Some(markers)
    }

    #[inline(always)]
    pub(crate) fn push_free(state: &mut ShardState<N>, block: &NativeBlock, home: Arc<Shard<N>>) {
        let returned_at = state.miss_clock;
        state.free.push(block, returned_at, home);
        state.counters.cached_bytes += block.size;
        state.counters.cached_count += 1;
    }

    /// Moves pending blocks whose markers have all completed into the free lists.
    pub(crate) fn poll_pending(self: &Arc<Self>, state: &mut ShardState<N>) {
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
                    .all(|(_, m)| native.is_marker_complete(m).unwrap_or(false));
            if done {
                let pending = state.pending.swap_remove(index);
                let whole = if pending.piece != WHOLE {
                    self.return_piece(state, pending.block, pending.piece)
                } else {
                    Some(pending.block)
                };
                // When the piece stays in its segment, its reference is dropped here,
                // under the lock: never the last, as the caller holds one.
                if let Some(whole) = whole {
                    released += whole.size as i64;
                    Self::push_free(state, &whole, pending.home);
                }
            } else {
                index += 1;
            }
        }
        if released != 0 {
            self.shared.note_idle_change(released);
        }
    }

    /// Releases everything idle or pending and marks the shard orphaned (the stream's
    /// cache is gone, so nothing can reuse its blocks); buffers still live are freed when
    /// they are dropped.
    fn orphan(&self) {
        let mut state = self.state.lock();
        state.orphaned = true;
        // Dropping these breaks the cycle of idle blocks holding their shard; done after
        // unlocking, and never the last reference, since the stream's cache holds one.
        let cached: Vec<(NativeBlock, Arc<Shard<N>>)> = state.free.drain_all().collect();
        let pending: Vec<PendingBlock<N>> = state.pending.drain(..).collect();
        let idle: u64 = cached.iter().map(|(block, _)| block.size).sum();
        // Idle pieces stay: their native allocations are freed when the last live piece
        // of each comes back.
        state.counters.cached_bytes -= idle;
        state.counters.cached_count -= cached.len() as u64;
        drop(state);
        let blocks: Vec<NativeBlock> = cached.iter().map(|&(block, _)| block).collect();
        self.shared.note_idle_change(-(idle as i64));
        self.shared.release_blocks(&blocks, Some(&self.stream));
        for p in pending {
            self.release_orphaned(p.block, p.piece, Some(p.markers));
        }
    }
}

impl<N: Allocator> Drop for Shard<N> {
    fn drop(&mut self) {
        let old = {
            let mut state = self.state.lock();
            let c = &state.counters;
            self.shared.retire(c.hits, c.misses, c.peak_live_bytes);
            std::mem::replace(&mut *state, ShardState::new())
        };
        // Every idle or pending block held a reference to this shard, so none is left in
        // `old`; it is dropped before the state is handed on.
        drop(old);
        spare::give(self.state);
    }
}

/// What a backend's stream embeds to allocate through the caching pool: its shard, and
/// the graph pool that serves allocations while the stream is capturing.
pub struct StreamCache<N: Allocator> {
    base: Arc<Shard<N>>,
    capturing: AtomicBool,
    capture_pool: Mutex<Option<GraphPool<N>>>,
}

impl<N: Allocator> StreamCache<N> {
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

impl<N: Allocator> Drop for StreamCache<N> {
    fn drop(&mut self) {
        self.base.orphan();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::pool::{CachingAllocator, CountingMemory, CountingStream, PoolConfig};
    use crate::types::{MemoryKind, StreamId};

    /// Idle blocks hold their shard (the reference a hit hands to the buffer); dropping
    /// the stream's cache must break that cycle, and a buffer still live must keep the
    /// shard until it returns.
    #[test]
    fn a_shard_goes_with_its_stream_and_last_buffer_despite_idle_blocks_holding_it() {
        let allocator = CachingAllocator::new(CountingMemory::new(1 << 40));
        let cache = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        let shard = Arc::downgrade(cache.base());
        drop(cache.allocate(512, MemoryKind::Device));
        let hit = cache.allocate(512, MemoryKind::Device);
        drop(cache.allocate(4096, MemoryKind::Device));
        // One idle block (4 KiB) and one live buffer, each holding the shard.
        assert_eq!(Arc::strong_count(cache.base()), 3);
        drop(cache);
        assert!(shard.upgrade().is_some(), "a live buffer keeps its shard");
        drop(hit);
        assert!(shard.upgrade().is_none(), "the shard outlived its stream and buffers");
        let stats = allocator.stats();
        assert_eq!(stats.reserved_bytes, 0);
        assert_eq!(stats.cache_hits, 1);
        assert_eq!(stats.cache_misses, 2);
    }

    /// Eviction drops the idle blocks' references; the shard stays for its stream.
    #[test]
    fn trim_releases_the_references_idle_blocks_held() {
        // No reserve budget: the misses below must not release the blocks idle before.
        let config = PoolConfig {
            reserve_slack: f64::INFINITY,
            ..PoolConfig::default()
        };
        let allocator = CachingAllocator::with_config(CountingMemory::new(1 << 40), config);
        let cache = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        for size in [512, 4096, 1 << 20] {
            drop(cache.allocate(size, MemoryKind::Device));
        }
        assert_eq!(Arc::strong_count(cache.base()), 4);
        assert!(allocator.trim() > 0);
        assert_eq!(Arc::strong_count(cache.base()), 1);
        drop(cache.allocate(512, MemoryKind::Device));
        assert_eq!(allocator.stats().cache_misses, 4);
    }
}
