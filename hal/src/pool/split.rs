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

use std::collections::{BTreeMap, BTreeSet};

use super::native::NativeBlock;
use super::size_class::{rounded_size, MIN_BLOCK};
use crate::types::MemoryKind;

/// Smallest remainder worth keeping as an idle piece. A smaller one stays with the block
/// handed out (at most 511 bytes more than the request's class), since no request could
/// use it.
pub(crate) const MIN_REMAINDER: u64 = MIN_BLOCK;

/// Requests up to this size get a native allocation of [`SMALL_SEGMENT`] bytes, so that
/// later small requests split it instead of calling the native API.
pub(crate) const SMALL_REQUEST: u64 = 1 << 20;
/// Native allocation size for small requests.
pub(crate) const SMALL_SEGMENT: u64 = 2 << 20;

/// How large a native allocation to make for a request of `rounded` bytes: small
/// requests share 2 MiB segments (as PyTorch's allocator does), larger ones get exactly
/// their class, which keeps reserved memory close to live memory for the large tensors
/// that dominate a training step. (PyTorch's 20 MiB segments for 1–10 MiB requests were
/// left out: large requests split only blocks at most 4/3 their size, see [`may_serve`],
/// so a 20 MiB segment would mostly sit idle.)
///
/// Managed memory is never cut (see [`splits`]), so it always gets exactly its class.
#[inline]
pub(crate) fn segment_size(rounded: u64, kind: MemoryKind) -> u64 {
    if rounded <= SMALL_REQUEST && splits(kind) {
        rounded_size(SMALL_SEGMENT)
    } else {
        rounded
    }
}

/// Whether blocks of `kind` are cut at all. Managed memory is not: its advice and
/// prefetch state belong to a native allocation (a backend may keep them per allocation,
/// as the mock does, and size-based prefetch policies look at the allocation's size), so
/// a piece would share them with unrelated neighbours.
#[inline]
pub(crate) fn splits(kind: MemoryKind) -> bool {
    kind != MemoryKind::Managed
}

/// Whether a request of `rounded` bytes may be served from an idle block (whole or
/// piece) of `block` bytes.
///
/// Small requests take only blocks of small-segment size or less, so they never fragment
/// the large blocks that large requests need (PyTorch keeps separate small and large
/// pools for the same reason). A large request takes a block at most 4/3 its size: the
/// remainder is then under a third of the request, and cutting larger blocks for large
/// requests leaves big idle remainders pinned inside native allocations that cannot be
/// released while any piece is live. Measured on the GPT-2 training trace, a 4/3 bound
/// keeps reserved ÷ peak live where exact classes had it (1.0114), 3/2 gives 1.022 and
/// no bound 1.09.
#[inline]
pub(crate) fn may_serve(block: u64, rounded: u64) -> bool {
    if rounded <= SMALL_REQUEST {
        block <= SMALL_SEGMENT
    } else {
        block.saturating_mul(3) <= rounded.saturating_mul(4)
    }
}

/// A cut native allocation.
struct Segment {
    /// The block as the native API returned it; what a native free receives.
    whole: NativeBlock,
    /// Bytes of it idle in this structure.
    idle: u64,
}

/// Key of a piece or segment: memory kind, then address (kinds may share addresses on
/// some backends, so the kind comes first).
type Key = (usize, u64);

/// The pieces of one shard's cut native allocations.
#[derive(Default)]
pub(crate) struct SplitBlocks {
    /// Idle pieces by (kind, size, address), for best fit.
    by_size: BTreeSet<(usize, u64, u64)>,
    /// Idle pieces by (kind, address) → size, for finding neighbours.
    by_address: BTreeMap<Key, u64>,
    /// Cut native allocations by (kind, base address).
    segments: BTreeMap<Key, Segment>,
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
    /// Size of the smallest idle piece of `kind` with at least `size` bytes.
    pub(crate) fn best_fit(&self, kind: MemoryKind, size: u64) -> Option<u64> {
        let k = kind.index();
        self.by_size
            .range((k, size, 0)..(k + 1, 0, 0))
            .next()
            .map(|&(_, size, _)| size)
    }

    /// Takes the smallest idle piece of `kind` with at least `size` bytes out of the idle
    /// set (its bytes stay in its segment, now busy).
    pub(crate) fn take_best_fit(&mut self, kind: MemoryKind, size: u64) -> Option<NativeBlock> {
        let k = kind.index();
        let &(_, piece_size, address) = self.by_size.range((k, size, 0)..(k + 1, 0, 0)).next()?;
        self.by_size.remove(&(k, piece_size, address));
        self.by_address.remove(&(k, address));
        let segment = self.segment_mut(kind, address)?;
        segment.idle -= piece_size;
        Some(Self::piece_of(&segment.whole, address, piece_size))
    }

    /// Cuts `size` bytes off the front of `block` and hands them out; the rest stays idle
    /// as a piece. `block` is either a whole native allocation (which becomes a segment)
    /// or a piece just taken with [`take_best_fit`](Self::take_best_fit). The caller
    /// checks that the remainder is at least [`MIN_REMAINDER`].
    pub(crate) fn carve(&mut self, block: NativeBlock, whole: bool, size: u64) -> NativeBlock {
        debug_assert!(block.size >= size + MIN_REMAINDER);
        let k = block.kind.index();
        if whole {
            self.segments
                .insert((k, block.address), Segment { whole: block, idle: 0 });
        }
        let rest = block.size - size;
        let rest_address = block.address + size;
        self.by_size.insert((k, rest, rest_address));
        self.by_address.insert((k, rest_address), rest);
        if let Some(segment) = self.segment_mut(block.kind, block.address) {
            segment.idle += rest;
        }
        NativeBlock { size, ..block }
    }

    /// Puts a piece back, merging it with idle neighbours of its segment. `None` when the
    /// piece belongs to no segment here (a bug elsewhere; the caller counts it as lost).
    pub(crate) fn give_back(&mut self, piece: NativeBlock) -> Option<Returned> {
        let k = piece.kind.index();
        let segment = self.segment_mut(piece.kind, piece.address)?;
        let (base, end) = (segment.whole.address, segment.whole.address + segment.whole.size);
        segment.idle += piece.size;
        if segment.idle == segment.whole.size {
            // Every other piece of it is idle: drop them all and hand back the whole.
            let whole = segment.whole;
            let idle: Vec<(Key, u64)> = self
                .by_address
                .range((k, base)..(k, end))
                .map(|(&key, &size)| (key, size))
                .collect();
            for ((_, address), size) in &idle {
                self.by_address.remove(&(k, *address));
                self.by_size.remove(&(k, *size, *address));
            }
            self.segments.remove(&(k, base));
            return Some(Returned {
                merged: idle.len() as u64,
                whole: Some(whole),
            });
        }
        let mut address = piece.address;
        let mut size = piece.size;
        let mut merged = 0;
        let after = address + size;
        if after < end {
            if let Some(next) = self.by_address.remove(&(k, after)) {
                self.by_size.remove(&(k, next, after));
                size += next;
                merged += 1;
            }
        }
        if address > base {
            if let Some((&(_, prev), &prev_size)) = self.by_address.range((k, base)..(k, address)).next_back() {
                if prev + prev_size == address {
                    self.by_address.remove(&(k, prev));
                    self.by_size.remove(&(k, prev_size, prev));
                    address = prev;
                    size += prev_size;
                    merged += 1;
                }
            }
        }
        self.by_address.insert((k, address), size);
        self.by_size.insert((k, size, address));
        Some(Returned { merged, whole: None })
    }

    /// The segment holding `address`.
    fn segment_mut(&mut self, kind: MemoryKind, address: u64) -> Option<&mut Segment> {
        let k = kind.index();
        self.segments
            .range_mut((k, 0)..=(k, address))
            .next_back()
            .map(|(_, segment)| segment)
            .filter(|segment| address < segment.whole.address + segment.whole.size)
    }

    fn piece_of(whole: &NativeBlock, address: u64, size: u64) -> NativeBlock {
        NativeBlock {
            address,
            size,
            kind: whole.kind,
            native: whole.native,
            native_offset: whole.native_offset + (address - whole.address),
        }
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
        let piece = split.carve(native(1 << 20, 8192), true, 1024);
        assert_eq!(
            (piece.address, piece.size, piece.native, piece.native_offset),
            (1 << 20, 1024, 7, 64)
        );
        assert_eq!(split.best_fit(MemoryKind::Device, 512), Some(7168));
        assert_eq!(split.best_fit(MemoryKind::Device, 8192), None);
        assert_eq!(split.best_fit(MemoryKind::Managed, 512), None);
        let second = split.take_best_fit(MemoryKind::Device, 2048).unwrap();
        assert_eq!((second.address, second.size), ((1 << 20) + 1024, 7168));
        assert_eq!(second.native_offset, 64 + 1024, "offset inside the native allocation");
        let third = split.carve(second, false, 2048);
        assert_eq!((third.address, third.native_offset), ((1 << 20) + 1024, 64 + 1024));
        assert_eq!(split.best_fit(MemoryKind::Device, 512), Some(5120));
    }

    #[test]
    fn returned_pieces_merge_with_idle_neighbours() {
        let mut split = SplitBlocks::default();
        let a = split.carve(native(0x10000, 4096), true, 1024);
        let rest = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let b = split.carve(rest, false, 1024);
        let rest = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let c = split.carve(rest, false, 1024);
        // a b c [idle 1024]
        let back = split.give_back(b).unwrap();
        assert_eq!((back.merged, back.whole), (0, None));
        let back = split.give_back(c).unwrap();
        assert_eq!(back.merged, 2, "c merges with b before it and the idle tail after it");
        assert_eq!(split.best_fit(MemoryKind::Device, 3072), Some(3072));
        assert_eq!(split.by_address.len(), 1);
    }

    #[test]
    fn a_segment_comes_back_whole_only_when_every_piece_is_idle() {
        let mut split = SplitBlocks::default();
        let whole = native(0x40000, 4096);
        let a = split.carve(whole, true, 1024);
        let rest = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        let b = split.carve(rest, false, 2048);
        let back = split.give_back(a).unwrap();
        assert!(back.whole.is_none(), "b is still live");
        let back = split.give_back(b).unwrap();
        assert_eq!(back.whole, Some(whole), "the original block, not a piece");
        assert_eq!(back.merged, 2);
        assert!(split.segments.is_empty());
        assert!(split.by_size.is_empty() && split.by_address.is_empty());
    }

    #[test]
    fn pieces_of_other_segments_do_not_merge() {
        let mut split = SplitBlocks::default();
        // Two native allocations back to back in the address space.
        let _a = split.carve(native(0x10000, 2048), true, 1024);
        let tail = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        assert_eq!(tail.address + tail.size, 0x10800);
        let b = split.carve(native(0x10800, 2048), true, 1024);
        let _c = split.take_best_fit(MemoryKind::Device, 1024).unwrap();
        split.give_back(b).unwrap();
        // The tail of the first ends where b, idle now, begins: they must stay apart.
        let back = split.give_back(tail).unwrap();
        assert_eq!((back.merged, back.whole), (0, None));
        assert_eq!(split.by_address.len(), 2);
        assert!(split.give_back(native(0x90000, 512)).is_none(), "unknown piece");
    }
}
