//! The lifetime half of the checker: which native allocations are live, which blocks the
//! pool has handed out as buffers, and how returned or freed ones went.
//!
//! Sharded by native allocation: a buffer lies inside one native allocation, so hand-outs
//! and returns on different streams (different blocks, hence different natives) take
//! different locks and do not serialize on one device-wide lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use gpuhal_hal::pool::NativeBlock;
use gpuhal_hal::{Error, Result, StreamId};
use parking_lot::{Mutex, MutexGuard};

use crate::raw::NativeAllocation;

/// Number of shards (a power of two).
const SHARDS: usize = 64;

/// Records of freed memory a shard keeps for error messages before old ones are forgotten.
const REMEMBERED_FREES: usize = 4096;

/// Whether an operation reads or writes a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Read,
    Write,
}

/// One stream operation's access to a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub(crate) agent: usize,
    pub(crate) tick: u64,
    /// False when the access followed a fence wait whose signal was not enqueued yet:
    /// its order against other streams is unknown.
    pub(crate) ordered: bool,
    pub(crate) stream: StreamId,
    pub(crate) operation: &'static str,
    pub(crate) kind: Use,
    /// The bytes touched (device addresses, end exclusive): what a later hand-out of
    /// the same memory inherits.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Set once the access is inherited by a later hand-out of its memory: the buffer
    /// it was made through, and how that buffer ended.
    pub(crate) through: Option<Predecessor>,
}

/// The earlier buffer an inherited access went through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Predecessor {
    pub(crate) serial: u64,
    pub(crate) ending: Ending,
}

impl Access {
    pub(crate) fn describe(&self) -> String {
        describe(self.stream, self.kind, self.operation)
    }
}

/// An access as a race report names it: "stream 3 writes it (fill)".
pub(crate) fn describe(stream: StreamId, kind: Use, operation: &str) -> String {
    let what = match kind {
        Use::Read => "reads",
        Use::Write => "writes",
    };
    format!("{stream} {what} it ({operation})")
}

/// The accesses a later one must be ordered after: the last write (or, for memory
/// inherited from several earlier buffers, each of their last writes) and the reads
/// since, one per agent.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) writes: Vec<Access>,
    pub(crate) reads: Vec<Access>,
}

impl History {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty()
    }

    /// Marks the accesses not inherited yet as made through `through`.
    fn mark_through(&mut self, through: Predecessor) {
        for access in self.writes.iter_mut().chain(self.reads.iter_mut()) {
            access.through = access.through.or(Some(through));
        }
    }

    /// Takes over the accesses of `earlier` that touched `start..end`, marked as made
    /// through `through` when they were not inherited already.
    fn inherit(&mut self, earlier: &History, through: Option<Predecessor>, start: u64, end: u64) {
        let overlaps = |a: &&Access| a.start < end && start < a.end;
        let stamp = |a: &Access| Access {
            through: a.through.or(through),
            ..*a
        };
        self.writes.extend(earlier.writes.iter().filter(overlaps).map(stamp));
        self.reads.extend(earlier.reads.iter().filter(overlaps).map(stamp));
    }
}

/// How a buffer stopped being live (formatted only for an error message).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    /// Its native memory was freed while it was live.
    NativeFreed,
    /// Dropped, back in a graph pool.
    GraphPool,
    /// Dropped, back in a stream's cache.
    Cache(StreamId),
}

impl Ending {
    pub(crate) fn describe(self) -> String {
        match self {
            Ending::NativeFreed => "its native memory was freed while it was live".into(),
            Ending::GraphPool => "the buffer's drop (returned to its graph pool)".into(),
            Ending::Cache(stream) => format!("the buffer's drop (returned to the cache of {stream})"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Life {
    Live,
    /// Returned to the pool (or the native memory freed).
    Returned(Ending),
}

/// A block handed out as a buffer, live or returned.
#[derive(Debug)]
pub(crate) struct HandOut {
    pub(crate) len: u64,
    /// The native allocation token the block was carved from.
    pub(crate) native: u64,
    pub(crate) serial: u64,
    /// None once the native memory is freed.
    pub(crate) allocation: Option<Arc<NativeAllocation>>,
    pub(crate) life: Life,
    /// The stream it was handed out on (the capturing stream for a graph pool).
    pub(crate) stream: StreamId,
    /// Accesses through this buffer, and those through earlier buffers of the same
    /// memory that it inherited when handed out. Kept after the buffer is returned,
    /// for the next hand-out of its memory.
    pub(crate) history: History,
}

/// Hashes native allocation tokens (small sequential integers the mock hands out
/// itself, so no defence against chosen keys is needed): one multiply.
#[derive(Default)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TokenMap<V> = HashMap<u64, V, BuildHasherDefault<TokenHasher>>;

/// One shard: the native allocations whose token maps here, and their hand-outs by address.
#[derive(Default)]
pub(crate) struct Shard {
    natives: TokenMap<Arc<NativeAllocation>>,
    freed_natives: TokenMap<u64>,
    pub(crate) handouts: BTreeMap<u64, HandOut>,
    /// Hand-outs made in this shard (serials are `made * SHARDS + shard index`).
    made: u64,
}

impl Shard {
    /// The native allocation with token `id`, if live and in this shard.
    pub(crate) fn native(&self, id: u64) -> Option<&Arc<NativeAllocation>> {
        self.natives.get(&id)
    }

    /// The hand-out whose range holds `address`, with its start.
    pub(crate) fn containing(&self, address: u64) -> Option<(u64, &HandOut)> {
        self.handouts
            .range(..=address)
            .next_back()
            .filter(|(start, handout)| address < *start + handout.len.max(1))
            .map(|(start, handout)| (*start, handout))
    }

    /// Forgets the records of hand-outs overlapping `start..end`. Returns what accesses
    /// through those of native allocation `native` (the same memory) left behind there,
    /// for the next buffer of that memory to be checked against.
    ///
    /// A record reaching past `start..end` whose accesses touched bytes outside it keeps
    /// those accesses in a remnant record of the part outside, so that a later piece cut
    /// there is checked against them too.
    fn forget_range(&mut self, start: u64, end: u64, native: Option<u64>) -> History {
        let mut inherited = History::default();
        let mut remnants: Vec<(u64, HandOut)> = Vec::new();
        let mut forget = |key: u64, handout: HandOut| {
            if native != Some(handout.native) || handout.history.is_empty() {
                return;
            }
            let ending = match handout.life {
                Life::Returned(ending) => ending,
                Life::Live => Ending::NativeFreed,
            };
            let through = Predecessor {
                serial: handout.serial,
                ending,
            };
            if key >= start && key + handout.len <= end {
                // Wholly inside (a cache hit of the same block): its accesses move over
                // as they are, no copy.
                let mut history = handout.history;
                history.mark_through(through);
                if inherited.is_empty() {
                    inherited = history;
                } else {
                    inherited.writes.append(&mut history.writes);
                    inherited.reads.append(&mut history.reads);
                }
                return;
            }
            inherited.inherit(&handout.history, Some(through), start, end);
            let outside = [(key, start), (end, key + handout.len)];
            for (from, to) in outside {
                if from >= to {
                    continue;
                }
                let mut history = History::default();
                history.inherit(&handout.history, None, from, to);
                if !history.is_empty() {
                    let remnant = HandOut {
                        len: to - from,
                        allocation: handout.allocation.clone(),
                        history,
                        ..handout
                    };
                    remnants.push((from, remnant));
                }
            }
        };
        if let Some((&key, handout)) = self.handouts.range(..start).next_back() {
            if key + handout.len > start {
                if let Some(handout) = self.handouts.remove(&key) {
                    forget(key, handout);
                }
            }
        }
        while let Some((&key, _)) = self.handouts.range(start..end).next() {
            if let Some(handout) = self.handouts.remove(&key) {
                forget(key, handout);
            }
        }
        for (key, remnant) in remnants {
            self.handouts.insert(key, remnant);
        }
        inherited
    }
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The lifetime records of one device.
pub(crate) struct Lifetimes {
    shards: Box<[Padded]>,
}

impl Lifetimes {
    pub(crate) fn new() -> Lifetimes {
        Lifetimes {
            shards: (0..SHARDS).map(|_| Padded(Mutex::new(Shard::default()))).collect(),
        }
    }

    /// The shard that holds native allocation `native` and its hand-outs.
    pub(crate) fn shard_of(native: u64) -> usize {
        (native as usize) & (SHARDS - 1)
    }

    pub(crate) fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard & (SHARDS - 1)].0.lock()
    }

    /// Every shard index.
    pub(crate) fn indices() -> std::ops::Range<usize> {
        0..SHARDS
    }

    // ----- native memory -----

    pub(crate) fn native_allocated(&self, allocation: Arc<NativeAllocation>) {
        let start = allocation.address();
        let mut shard = self.lock(Self::shard_of(allocation.id));
        // Records of earlier memory of this shard at these addresses no longer mean
        // anything. (Other shards' records there are of freed natives, and are only
        // found through their own token.)
        shard.forget_range(start, start + allocation.size, None);
        shard.freed_natives.remove(&allocation.id);
        shard.natives.insert(allocation.id, allocation);
    }

    /// Every live native allocation of `device`.
    pub(crate) fn natives_of(&self, device: gpuhal_hal::DeviceId) -> Vec<Arc<NativeAllocation>> {
        Self::indices()
            .flat_map(|index| {
                let shard = self.lock(index);
                shard
                    .natives
                    .values()
                    .filter(|a| a.device == device)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Takes a native allocation out of the registry for freeing.
    pub(crate) fn native_freed(&self, block: &NativeBlock) -> Result<Arc<NativeAllocation>> {
        let mut guard = self.lock(Self::shard_of(block.native));
        let shard = &mut *guard;
        let Some(allocation) = shard.natives.remove(&block.native) else {
            return Err(match shard.freed_natives.get(&block.native) {
                Some(_) => Error::DoubleFree {
                    address: block.address,
                    allocation: block.native,
                    first: "an earlier native free of the same block".into(),
                },
                None => Error::invalid(
                    "free",
                    format!(
                        "block {:#x} (native #{}) was not allocated by this device",
                        block.address, block.native
                    ),
                ),
            });
        };
        if shard.freed_natives.len() >= REMEMBERED_FREES {
            shard.freed_natives.clear();
        }
        shard.freed_natives.insert(allocation.id, allocation.address());
        let start = allocation.address();
        let end = start + allocation.size;
        for (_, handout) in shard.handouts.range_mut(start..end) {
            if handout.native != allocation.id {
                continue;
            }
            handout.allocation = None;
            // New memory gets a new token, so nothing inherits these accesses any more.
            handout.history = History::default();
            if matches!(handout.life, Life::Live) {
                handout.life = Life::Returned(Ending::NativeFreed);
            }
        }
        if shard.handouts.len() > REMEMBERED_FREES {
            shard
                .handouts
                .retain(|_, h| matches!(h.life, Life::Live) || h.allocation.is_some());
        }
        Ok(allocation)
    }

    /// The native allocation with token `id`, if live.
    pub(crate) fn native(&self, id: u64) -> Option<Arc<NativeAllocation>> {
        self.lock(Self::shard_of(id)).native(id).cloned()
    }

    // ----- buffer lifetimes -----

    /// A block is handed out as a buffer of `len` bytes on `stream`. The new buffer
    /// inherits the accesses earlier buffers of the same memory left there: the race
    /// checker compares memory, not buffer identities.
    pub(crate) fn handed_out(&self, block: &NativeBlock, len: u64, stream: StreamId) {
        let index = Self::shard_of(block.native);
        let mut shard = self.lock(index);
        let history = shard.forget_range(block.address, block.address + block.size.max(len), Some(block.native));
        shard.made += 1;
        let serial = shard.made * SHARDS as u64 + index as u64;
        let allocation = shard.natives.get(&block.native).cloned();
        shard.handouts.insert(
            block.address,
            HandOut {
                len,
                native: block.native,
                serial,
                allocation,
                life: Life::Live,
                stream,
                history,
            },
        );
    }

    pub(crate) fn returned(&self, block: &NativeBlock, stream: StreamId) {
        let mut shard = self.lock(Self::shard_of(block.native));
        if let Some(handout) = shard.handouts.get_mut(&block.address) {
            handout.life = Life::Returned(if stream.0 == 0 {
                Ending::GraphPool
            } else {
                Ending::Cache(stream)
            });
        }
    }
}
