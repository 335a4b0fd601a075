//! The memory report: what holds a device's memory, native allocation by native
//! allocation, as [`CachingAllocator::report`](crate::CachingAllocator::report) and
//! [`Device::memory_report`](crate::Device::memory_report) read it.
//!
//! Counters ([`MemoryStats`]) say how much is reserved; the report says by what: every
//! native allocation with its pieces (live, idle, or pending on other streams' work),
//! per-stream and per-kind totals, the largest idle piece and how fragmented idle memory
//! is, the graph pools and the event pool. `Display` is for a person at a terminal (sizes
//! in KiB/MiB/GiB, biggest first, long lists cut short with a summary of the rest); the
//! `serde` form (JSON) keeps everything.

use std::fmt::{self, Display, Formatter};

use bytesize::ByteSize;
use serde::Serialize;

use crate::stats::{EventStats, MemoryStats};
use crate::types::MemoryKind;

/// Native allocations `Display` lists one by one; the rest are summarised.
const ALLOCATIONS_SHOWN: usize = 12;
/// Pieces `Display` lists per split allocation; the rest are summarised.
const PIECES_SHOWN: usize = 6;

/// What holds a device's memory now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    /// The device (its process-wide id).
    pub device: u32,
    /// Bytes held from the native API: the sum of `allocations`.
    pub reserved_bytes: u64,
    /// Bytes in live pieces (rounded sizes, as reserved for them).
    pub live_bytes: u64,
    /// Bytes in idle pieces of the stream caches, ready for reuse.
    pub idle_bytes: u64,
    /// Of `idle_bytes`, those inside native allocations that are partly live: they serve
    /// requests but cannot be released until every piece of their allocation is idle.
    pub idle_in_split_bytes: u64,
    /// Bytes freed while another stream may still use them, waiting for that work.
    pub pending_bytes: u64,
    /// The largest idle piece of the stream caches: the largest request the cache can
    /// serve without a native call (within its size rules).
    pub largest_idle_piece: u64,
    /// `1 − largest_idle_piece / idle_bytes` (0 with nothing idle): 0 when idle memory is
    /// one piece, near 1 when it is scattered in many small ones.
    pub fragmentation: f64,
    /// The allocator's counters (peaks, hits, native calls) read just before the report.
    pub stats: MemoryStats,
    /// Totals by memory kind, kinds with nothing reserved left out.
    pub kinds: Vec<KindTotals>,
    /// Totals by stream cache, largest reservation first.
    pub streams: Vec<StreamTotals>,
    /// Every native allocation, biggest first.
    pub allocations: Vec<NativeAllocation>,
    /// Graph pools, in the order they were created.
    pub graph_pools: Vec<GraphPoolReport>,
    /// The device's event pool (absent when the report is an allocator's alone).
    pub events: Option<EventStats>,
}

/// One native allocation and what it is cut into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeAllocation {
    /// Device address of its first byte.
    pub address: u64,
    /// Bytes, as allocated.
    pub size: u64,
    /// Memory kind.
    #[serde(serialize_with = "serialize_kind")]
    pub kind: MemoryKind,
    /// The stream cache or graph pool that holds it.
    pub owner: Owner,
    /// True when it has been cut into pieces (otherwise `pieces` is the whole of it).
    pub split: bool,
    /// Its pieces in address order; they cover it exactly.
    pub pieces: Vec<Piece>,
}

/// Who holds a native allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// The cache of this stream (its [`StreamId`](crate::StreamId) number).
    Stream(u64),
    /// The graph pool at this index of [`MemoryReport::graph_pools`].
    GraphPool(usize),
}

/// A range of a native allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Piece {
    /// Offset from the allocation's address.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// Live, idle or pending.
    pub state: PieceState,
    /// For a pending piece, the streams whose work it waits for (empty otherwise, and
    /// for a piece held back because a marker could not be recorded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_on: Vec<u64>,
}

/// What a piece is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PieceState {
    /// Handed out as a buffer.
    Live,
    /// In the cache (or a graph pool's free ranges), ready for reuse.
    Idle,
    /// Freed, waiting for other streams' work before it may be reused.
    Pending,
}

/// Totals of one memory kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindTotals {
    /// The kind.
    #[serde(serialize_with = "serialize_kind")]
    pub kind: MemoryKind,
    /// Native allocations of this kind.
    pub allocations: u64,
    /// Their bytes.
    pub reserved_bytes: u64,
    /// Bytes in live pieces.
    pub live_bytes: u64,
    /// Bytes in idle pieces.
    pub idle_bytes: u64,
    /// Bytes in pending pieces.
    pub pending_bytes: u64,
}

/// Totals of one stream's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamTotals {
    /// The stream's id number.
    pub stream: u64,
    /// True when the stream is gone and only its live buffers keep the cache.
    pub orphaned: bool,
    /// Native allocations its cache holds.
    pub allocations: u64,
    /// Their bytes.
    pub reserved_bytes: u64,
    /// Live buffers.
    pub live_count: u64,
    /// Their bytes as requested.
    pub live_bytes: u64,
    /// Their bytes as reserved (rounded).
    pub live_reserved_bytes: u64,
    /// Idle pieces.
    pub idle_count: u64,
    /// Their bytes.
    pub idle_bytes: u64,
    /// Pending pieces.
    pub pending_count: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that needed a native allocation.
    pub cache_misses: u64,
}

/// A graph pool's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphPoolReport {
    /// Its index; allocations it holds say [`Owner::GraphPool`] with it.
    pub pool: usize,
    /// Native segments.
    pub segments: u64,
    /// Their bytes.
    pub reserved_bytes: u64,
    /// Buffers from it still held (a capture's outputs).
    pub live_count: u64,
    /// Their bytes as requested.
    pub live_bytes: u64,
    /// The most bytes its captures held at once.
    pub peak_live_bytes: u64,
    /// Bytes in free ranges, for later captures.
    pub free_bytes: u64,
    /// The largest free range.
    pub largest_free: u64,
}

fn serialize_kind<S: serde::Serializer>(kind: &MemoryKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind_name(*kind))
}

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Device => "device",
        MemoryKind::Managed => "managed",
        MemoryKind::HostPinned => "host_pinned",
    }
}

/// Bytes for a person: "1.5 MiB".
fn size(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else if bytes < 1024 {
        format!("{bytes} B")
    } else {
        ByteSize(bytes).display().iec().to_string()
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

impl NativeAllocation {
    /// Bytes of its pieces in `state`.
    pub fn bytes(&self, state: PieceState) -> u64 {
        self.pieces.iter().filter(|p| p.state == state).map(|p| p.size).sum()
    }

    fn count(&self, state: PieceState) -> u64 {
        self.pieces.iter().filter(|p| p.state == state).count() as u64
    }
}

impl Display for Owner {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Stream(stream) => write!(f, "stream {stream}"),
            Owner::GraphPool(pool) => write!(f, "graph pool {pool}"),
        }
    }
}

impl Piece {
    /// "live", "idle", "pending on stream 3".
    fn state_text(&self) -> String {
        match self.state {
            PieceState::Live => "live".into(),
            PieceState::Idle => "idle".into(),
            PieceState::Pending => format!("pending{}", streams_list(&self.pending_on)),
        }
    }
}

impl Display for Piece {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let offset = format!("+{}", size(self.offset));
        write!(f, "{offset:<12} {:>10}  {}", size(self.size), self.state_text())
    }
}

/// " on streams 2, 3", or nothing for no streams.
fn streams_list(streams: &[u64]) -> String {
    match streams {
        [] => String::new(),
        [one] => format!(" on stream {one}"),
        many => {
            let names: Vec<String> = many.iter().map(u64::to_string).collect();
            format!(" on streams {}", names.join(", "))
        }
    }
}

impl Display for NativeAllocation {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#014x} {:>10}  {:<11} {:<13} ",
            self.address,
            size(self.size),
            kind_name(self.kind),
            self.owner.to_string()
        )?;
        if !self.split {
            let state = self.pieces.first().map(Piece::state_text).unwrap_or_default();
            return write!(f, "whole, {state}");
        }
        let mut parts = Vec::new();
        for (state, name) in [
            (PieceState::Live, "live"),
            (PieceState::Idle, "idle"),
            (PieceState::Pending, "pending"),
        ] {
            let count = self.count(state);
            if count > 0 {
                parts.push(format!("{count} {name} {}", size(self.bytes(state))));
            }
        }
        write!(f, "split in {}: {}", self.pieces.len(), parts.join(", "))
    }
}

impl Display for MemoryReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "memory report, device {}: reserved {} in {} (peak {})",
            self.device,
            size(self.reserved_bytes),
            plural(self.allocations.len() as u64, "native allocation", "native allocations"),
            size(s.peak_reserved_bytes)
        )?;
        let graph_live: u64 = self.graph_pools.iter().map(|p| p.live_count).sum();
        writeln!(
            f,
            "  live {} in {}; idle in the caches {} (largest piece {}, fragmentation {:.1}%; {} of it in partly live allocations); pending {}",
            size(self.live_bytes),
            plural(s.live_count + graph_live, "buffer", "buffers"),
            size(self.idle_bytes),
            size(self.largest_idle_piece),
            self.fragmentation * 100.0,
            size(self.idle_in_split_bytes),
            size(self.pending_bytes)
        )?;
        writeln!(
            f,
            "  peak live {} (stream caches, as requested); cache hits {} of {} ({:.1}%); {} native allocations, {} frees; {} out-of-memory retries, {} refusals",
            size(s.peak_live_bytes),
            s.cache_hits,
            s.cache_hits + s.cache_misses,
            s.hit_rate() * 100.0,
            s.native_allocations,
            s.native_frees,
            s.oom_retries,
            s.oom_errors
        )?;
        if !self.kinds.is_empty() {
            writeln!(f, "by kind")?;
            for k in &self.kinds {
                writeln!(
                    f,
                    "  {:<12} reserved {:>10} in {:<5} live {:>10}  idle {:>10}  pending {:>10}",
                    kind_name(k.kind),
                    size(k.reserved_bytes),
                    k.allocations,
                    size(k.live_bytes),
                    size(k.idle_bytes),
                    size(k.pending_bytes)
                )?;
            }
        }
        if !self.streams.is_empty() {
            writeln!(f, "by stream")?;
            for t in &self.streams {
                let name = format!("stream {}{}", t.stream, if t.orphaned { " (gone)" } else { "" });
                let requests = t.cache_hits + t.cache_misses;
                let hits = if requests == 0 {
                    0.0
                } else {
                    t.cache_hits as f64 * 100.0 / requests as f64
                };
                writeln!(
                    f,
                    "  {name:<12} reserved {:>10} in {:<5} live {:>10} in {:<5} idle {:>10} in {:<5} pending {:>10}  hits {hits:.1}% of {requests}",
                    size(t.reserved_bytes),
                    t.allocations,
                    size(t.live_reserved_bytes),
                    t.live_count,
                    size(t.idle_bytes),
                    t.idle_count,
                    size(t.pending_bytes),
                )?;
            }
        }
        if !self.allocations.is_empty() {
            writeln!(f, "native allocations, biggest first")?;
            for allocation in self.allocations.iter().take(ALLOCATIONS_SHOWN) {
                writeln!(f, "  {allocation}")?;
                if allocation.split {
                    for piece in allocation.pieces.iter().take(PIECES_SHOWN) {
                        writeln!(f, "      {piece}")?;
                    }
                    let rest = &allocation.pieces[allocation.pieces.len().min(PIECES_SHOWN)..];
                    if !rest.is_empty() {
                        let bytes: u64 = rest.iter().map(|p| p.size).sum();
                        writeln!(f, "      … {} more pieces, {}", rest.len(), size(bytes))?;
                    }
                }
            }
            let rest = &self.allocations[self.allocations.len().min(ALLOCATIONS_SHOWN)..];
            if !rest.is_empty() {
                let bytes: u64 = rest.iter().map(|a| a.size).sum();
                let live: u64 = rest.iter().map(|a| a.bytes(PieceState::Live)).sum();
                let idle: u64 = rest.iter().map(|a| a.bytes(PieceState::Idle)).sum();
                let pending: u64 = rest.iter().map(|a| a.bytes(PieceState::Pending)).sum();
                writeln!(
                    f,
                    "  … {} more, {}: live {}, idle {}, pending {}",
                    rest.len(),
                    size(bytes),
                    size(live),
                    size(idle),
                    size(pending)
                )?;
            }
        }
        for pool in &self.graph_pools {
            writeln!(
                f,
                "graph pool {}: reserved {} in {}; live {} in {} (peak {}); free {} (largest {})",
                pool.pool,
                size(pool.reserved_bytes),
                plural(pool.segments, "segment", "segments"),
                size(pool.live_bytes),
                plural(pool.live_count, "buffer", "buffers"),
                size(pool.peak_live_bytes),
                size(pool.free_bytes),
                size(pool.largest_free)
            )?;
        }
        if let Some(events) = &self.events {
            writeln!(
                f,
                "event pool: {} ({} idle), {} created, {} handed out",
                plural(events.native_live, "native event", "native events"),
                events.idle,
                events.native_created,
                events.acquired
            )?;
        }
        Ok(())
    }
}
