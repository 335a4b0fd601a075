//! The RAII buffer handed out by the caching pool and the graph pool.

use std::sync::Arc;

use parking_lot::Mutex;

use super::graph_pool::GraphPoolInner;
use super::native::{Allocator, NativeBlock};
use super::split::{PieceId, WHOLE};
use super::stream_cache::{Shard, StreamCache};
use crate::types::{AsRegion, DeviceId, MemoryKind, Region};

/// Where a buffer goes back to when dropped.
pub(crate) enum Owner<N: Allocator> {
    /// The cache of the stream it was allocated on.
    Stream(Arc<Shard<N>>),
    /// A graph pool (allocated while a stream was capturing).
    Graph(Arc<GraphPoolInner<N>>),
    /// A zero-size buffer: nothing to return.
    Empty(DeviceId),
}

/// Memory from the caching allocator. Dropping it returns the memory, stream-ordered, to
/// the cache of the stream it was allocated on.
///
/// A buffer used on a stream other than its own must say so with
/// [`record_use`](Buffer::record_use): it is then not handed out again until that
/// stream's work up to the drop has completed.
pub struct Buffer<N: Allocator> {
    pub(crate) owner: Owner<N>,
    pub(crate) block: NativeBlock,
    /// Its piece id when it is a piece of a cut native allocation (it goes back to its
    /// segment, not to a free list); `WHOLE` otherwise, and for graph pool buffers.
    pub(crate) piece: PieceId,
    pub(crate) len: u64,
    pub(crate) uses: Mutex<Vec<Arc<Shard<N>>>>,
    pub(crate) trace_id: u64,
}

impl<N: Allocator> Buffer<N> {
    pub(crate) fn empty(device: DeviceId, kind: MemoryKind) -> Self {
        Buffer {
            owner: Owner::Empty(device),
            block: NativeBlock {
                address: 0,
                size: 0,
                kind,
                native: 0,
                native_offset: 0,
            },
            piece: WHOLE,
            len: 0,
            uses: Mutex::new(Vec::new()),
            trace_id: 0,
        }
    }

    /// Length in bytes, as requested.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-size buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address (0 for a zero-size buffer). At least 256-byte aligned.
    pub fn address(&self) -> u64 {
        self.block.address
    }

    /// Kind of memory.
    pub fn kind(&self) -> MemoryKind {
        self.block.kind
    }

    /// Bytes actually reserved for this buffer (its size class).
    pub fn reserved_len(&self) -> u64 {
        self.block.size
    }

    /// The device the buffer belongs to.
    pub fn device(&self) -> DeviceId {
        match &self.owner {
            Owner::Stream(shard) => shard.device(),
            Owner::Graph(pool) => pool.device(),
            Owner::Empty(device) => *device,
        }
    }

    /// True when the buffer came from a graph pool (allocated during a capture).
    pub fn is_graph_allocation(&self) -> bool {
        matches!(self.owner, Owner::Graph(_))
    }

    /// Declares that `stream` uses this buffer. When the buffer is dropped, the pool
    /// records a marker on every such stream and holds the memory back until each has
    /// passed it; no device-wide synchronisation is involved.
    pub fn record_use(&self, stream: &StreamCache<N>) {
        let Owner::Stream(own) = &self.owner else {
            return;
        };
        let other = stream.base();
        if Arc::ptr_eq(own, other) {
            return;
        }
        let mut uses = self.uses.lock();
        if !uses.iter().any(|s| Arc::ptr_eq(s, other)) {
            uses.push(other.clone());
        }
    }
}

impl<N: Allocator> AsRegion for Buffer<N> {
    fn region(&self) -> Region {
        Region {
            device: self.device(),
            address: self.block.address,
            len: self.len,
            native: self.block.native,
            native_offset: self.block.native_offset,
            kind: self.block.kind,
        }
    }
}

impl<N: Allocator> std::fmt::Debug for Buffer<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("address", &format_args!("{:#x}", self.block.address))
            .field("len", &self.len)
            .field("kind", &self.block.kind)
            .field("graph", &self.is_graph_allocation())
            .finish()
    }
}

impl<N: Allocator> Drop for Buffer<N> {
    fn drop(&mut self) {
        let uses = std::mem::take(self.uses.get_mut());
        // The shard reference is moved out, not borrowed: it goes into the free list
        // with the block (see `Shard`). What is left in its place drops as nothing.
        let device = DeviceId(0);
        match std::mem::replace(&mut self.owner, Owner::Empty(device)) {
            Owner::Stream(shard) => shard.give_back(&self.block, self.piece, self.len, uses, self.trace_id),
            Owner::Graph(pool) => pool.give_back(self.block, self.len),
            Owner::Empty(_) => {}
        }
    }
}
