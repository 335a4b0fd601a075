//! Reading the pool for the memory report ([`crate::report`]).
//!
//! The allocator's registry of native allocations is fixed while its global lock is held
//! (only the miss and release paths change it, under that lock), and each stream cache
//! is read under its own lock, one at a time, for as long as it takes to copy its free
//! lists, pending blocks and pieces: a block never changes caches, so each cache's copy
//! is consistent with the registry. Everything else is built after the locks are gone.
//! The hit path is not touched: it neither knows nor pays for the report.

use std::sync::{Arc, Weak};

use rustc_hash::FxHashMap;

use super::allocator::CachingAllocator;
use super::native::{Allocator, NativeBlock};
use super::split::WHOLE;
use super::stream_cache::{FreeLists, Shard};
use crate::report::{
    GraphPoolReport, KindTotals, MemoryReport, NativeAllocation, Owner, Piece, PieceState, StreamTotals,
};
use crate::types::{MemoryKind, StreamId};

/// A graph pool's state as copied under its lock.
pub(crate) struct GraphPoolView {
    /// Each segment with its free ranges (offset, length), in offset order.
    pub(crate) segments: Vec<(NativeBlock, Vec<(u64, u64)>)>,
    pub(crate) live_bytes: u64,
    pub(crate) live_count: u64,
    pub(crate) peak_live_bytes: u64,
}

/// One stream cache as copied under its lock.
struct ShardView {
    stream: StreamId,
    orphaned: bool,
    live_bytes: u64,
    live_count: u64,
    hits: u64,
    misses: u64,
    /// Addresses of wholly idle native allocations in its free lists.
    idle_whole: Vec<u64>,
    /// Each pending block's address, whether it is a piece of a cut allocation, and the
    /// streams it waits on.
    pending: Vec<(u64, bool, Vec<u64>)>,
    /// Each cut native allocation's address with its pieces and whether each is idle.
    segments: Vec<(u64, Vec<(NativeBlock, bool)>)>,
}

impl<N: Allocator> CachingAllocator<N> {
    /// What holds this allocator's memory now: every native allocation with its pieces,
    /// per-stream and per-kind totals and the graph pools (see [`crate::report`]).
    ///
    /// Holds the allocator's global lock only to copy the list of native allocations and
    /// to collect the stream caches and graph pools, then each stream cache's lock in turn
    /// while it copies that cache, so allocations on other streams go on meanwhile; the
    /// cache-hit path is untouched. Under concurrent allocation the parts are copied at
    /// slightly different moments; every figure is exact when nothing is in flight.
    pub fn report(&self) -> MemoryReport {
        let stats = self.stats();
        let (natives, shards, pools) = self.shared().with_global(|global| {
            let natives: Vec<(NativeBlock, StreamId)> = global.natives.values().copied().collect();
            let shards: Vec<Arc<Shard<N>>> = global.shards.iter().filter_map(Weak::upgrade).collect();
            let pools: Vec<Arc<_>> = global.graph_pools.iter().filter_map(Weak::upgrade).collect();
            (natives, shards, pools)
        });
        let shards: Vec<ShardView> = shards
            .iter()
            .map(|shard| {
                let state = shard.state.lock();
                let c = &state.counters;
                ShardView {
                    stream: shard.id,
                    orphaned: state.orphaned,
                    live_bytes: c.live_bytes,
                    live_count: c.live_count,
                    hits: c.hits,
                    misses: c.misses,
                    idle_whole: state
                        .free
                        .lists()
                        .flat_map(|(slot, list)| {
                            let kind = FreeLists::<N>::kind_of(slot);
                            list.iter().map(move |cached| cached.block(kind).address)
                        })
                        .collect(),
                    pending: state
                        .pending
                        .iter()
                        .map(|p| {
                            let streams = p.markers.iter().map(|(id, _)| id.0).collect();
                            (p.block.address, p.piece != WHOLE, streams)
                        })
                        .collect(),
                    segments: state
                        .split
                        .segments()
                        .map(|(whole, pieces)| (whole.address, pieces))
                        .collect(),
                }
            })
            .collect();
        // Graph pools take the global lock under their own (to reserve), so they are read
        // after it is released.
        let pools: Vec<GraphPoolView> = pools.iter().map(|pool| pool.view()).collect();
        build(self.device().0, stats, natives, shards, pools)
    }
}

fn build(
    device: u32,
    stats: crate::MemoryStats,
    natives: Vec<(NativeBlock, StreamId)>,
    shards: Vec<ShardView>,
    pools: Vec<GraphPoolView>,
) -> MemoryReport {
    // Every native allocation starts whole and live (live blocks are in no list); what the
    // caches hold idle, pending or cut then marks it.
    let mut index: FxHashMap<u64, usize> = FxHashMap::default();
    index.reserve(natives.len());
    let mut allocations: Vec<NativeAllocation> = natives
        .iter()
        .enumerate()
        .map(|(at, (block, stream))| {
            index.insert(block.address, at);
            NativeAllocation {
                address: block.address,
                size: block.size,
                kind: block.kind,
                owner: Owner::Stream(stream.0),
                split: false,
                pieces: vec![piece(0, block.size, PieceState::Live)],
            }
        })
        .collect();
    for shard in &shards {
        for address in &shard.idle_whole {
            if let Some(&at) = index.get(address) {
                allocations[at].pieces[0].state = PieceState::Idle;
            }
        }
        let mut pending_pieces: FxHashMap<u64, &Vec<u64>> = FxHashMap::default();
        for (address, is_piece, streams) in &shard.pending {
            if *is_piece {
                pending_pieces.insert(*address, streams);
            } else if let Some(&at) = index.get(address) {
                let whole = &mut allocations[at].pieces[0];
                whole.state = PieceState::Pending;
                whole.pending_on.clone_from(streams);
            }
        }
        for (address, pieces) in &shard.segments {
            let Some(&at) = index.get(address) else { continue };
            let allocation = &mut allocations[at];
            allocation.split = true;
            allocation.pieces = pieces
                .iter()
                .map(|(block, idle)| {
                    let mut p = piece(block.address - address, block.size, PieceState::Live);
                    if *idle {
                        p.state = PieceState::Idle;
                    } else if let Some(streams) = pending_pieces.get(&block.address) {
                        p.state = PieceState::Pending;
                        p.pending_on.clone_from(streams);
                    }
                    p
                })
                .collect();
        }
    }

    // The stream caches' idle memory, before the graph pools' free ranges join the list.
    let (mut idle_bytes, mut idle_in_split_bytes, mut largest_idle_piece) = (0, 0, 0);
    for a in &allocations {
        for p in a.pieces.iter().filter(|p| p.state == PieceState::Idle) {
            idle_bytes += p.size;
            if a.split {
                idle_in_split_bytes += p.size;
            }
            largest_idle_piece = largest_idle_piece.max(p.size);
        }
    }
    let fragmentation = if idle_bytes == 0 {
        0.0
    } else {
        1.0 - largest_idle_piece as f64 / idle_bytes as f64
    };

    let mut streams: Vec<StreamTotals> = shards
        .iter()
        .map(|s| StreamTotals {
            stream: s.stream.0,
            orphaned: s.orphaned,
            allocations: 0,
            reserved_bytes: 0,
            live_count: s.live_count,
            live_bytes: s.live_bytes,
            live_reserved_bytes: 0,
            idle_count: 0,
            idle_bytes: 0,
            pending_count: 0,
            pending_bytes: 0,
            cache_hits: s.hits,
            cache_misses: s.misses,
        })
        .collect();
    let stream_index: FxHashMap<u64, usize> = streams.iter().enumerate().map(|(at, t)| (t.stream, at)).collect();
    for a in &allocations {
        let Owner::Stream(stream) = a.owner else { continue };
        let Some(&at) = stream_index.get(&stream) else { continue };
        let totals = &mut streams[at];
        totals.allocations += 1;
        totals.reserved_bytes += a.size;
        for p in &a.pieces {
            match p.state {
                PieceState::Live => totals.live_reserved_bytes += p.size,
                PieceState::Idle => {
                    totals.idle_count += 1;
                    totals.idle_bytes += p.size;
                }
                PieceState::Pending => {
                    totals.pending_count += 1;
                    totals.pending_bytes += p.size;
                }
            }
        }
    }
    streams.sort_unstable_by_key(|t| (std::cmp::Reverse(t.reserved_bytes), t.stream));

    let mut graph_pools = Vec::with_capacity(pools.len());
    for (index, pool) in pools.iter().enumerate() {
        let mut report = GraphPoolReport {
            pool: index,
            segments: pool.segments.len() as u64,
            reserved_bytes: 0,
            live_count: pool.live_count,
            live_bytes: pool.live_bytes,
            peak_live_bytes: pool.peak_live_bytes,
            free_bytes: 0,
            largest_free: 0,
        };
        for (block, free) in &pool.segments {
            report.reserved_bytes += block.size;
            let mut pieces = Vec::with_capacity(free.len() * 2 + 1);
            let mut at = 0;
            for &(offset, len) in free {
                if offset > at {
                    pieces.push(piece(at, offset - at, PieceState::Live));
                }
                pieces.push(piece(offset, len, PieceState::Idle));
                report.free_bytes += len;
                report.largest_free = report.largest_free.max(len);
                at = offset + len;
            }
            if at < block.size {
                pieces.push(piece(at, block.size - at, PieceState::Live));
            }
            allocations.push(NativeAllocation {
                address: block.address,
                size: block.size,
                kind: block.kind,
                owner: Owner::GraphPool(index),
                split: pieces.len() > 1,
                pieces,
            });
        }
        graph_pools.push(report);
    }
    allocations.sort_unstable_by_key(|a| (std::cmp::Reverse(a.size), a.owner, a.address));

    let mut kinds: Vec<KindTotals> = MemoryKind::ALL
        .iter()
        .map(|&kind| KindTotals {
            kind,
            allocations: 0,
            reserved_bytes: 0,
            live_bytes: 0,
            idle_bytes: 0,
            pending_bytes: 0,
        })
        .collect();
    let (mut reserved_bytes, mut live_bytes, mut pending_bytes) = (0, 0, 0);
    for a in &allocations {
        let k = &mut kinds[a.kind.index()];
        k.allocations += 1;
        k.reserved_bytes += a.size;
        reserved_bytes += a.size;
        for p in &a.pieces {
            match p.state {
                PieceState::Live => {
                    k.live_bytes += p.size;
                    live_bytes += p.size;
                }
                PieceState::Idle => k.idle_bytes += p.size,
                PieceState::Pending => {
                    k.pending_bytes += p.size;
                    pending_bytes += p.size;
                }
            }
        }
    }
    kinds.retain(|k| k.allocations > 0);

    MemoryReport {
        device,
        reserved_bytes,
        live_bytes,
        idle_bytes,
        idle_in_split_bytes,
        pending_bytes,
        largest_idle_piece,
        fragmentation,
        stats,
        kinds,
        streams,
        allocations,
        graph_pools,
        events: None,
    }
}

fn piece(offset: u64, size: u64, state: PieceState) -> Piece {
    Piece {
        offset,
        size,
        state,
        pending_on: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::pool::{CachingAllocator, CountingMemory, CountingStream, GraphPool, PoolConfig};
    use crate::report::{Owner, PieceState};
    use crate::types::{MemoryKind, StreamId};

    fn allocator() -> CachingAllocator<CountingMemory> {
        let config = PoolConfig {
            reserve_slack: f64::INFINITY,
            ..PoolConfig::default()
        };
        CachingAllocator::with_config(CountingMemory::new(1 << 40), config)
    }

    #[test]
    fn the_report_accounts_for_every_reserved_byte_and_agrees_with_the_counters() {
        let allocator = allocator();
        let a = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        let b = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        let big = a.allocate(8 << 20, MemoryKind::Device).unwrap();
        drop(big);
        // Cut from the idle 8 MiB block: a split allocation with a live piece and an idle rest.
        let small = a.allocate(7 << 20, MemoryKind::Device).unwrap();
        let other = b.allocate(3 << 20, MemoryKind::Managed).unwrap();
        let shared = a.allocate(2 << 20, MemoryKind::HostPinned).unwrap();
        shared.record_use(&b);
        drop(shared);
        let report = allocator.report();
        let stats = allocator.stats();

        assert_eq!(report.reserved_bytes, stats.reserved_bytes);
        assert_eq!(report.allocations.len() as u64, stats.reserved_count);
        assert_eq!(report.idle_bytes, stats.cached_bytes);
        for a in &report.allocations {
            let covered: u64 = a.pieces.iter().map(|p| p.size).sum();
            assert_eq!(covered, a.size, "pieces cover {a:?}");
        }
        let split = report.allocations.iter().find(|a| a.split).unwrap();
        assert_eq!(split.size, 8 << 20);
        assert_eq!(split.bytes(PieceState::Live), small.reserved_len());
        assert_eq!(report.largest_idle_piece, (8 << 20) - small.reserved_len());
        let pending = report
            .allocations
            .iter()
            .find(|a| a.kind == MemoryKind::HostPinned)
            .unwrap();
        assert_eq!(pending.pieces[0].state, PieceState::Pending);
        assert_eq!(pending.pieces[0].pending_on, vec![b.stream_id().0]);
        let managed = report
            .allocations
            .iter()
            .find(|a| a.kind == MemoryKind::Managed)
            .unwrap();
        assert_eq!(managed.owner, Owner::Stream(b.stream_id().0));
        assert_eq!(managed.pieces[0].state, PieceState::Live);
        let totals = report.streams.iter().find(|t| t.stream == a.stream_id().0).unwrap();
        assert_eq!(totals.live_bytes, 7 << 20);
        assert_eq!(totals.pending_bytes, 2 << 20);
        drop((small, other));
    }

    #[test]
    fn graph_pool_segments_are_reported_with_their_free_ranges() {
        let allocator = allocator();
        let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        let pool = GraphPool::new(&allocator);
        stream.begin_capture(pool.clone());
        let kept = stream.allocate(1 << 20, MemoryKind::Device).unwrap();
        drop(stream.allocate(1 << 19, MemoryKind::Device).unwrap());
        stream.end_capture();
        let report = allocator.report();
        assert_eq!(report.graph_pools.len(), 1);
        let graph = &report.graph_pools[0];
        assert_eq!(graph.live_bytes, 1 << 20);
        assert_eq!(graph.free_bytes + (1 << 20), graph.reserved_bytes);
        let segment = report
            .allocations
            .iter()
            .find(|a| a.owner == Owner::GraphPool(0))
            .unwrap();
        assert_eq!(segment.pieces[0].state, PieceState::Live);
        assert_eq!(segment.bytes(PieceState::Live), 1 << 20);
        assert_eq!(report.reserved_bytes, allocator.stats().reserved_bytes);
        drop(kept);
    }

    #[test]
    fn a_long_report_lists_the_biggest_allocations_and_sums_up_the_rest() {
        let allocator = allocator();
        let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
        let buffers: Vec<_> = (1..=1000u64)
            .map(|i| stream.allocate(i << 12, MemoryKind::Device).unwrap())
            .collect();
        let report = allocator.report();
        assert_eq!(report.allocations.len(), 1000);
        assert_eq!(report.allocations[0].size, 1000 << 12, "biggest first");
        let text = report.to_string();
        assert!(text.lines().count() < 40, "{text}");
        assert!(text.contains("… 988 more, "), "{text}");
        drop(buffers);
    }
}
