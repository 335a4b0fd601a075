//! The graph pool: memory for allocations made while a stream captures a graph.
//!
//! Several captures given the same pool share its memory: a capture carves its buffers
//! out of free ranges left by earlier captures (best fit, splitting and coalescing inside
//! native segments), so K captures of different batch sizes need about as much as the
//! largest one when the largest is captured first, as frameworks do. Memory a capture
//! used is never returned to the native API while the pool lives, because replaying
//! that capture still touches it; graph execs keep their pool alive. Graphs that share a
//! pool must be replayed in one stream order, so their uses of shared ranges never
//! overlap.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::allocator::{CachingAllocator, PoolShared};
use super::buffer::{Buffer, Owner};
use super::native::{Allocator, NativeBlock};
use super::report::GraphPoolView;
use super::size_class::rounded_size;
use crate::error::Result;
use crate::stats::MemoryStats;
use crate::types::{DeviceId, MemoryKind, StreamId};

/// Allocations smaller than this are rounded to it inside segments; keeps every address
/// 512-byte aligned.
const GRANULE: u64 = 512;

struct Segment {
    block: NativeBlock,
    /// offset → length of each free range, coalesced.
    free: BTreeMap<u64, u64>,
}

#[derive(Default)]
struct GraphPoolState {
    segments: Vec<Segment>,
    live_bytes: u64,
    live_count: u64,
    peak_live_bytes: u64,
    used_bytes: u64,
    allocations: u64,
}

pub(crate) struct GraphPoolInner<N: Allocator> {
    shared: Arc<PoolShared<N>>,
    state: Mutex<GraphPoolState>,
}

/// A memory pool for graph captures; cheap to clone (shared handle).
///
/// ```ignore
/// let pool = device.graph_pool();
/// for batch in (1..=8).rev() {        // largest first
///     stream.begin_capture(&pool)?;
///     /* enqueue the batch's work; allocations come from `pool` */
///     graphs.push(stream.end_capture()?);
/// }
/// assert!(pool.stats().reserved_bytes <= largest * 105 / 100);
/// ```
pub struct GraphPool<N: Allocator> {
    inner: Arc<GraphPoolInner<N>>,
}

impl<N: Allocator> Clone for GraphPool<N> {
    fn clone(&self) -> Self {
        GraphPool {
            inner: self.inner.clone(),
        }
    }
}

impl<N: Allocator> std::fmt::Debug for GraphPool<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphPool").field("stats", &self.stats()).finish()
    }
}

impl<N: Allocator> GraphPool<N> {
    /// A new, empty pool drawing on `allocator`'s native memory (and counted against its
    /// memory limit).
    pub fn new(allocator: &CachingAllocator<N>) -> Self {
        let inner = Arc::new(GraphPoolInner {
            shared: allocator.shared().clone(),
            state: Mutex::new(GraphPoolState::default()),
        });
        allocator.shared().register_graph_pool(Arc::downgrade(&inner));
        GraphPool { inner }
    }

    /// True when both handles name the same pool.
    pub fn same_pool(&self, other: &GraphPool<N>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The device this pool belongs to.
    pub fn device(&self) -> DeviceId {
        self.inner.device()
    }

    /// `reserved_bytes`: native memory held by the pool; `live_bytes`: buffers still held
    /// by the caller (outputs); `peak_live_bytes`: the most bytes any point of the
    /// captures held at once.
    pub fn stats(&self) -> MemoryStats {
        let state = self.inner.state.lock();
        let reserved: u64 = state.segments.iter().map(|s| s.block.size).sum();
        MemoryStats {
            live_bytes: state.live_bytes,
            live_count: state.live_count,
            peak_live_bytes: state.peak_live_bytes,
            reserved_bytes: reserved,
            reserved_count: state.segments.len() as u64,
            peak_reserved_bytes: reserved,
            cached_bytes: reserved - state.used_bytes,
            native_allocations: state.segments.len() as u64,
            cache_hits: state.allocations - state.segments.len() as u64,
            cache_misses: state.segments.len() as u64,
            ..MemoryStats::default()
        }
    }

    pub(crate) fn allocate(&self, len: u64, kind: MemoryKind, stream: StreamId) -> Result<Buffer<N>> {
        let inner = &self.inner;
        let size = len.div_ceil(GRANULE) * GRANULE;
        let mut state = inner.state.lock();
        let block = match Self::best_fit(&mut state, size, kind) {
            Some(block) => block,
            None => {
                let rounded = rounded_size(len);
                inner.shared.graph_reserve(rounded, len, kind)?;
                let _span = tracing::debug_span!("graph_pool_allocate", size = rounded, kind = ?kind).entered();
                let segment = match inner.shared.native.allocate(rounded, kind, None) {
                    Ok(segment) => segment,
                    Err(err) => {
                        inner.shared.graph_unreserve(rounded, false);
                        return Err(err);
                    }
                };
                let mut free = BTreeMap::new();
                free.insert(0, segment.size);
                state.segments.push(Segment { block: segment, free });
                Self::best_fit(&mut state, size, kind)
                    .ok_or_else(|| crate::Error::invalid("graph pool", "native segment smaller than requested"))?
            }
        };
        state.allocations += 1;
        state.used_bytes += block.size;
        state.live_bytes += len;
        state.live_count += 1;
        state.peak_live_bytes = state.peak_live_bytes.max(state.live_bytes);
        drop(state);
        if N::CHECKS_LIFETIMES {
            inner.shared.native.on_handed_out(&block, len, stream);
        }
        Ok(Buffer {
            owner: Owner::Graph(inner.clone()),
            block,
            piece: super::split::WHOLE,
            len,
            uses: Mutex::new(Vec::new()),
            trace_id: 0,
        })
    }

    /// Carves `size` bytes from the smallest free range that holds them.
    fn best_fit(state: &mut GraphPoolState, size: u64, kind: MemoryKind) -> Option<NativeBlock> {
        let mut best: Option<(u64, usize, u64)> = None; // (range len, segment, offset)
        for (index, segment) in state.segments.iter().enumerate() {
            if segment.block.kind != kind {
                continue;
            }
            for (&offset, &range) in &segment.free {
                if range >= size && best.is_none_or(|(len, _, _)| range < len) {
                    best = Some((range, index, offset));
                }
            }
        }
        let (range, index, offset) = best?;
        let segment = &mut state.segments[index];
        segment.free.remove(&offset);
        if range > size {
            segment.free.insert(offset + size, range - size);
        }
        Some(NativeBlock {
            address: segment.block.address + offset,
            size,
            kind,
            native: segment.block.native,
            native_offset: segment.block.native_offset + offset,
        })
    }
}

impl<N: Allocator> GraphPoolInner<N> {
    pub(crate) fn device(&self) -> DeviceId {
        self.shared.native.device()
    }

    /// The pool's segments and free ranges now, for the memory report.
    pub(crate) fn view(&self) -> GraphPoolView {
        let state = self.state.lock();
        GraphPoolView {
            segments: state
                .segments
                .iter()
                .map(|s| (s.block, s.free.iter().map(|(&offset, &len)| (offset, len)).collect()))
                .collect(),
            live_bytes: state.live_bytes,
            live_count: state.live_count,
            peak_live_bytes: state.peak_live_bytes,
        }
    }

    /// Returns a range to its segment, coalescing with free neighbours.
    pub(crate) fn give_back(&self, block: NativeBlock, len: u64) {
        if N::CHECKS_LIFETIMES {
            self.shared.native.on_returned(&block, StreamId(0));
        }
        let mut state = self.state.lock();
        state.used_bytes -= block.size;
        state.live_bytes -= len;
        state.live_count -= 1;
        let Some(segment) = state.segments.iter_mut().find(|s| {
            s.block.native == block.native
                && block.address >= s.block.address
                && block.address < s.block.address + s.block.size
        }) else {
            return;
        };
        let mut offset = block.address - segment.block.address;
        let mut size = block.size;
        if let Some((&next, &next_len)) = segment.free.range(offset + size..).next() {
            if next == offset + size {
                segment.free.remove(&next);
                size += next_len;
            }
        }
        if let Some((&prev, &prev_len)) = segment.free.range(..offset).next_back() {
            if prev + prev_len == offset {
                segment.free.remove(&prev);
                offset = prev;
                size += prev_len;
            }
        }
        segment.free.insert(offset, size);
    }
}

impl<N: Allocator> Drop for GraphPoolInner<N> {
    fn drop(&mut self) {
        for segment in self.state.get_mut().segments.drain(..) {
            let freed = self.shared.native.free(segment.block, None).is_ok();
            if !freed {
                self.shared.note_failed_free();
            }
            self.shared.graph_unreserve(segment.block.size, freed);
        }
    }
}
