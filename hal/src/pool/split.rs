//! Splitting and coalescing inside native allocations, for one shard.
//!
//! When no idle block of a request's size class (or of the few classes above it) is at
//! hand, the shard serves the request from the smallest larger idle block it holds and
//! keeps the remainder idle, instead of calling the native API. A native allocation that
//! has been cut this way is a *segment*; its pieces are handed out and returned one by
//! one. A returned piece merges at once with its idle neighbours in the same segment, and
//! when the whole segment is idle again it leaves this structure and goes back to the
//! shard's exact-class free lists as one whole block, where the hit path, eviction and
//! `trim` see it exactly as a block that was never cut. So only wholly idle native
//! allocations are ever released, and a native free always receives the block the native
//! API returned.
//!
//! Merging on return rather than lazily on the miss path keeps every idle piece maximal,
//! so best fit sees the largest free ranges there are and a segment is known to be whole
//! the moment its last piece comes back (nothing has to scan for releasable segments).
//!
//! Every operation is O(1) apart from a bitmap scan: pieces live in a slab and know their
//! neighbours (a list in address order per segment) and their segment, a buffer carries
//! its piece's id, and idle pieces sit in per-kind, per-size-class buckets. A bucket holds
//! sizes of one class, all at least the class's rounded size, so the first non-empty
//! bucket at or above a request's class fits it (best fit to the class). Nearly every
//! request of a random-size workload comes this way, so the bitmap has a bit per class of
//! one kind (dense words, no stride) and is kept exact (a bit is set exactly while its
//! bucket is non-empty): the search is a word scan with nothing to re-check.

use super::native::NativeBlock;
use super::size_class::{class_index, MIN_BLOCK};
use crate::types::MemoryKind;

/// A piece's id in its shard's [`SplitBlocks`]; [`WHOLE`] for a block that is not a piece.
pub(crate) type PieceId = u32;
/// The id of a block that is no piece (a whole native allocation, or a graph pool range).
pub(crate) const WHOLE: PieceId = u32::MAX;
const NONE: u32 = u32::MAX;

/// Smallest remainder worth keeping as an idle piece. A smaller one stays with the block
/// handed out (at most 511 bytes more than the request's class), since no request could
/// use it.
pub(crate) const MIN_REMAINDER: u64 = MIN_BLOCK;

/// Requests up to this size are small: they take only blocks of at most
/// [`SMALL_BLOCK_LIMIT`] bytes.
pub(crate) const SMALL_REQUEST: u64 = 1 << 20;
/// Largest block a small request may be cut from.
pub(crate) const SMALL_BLOCK_LIMIT: u64 = 2 << 20;

/// Whether blocks of `kind` are cut at all. Managed memory is not: its advice and
/// prefetch state belong to a native allocation (a backend may keep them per allocation,
/// as the mock does), so a piece would share them with unrelated neighbours.
#[inline]
pub(crate) fn splits(kind: MemoryKind) -> bool {
    kind != MemoryKind::Managed
}

/// Whether a request of `rounded` bytes may be served from an idle block (whole or
/// piece) of `block` bytes.
///
/// Small requests take only blocks of at most 2 MiB, so they never fragment
/// the large blocks that large requests need (PyTorch keeps separate small and large
/// pools for the same reason). A large request takes a block at most 1.3 times its
/// size: cutting much larger blocks for large requests leaves big idle remainders pinned
/// inside native allocations that cannot be released while any piece is live. On the
/// GPT-2 training trace, 1.3 keeps reserved ÷ peak live where exact classes had it
/// (1.0115, with 45% fewer native allocations); 4/3 gives 1.0199 (its tensors are often
/// 3 and 4 MiB) and no bound about 1.09.
#[inline]
pub(crate) fn may_serve(block: u64, rounded: u64) -> bool {
    if rounded <= SMALL_REQUEST {
        block <= SMALL_BLOCK_LIMIT
    } else {
        block.saturating_mul(10) <= rounded.saturating_mul(13)
    }
}

/// A cut native allocation.
struct Segment {
    /// The block as the native API returned it; what a native free receives.
    whole: NativeBlock,
    /// Bytes of it idle in this structure.
    idle: u64,
}

/// A piece of a segment, idle or handed out.
struct Piece {
    block: NativeBlock,
    /// Its segment; `NONE` for a free slot.
    segment: u32,
    /// Neighbours in address order inside the segment.
    prev: u32,
    next: u32,
    /// Position in its bucket while idle; `NONE` while handed out (or pending).
    idle_at: u32,
}

/// The pieces of one shard's cut native allocations.
#[derive(Default)]
pub(crate) struct SplitBlocks {
    pieces: Vec<Piece>,
    free_pieces: Vec<u32>,
    segments: Vec<Segment>,
    free_segments: Vec<u32>,
    /// Idle piece ids by kind (`MemoryKind::index`), then by `class_index(size)`.
    buckets: [Vec<Vec<u32>>; KINDS],
    /// By kind, a bit per class, set exactly while that class's bucket is non-empty.
    occupied: [Vec<u64>; KINDS],
}

const KINDS: usize = MemoryKind::ALL.len();

/// An idle piece [`SplitBlocks::best_fit`] found: its bucket's class and its size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fit {
    pub(crate) class: usize,
    pub(crate) size: u64,
}

/// What returning a piece did.
pub(crate) struct Returned {
    /// Idle pieces it merged with (each no longer counts as a cached block).
    pub(crate) merged: u64,
    /// The native allocation, when the piece made it wholly idle: it has left this
    /// structure and goes back to the free lists (or to the native API) as one block.
    pub(crate) whole: Option<NativeBlock>,
}

impl SplitBlocks {
    /// The class of the first non-empty bucket of `kind` at or above `class`.
    fn first_bucket(&self, class: usize, kind: MemoryKind) -> Option<usize> {
        let bits = &self.occupied[kind.index()];
        let mut index = class / 64;
        let mut word = *bits.get(index)? & (u64::MAX << (class % 64));
        while word == 0 {
            index += 1;
            word = *bits.get(index)?;
        }
        Some(index * 64 + word.trailing_zeros() as usize)
    }

    /// The idle piece of `kind` with at least `rounded` bytes (a rounded size) from the
    /// smallest class that has one, for [`take_fit`](Self::take_fit).
    pub(crate) fn best_fit(&self, kind: MemoryKind, rounded: u64) -> Option<Fit> {
        let class = self.first_bucket(class_index(rounded), kind)?;
        let &id = self.buckets[kind.index()].get(class)?.last()?;
        Some(Fit {
            class,
            size: self.pieces[id as usize].block.size,
        })
    }

    /// Takes the piece [`best_fit`](Self::best_fit) found (in bucket `class` of `kind`,
    /// nothing changed since) out of the idle set; its bytes stay in its segment, now busy.
    pub(crate) fn take_fit(&mut self, kind: MemoryKind, class: usize) -> Option<(PieceId, NativeBlock)> {
        let list = self.buckets[kind.index()].get_mut(class)?;
        let id = list.pop()?;
        if list.is_empty() {
            self.occupied[kind.index()][class / 64] &= !(1 << (class % 64));
        }
        let piece = &mut self.pieces[id as usize];
        piece.idle_at = NONE;
        let block = piece.block;
        self.segments[piece.segment as usize].idle -= block.size;
        Some((id, block))
    }

    /// [`best_fit`](Self::best_fit) and [`take_fit`](Self::take_fit) in one (for tests).
    #[cfg(test)]
    pub(crate) fn take_best_fit(&mut self, kind: MemoryKind, rounded: u64) -> Option<(PieceId, NativeBlock)> {
        let fit = self.best_fit(kind, rounded)?;
        self.take_fit(kind, fit.class)
    }

    /// Cuts `size` bytes off the front of `block` and hands them out; the rest stays idle
    /// as a piece. `block` is either a whole native allocation (`id` is [`WHOLE`]; it
    /// becomes a segment) or the piece `id` just taken with
    /// [`take_best_fit`](Self::take_best_fit). The caller checks that the remainder is at
    /// least [`MIN_REMAINDER`]. Returns the id of the piece handed out.
    pub(crate) fn carve(&mut self, block: NativeBlock, id: PieceId, size: u64) -> (PieceId, NativeBlock) {
        debug_assert!(block.size >= size + MIN_REMAINDER);
        let id = if id == WHOLE {
            let segment = Segment { whole: block, idle: 0 };
            let segment = match self.free_segments.pop() {
                Some(index) => {
                    self.segments[index as usize] = segment;
                    index
                }
                None => {
                    self.segments.push(segment);
                    (self.segments.len() - 1) as u32
                }
            };
            self.new_piece(Piece {
                block,
                segment,
                prev: NONE,
                next: NONE,
                idle_at: NONE,
            })
        } else {
            id
        };
        let handed = NativeBlock { size, ..block };
        let rest = NativeBlock {
            address: block.address + size,
            size: block.size - size,
            native_offset: block.native_offset + size,
            ..block
        };
        let (segment, next) = {
            let piece = &mut self.pieces[id as usize];
            piece.block = handed;
            (piece.segment, piece.next)
        };
        let rest_id = self.new_piece(Piece {
            block: rest,
            segment,
            prev: id,
            next,
            idle_at: NONE,
        });
        self.pieces[id as usize].next = rest_id;
        if next != NONE {
            self.pieces[next as usize].prev = rest_id;
        }
        self.segments[segment as usize].idle += rest.size;
        self.make_idle(rest_id);
        (id, handed)
    }

    /// Puts piece `id` back, merging it with idle neighbours of its segment. `None` when
    /// `id` is no handed-out piece here (a bug elsewhere; the caller counts it as lost).
    pub(crate) fn give_back(&mut self, id: PieceId) -> Option<Returned> {
        let piece = self
            .pieces
            .get(id as usize)
            .filter(|p| p.idle_at == NONE && p.segment != NONE)?;
        let segment_index = piece.segment as usize;
        let segment = self.segments.get_mut(segment_index)?;
        segment.idle += piece.block.size;
        if segment.idle == segment.whole.size {
            // Every other piece of it is idle: drop them all and hand back the whole.
            let whole = segment.whole;
            let mut merged = 0;
            let mut first = id;
            while self.pieces[first as usize].prev != NONE {
                first = self.pieces[first as usize].prev;
            }
            let mut at = first;
            while at != NONE {
                let next = self.pieces[at as usize].next;
                if at != id {
                    self.make_busy(at);
                    merged += 1;
                }
                self.release_slot(at);
                at = next;
            }
            self.free_segments.push(segment_index as u32);
            return Some(Returned {
                merged,
                whole: Some(whole),
            });
        }
        let mut merged = 0;
        let next = self.pieces[id as usize].next;
        if next != NONE && self.pieces[next as usize].idle_at != NONE {
            self.make_busy(next);
            self.absorb_next(id);
            merged += 1;
        }
        let prev = self.pieces[id as usize].prev;
        let kept = if prev != NONE && self.pieces[prev as usize].idle_at != NONE {
            self.make_busy(prev);
            self.absorb_next(prev);
            merged += 1;
            prev
        } else {
            id
        };
        self.make_idle(kept);
        Some(Returned { merged, whole: None })
    }

    /// Merges the piece after `id` into `id`; neither is in a bucket.
    fn absorb_next(&mut self, id: PieceId) {
        let next = self.pieces[id as usize].next;
        let (next_size, after) = {
            let n = &self.pieces[next as usize];
            (n.block.size, n.next)
        };
        let piece = &mut self.pieces[id as usize];
        piece.block.size += next_size;
        piece.next = after;
        if after != NONE {
            self.pieces[after as usize].prev = id;
        }
        self.release_slot(next);
    }

    /// Frees a slot; marked so that a stale id is refused rather than misread.
    fn release_slot(&mut self, id: PieceId) {
        self.pieces[id as usize].segment = NONE;
        self.free_pieces.push(id);
    }

    fn new_piece(&mut self, piece: Piece) -> PieceId {
        match self.free_pieces.pop() {
            Some(id) => {
                self.pieces[id as usize] = piece;
                id
            }
            None => {
                self.pieces.push(piece);
                (self.pieces.len() - 1) as u32
            }
        }
    }

    /// Puts piece `id` in the bucket of its size.
    fn make_idle(&mut self, id: PieceId) {
        let block = self.pieces[id as usize].block;
        let (kind, class) = (block.kind.index(), class_index(block.size));
        let buckets = &mut self.buckets[kind];
        if class >= buckets.len() {
            buckets.resize_with(class + 1, Vec::new);
            self.occupied[kind].resize(class / 64 + 1, 0);
        }
        self.pieces[id as usize].idle_at = buckets[class].len() as u32;
        buckets[class].push(id);
        self.occupied[kind][class / 64] |= 1 << (class % 64);
    }

    /// Takes idle piece `id` out of its bucket.
    fn make_busy(&mut self, id: PieceId) {
        let piece = &mut self.pieces[id as usize];
        let at = piece.idle_at as usize;
        piece.idle_at = NONE;
        let (kind, class) = (piece.block.kind.index(), class_index(piece.block.size));
        let list = &mut self.buckets[kind][class];
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.pieces[moved as usize].idle_at = at as u32;
        } else if list.is_empty() {
            self.occupied[kind][class / 64] &= !(1 << (class % 64));
        }
    }

    /// Every segment (the native allocation) with its pieces in address order, each with
    /// whether it is idle: the memory report's view.
    pub(crate) fn segments(&self) -> impl Iterator<Item = (NativeBlock, Vec<(NativeBlock, bool)>)> + '_ {
        self.pieces
            .iter()
            .filter(|p| p.segment != NONE && p.prev == NONE)
            .map(move |first| {
                let mut pieces = vec![(first.block, first.idle_at != NONE)];
                let mut at = first.next;
                while at != NONE {
                    let piece = &self.pieces[at as usize];
                    pieces.push((piece.block, piece.idle_at != NONE));
                    at = piece.next;
                }
                (self.segments[first.segment as usize].whole, pieces)
            })
    }

    /// Idle pieces (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.buckets.iter().flatten().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(address: u64, size: u64) -> NativeBlock {
        NativeBlock {
            address,
            size,
            kind: MemoryKind::Device,
            native: 7,
            native_offset: 64,
        }
    }

    #[test]
    fn carve_hands_out_the_front_and_keeps_the_rest_idle() {
        let mut split = SplitBlocks::default();
        let (_, piece) = split.carve(native(1 << 20, 8192), WHOLE, 1024);
        assert_eq!(
            (piece.address, piece.size, piece.native, piece.native_offset),
            (1 << 20, 1024, 7, 64)
        );
        assert_eq!(split.best_fit(MemoryKind::Device, 512).map(|f| f.size), Some(7168));
        assert!(split.best_fit(MemoryKind::Device, 7680).is_none());
        assert!(split.best_fit(MemoryKind::Managed, 512).is_none());
        let (id, second) = split.take_best_fit(MemoryKind::Device, 2048).unwrap();
        assert_eq!((second.address, second.size), ((1 << 20) + 1024, 7168));
        assert_eq!(second.native_offset, 64 + 1024, "offset inside the native allocation");
        let (_, third) = split.carve(second, id, 2048);
        assert_eq!((third.address, third.native_offset), ((1 << 20) + 1024, 64 + 1024));
        assert_eq!(split.best_fit(MemoryKind::Device, 512).map(|f| f.size), Some(5120));
    }

    #[test]
    fn returned_pieces_merge_with_idle_neighbours() {
        let mut split = SplitBlocks::default();
        let (_a, _) = split.carve(native(0x10000, 4096), WHOLE, 1024);
        let (id, rest) = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let (b, _) = split.carve(rest, id, 1024);
        let (id, rest) = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let (c, _) = split.carve(rest, id, 1024);
        // a b c [idle 1024]
        let back = split.give_back(b).unwrap();
        assert_eq!((back.merged, back.whole), (0, None));
        let back = split.give_back(c).unwrap();
        assert_eq!(back.merged, 2, "c merges with b before it and the idle tail after it");
        assert_eq!(split.best_fit(MemoryKind::Device, 3072).map(|f| f.size), Some(3072));
        assert_eq!(split.idle_count(), 1);
        assert!(split.give_back(c).is_none(), "c is idle (merged) already");
    }

    #[test]
    fn a_segment_comes_back_whole_only_when_every_piece_is_idle() {
        let mut split = SplitBlocks::default();
        let whole = native(0x40000, 4096);
        let (a, _) = split.carve(whole, WHOLE, 1024);
        let (id, rest) = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let (b, _) = split.carve(rest, id, 2048);
        let back = split.give_back(a).unwrap();
        assert!(back.whole.is_none(), "b is still live");
        let back = split.give_back(b).unwrap();
        assert_eq!(back.whole, Some(whole), "the original block, not a piece");
        assert_eq!(back.merged, 2);
        assert_eq!(split.idle_count(), 0);
        assert!(split.best_fit(MemoryKind::Device, 512).is_none());
        // Slots are reused.
        let (again, _) = split.carve(native(0x80000, 2048), WHOLE, 1024);
        assert!(again < 4 && split.segments.len() == 1);
    }

    #[test]
    fn pieces_of_other_segments_do_not_merge() {
        let mut split = SplitBlocks::default();
        // Two native allocations back to back in the address space.
        let _a = split.carve(native(0x10000, 2048), WHOLE, 1024);
        let (tail, block) = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        assert_eq!(block.address + block.size, 0x10800);
        let (b, _) = split.carve(native(0x10800, 2048), WHOLE, 1024);
        let _c = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        split.give_back(b).unwrap();
        // The tail of the first ends where b, idle now, begins: they must stay apart.
        let back = split.give_back(tail).unwrap();
        assert_eq!((back.merged, back.whole), (0, None));
        assert_eq!(split.idle_count(), 2);
        assert!(split.give_back(999).is_none(), "unknown piece");
    }
}
