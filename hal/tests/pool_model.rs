//! State-machine test of the caching pool against a simple model.
//!
//! The pool cuts native allocations into pieces and merges them back, so the model
//! follows native allocations too (through [`Recording`]): every live buffer lies inside
//! one of them at the offset it claims, live buffers never overlap (pieces of one native
//! allocation included), and only native allocations with nothing live or pending are
//! released. Ops run on several threads in turn (see [`run_on_threads`]). The release rule is followed too: a miss releases an idle native
//! allocation only when reserved memory would pass peak live + the reserve floor, or,
//! below that, when `release_after_misses` misses have passed since it was last busy.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuhal_hal::pool::size_class::rounded_size;
use gpuhal_hal::pool::{
    Allocator, Buffer, CachingAllocator, CountingMarker, CountingMemory, CountingStream, NativeBlock, PoolConfig,
    StreamCache,
};
use gpuhal_hal::{AsRegion, DeviceId, MemoryKind, Result as HalResult, StreamId};
use parking_lot::Mutex;
use proptest::prelude::*;

/// Counting memory that remembers every native allocation live now (address → size),
/// and checks that each free receives a whole native allocation.
struct Recording {
    inner: CountingMemory,
    natives: Mutex<BTreeMap<u64, u64>>,
    bad_frees: Mutex<Vec<NativeBlock>>,
}

impl Allocator for Recording {
    type Stream = Arc<CountingStream>;
    type Marker = CountingMarker;

    fn device(&self) -> DeviceId {
        self.inner.device()
    }

    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&Self::Stream>) -> HalResult<NativeBlock> {
        let block = self.inner.allocate(size, kind, stream)?;
        self.natives.lock().insert(block.address, block.size);
        Ok(block)
    }

    fn free(&self, block: NativeBlock, stream: Option<&Self::Stream>) -> HalResult<()> {
        if self.natives.lock().remove(&block.address) != Some(block.size) || block.native_offset != 0 {
            self.bad_frees.lock().push(block);
        }
        self.inner.free(block, stream)
    }

    fn record_marker(&self, stream: &Self::Stream) -> HalResult<Self::Marker> {
        self.inner.record_marker(stream)
    }

    fn is_marker_complete(&self, marker: &Self::Marker) -> HalResult<bool> {
        self.inner.is_marker_complete(marker)
    }

    fn wait_marker(&self, stream: &Self::Stream, marker: &Self::Marker) -> HalResult<()> {
        self.inner.wait_marker(stream, marker)
    }
}

const STREAMS: usize = 3;
const CAPACITY: u64 = 256 << 20;

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: u64,
        kind: usize,
        stream: usize,
    },
    Free {
        index: usize,
    },
    RecordUse {
        index: usize,
        stream: usize,
    },
    Submit {
        stream: usize,
    },
    Finish {
        stream: usize,
    },
    Trim,
    CacheLimit(Option<u64>),
    /// Allocate and drop `count` times on one stream: enough for the thread running it to
    /// take the stream cache's lock by its fast path (the lock biases to a thread that
    /// takes it repeatedly), so that the next op from another thread has to revoke that.
    Burst {
        size: u64,
        stream: usize,
        count: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![0u64..2048, 1u64..(64 << 10), 1u64..(8 << 20)], 0usize..3, 0..STREAMS)
            .prop_map(|(size, kind, stream)| Op::Alloc { size, kind, stream }),
        4 => any::<usize>().prop_map(|index| Op::Free { index }),
        2 => (any::<usize>(), 0..STREAMS).prop_map(|(index, stream)| Op::RecordUse { index, stream }),
        1 => (0..STREAMS).prop_map(|stream| Op::Submit { stream }),
        1 => (0..STREAMS).prop_map(|stream| Op::Finish { stream }),
        1 => Just(Op::Trim),
        1 => prop_oneof![Just(None), (0u64..(32 << 20)).prop_map(Some)].prop_map(Op::CacheLimit),
        1 => (1u64..(1 << 20), 0..STREAMS, 20usize..60).prop_map(|(size, stream, count)| Op::Burst { size, stream, count }),
    ]
}

struct Live {
    buffer: Buffer<Recording>,
    stream: usize,
    used_on: Vec<usize>,
}

/// A block freed after other streams used it: it must not come back (nor any part of
/// it, as a piece) until each of those streams has finished the work it had then. Kept
/// until the range is handed out again or `trim` has polled it; `waits_for` is empty
/// when those streams were idle at the free.
struct Held {
    start: u64,
    end: u64,
    waits_for: Vec<(usize, u64)>,
}

struct Harness {
    allocator: CachingAllocator<Recording>,
    natives: Vec<Arc<CountingStream>>,
    caches: Vec<StreamCache<Recording>>,
    submitted: Vec<u64>,
    finished: Vec<u64>,
    live: Vec<Live>,
    held: Vec<Held>,
    config: PoolConfig,
    /// Allocations that went to the native side (misses and refusals): the pool's clock.
    misses: u64,
    /// Per native allocation (by base), `misses` when something in it was last live or
    /// pending on unfinished work: its idle age is never less than `misses` minus this.
    last_busy: BTreeMap<u64, u64>,
    /// Highest rounded live bytes seen: the pool's peak is at least this.
    peak_rounded: u64,
}

impl Harness {
    fn new(config: PoolConfig) -> Self {
        let allocator = CachingAllocator::with_config(
            Recording {
                inner: CountingMemory::new(CAPACITY),
                natives: Mutex::new(BTreeMap::new()),
                bad_frees: Mutex::new(Vec::new()),
            },
            config,
        );
        let natives: Vec<_> = (0..STREAMS).map(|_| CountingStream::new()).collect();
        let caches = natives
            .iter()
            .map(|n| allocator.stream_cache(n.clone(), StreamId::fresh()))
            .collect();
        Harness {
            allocator,
            natives,
            caches,
            submitted: vec![0; STREAMS],
            finished: vec![0; STREAMS],
            live: Vec::new(),
            held: Vec::new(),
            config,
            misses: 0,
            last_busy: BTreeMap::new(),
            peak_rounded: 0,
        }
    }

    fn live_rounded(&self) -> u64 {
        self.live.iter().map(|l| l.buffer.reserved_len()).sum()
    }

    /// After each op: what is busy now was busy at this clock.
    fn note_busy(&mut self) {
        self.peak_rounded = self.peak_rounded.max(self.live_rounded());
        for (base, size) in self.natives() {
            let inside = |start: u64| start >= base && start < base + size;
            let live = self
                .live
                .iter()
                .any(|l| !l.buffer.is_empty() && inside(l.buffer.address()));
            let pending = self
                .held
                .iter()
                .any(|h| inside(h.start) && h.waits_for.iter().any(|&(s, ticket)| self.finished[s] < ticket));
            let seen = self.last_busy.entry(base).or_insert(self.misses);
            if live || pending {
                *seen = self.misses;
            }
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Alloc { size, kind, stream } => {
                let kind = MemoryKind::ALL[kind];
                let before = self.allocator.stats();
                let natives_before = self.natives();
                let peak = self.peak_rounded.max(self.live_rounded() + rounded_size(size.max(1)));
                let result = self.allocator.allocate(size, kind, &self.caches[stream]);
                let after = self.allocator.stats();
                if after.cache_misses > before.cache_misses || result.is_err() {
                    self.misses += 1;
                }
                if after.oom_retries == before.oom_retries && self.config.reserve_slack.is_finite() {
                    let now: Vec<u64> = self.natives().into_iter().map(|n| n.0).collect();
                    let over_floor =
                        before.reserved_bytes + rounded_size(size.max(1)) > peak + self.config.reserve_floor;
                    for (base, _) in natives_before.iter().filter(|n| !now.contains(&n.0)) {
                        let age = self.misses - self.last_busy.get(base).copied().unwrap_or(self.misses);
                        let old_enough =
                            self.config.release_after_misses > 0 && age >= self.config.release_after_misses;
                        prop_assert!(
                            over_floor || old_enough,
                            "a miss released {:#x} (idle for {} misses) with reserved {} + {} within peak {} + floor {}",
                            base,
                            age,
                            before.reserved_bytes,
                            rounded_size(size.max(1)),
                            peak,
                            self.config.reserve_floor
                        );
                    }
                }
                match result {
                    Ok(buffer) => {
                        prop_assert_eq!(buffer.len(), size);
                        prop_assert_eq!(buffer.kind(), kind);
                        prop_assert_eq!(buffer.address() % 256, 0);
                        if size > 0 {
                            prop_assert!(buffer.reserved_len() >= size);
                            let (start, end) = (buffer.address(), buffer.address() + buffer.reserved_len());
                            for held in self.held.iter().filter(|h| h.start < end && start < h.end) {
                                for &(s, ticket) in &held.waits_for {
                                    prop_assert!(
                                        self.finished[s] >= ticket,
                                        "block {:#x} handed out over {:#x}..{:#x} before stream {} finished its use",
                                        start,
                                        held.start,
                                        held.end,
                                        s
                                    );
                                }
                            }
                            self.held.retain(|h| !(h.start < end && start < h.end));
                        }
                        self.live.push(Live {
                            buffer,
                            stream,
                            used_on: Vec::new(),
                        });
                    }
                    Err(err) => prop_assert!(err.is_out_of_memory(), "unexpected error {err}"),
                }
            }
            Op::Free { index } => {
                if !self.live.is_empty() {
                    let live = self.live.swap_remove(index % self.live.len());
                    let waits_for: Vec<_> = live
                        .used_on
                        .iter()
                        .filter(|&&s| self.submitted[s] > self.finished[s])
                        .map(|&s| (s, self.submitted[s]))
                        .collect();
                    if !live.used_on.is_empty() && !live.buffer.is_empty() {
                        let start = live.buffer.address();
                        self.held.push(Held {
                            start,
                            end: start + live.buffer.reserved_len(),
                            waits_for,
                        });
                    }
                }
            }
            Op::RecordUse { index, stream } => {
                if !self.live.is_empty() {
                    let index = index % self.live.len();
                    let live = &mut self.live[index];
                    live.buffer.record_use(&self.caches[stream]);
                    if stream != live.stream {
                        live.used_on.push(stream);
                    }
                }
            }
            Op::Submit { stream } => {
                self.natives[stream].submit();
                self.submitted[stream] += 1;
            }
            Op::Finish { stream } => {
                self.natives[stream].finish();
                self.finished[stream] = self.submitted[stream];
            }
            Op::Trim => {
                let before = self.allocator.stats();
                let released = self.allocator.trim();
                let after = self.allocator.stats();
                prop_assert_eq!(before.reserved_bytes - after.reserved_bytes, released);
                // Trim polled every pending block: what is still held waits on unfinished work.
                let finished = self.finished.clone();
                self.held
                    .retain(|h| h.waits_for.iter().any(|&(s, ticket)| finished[s] < ticket));
                // Every native allocation left has something live or pending, and what
                // is cached is exactly the idle rest of those.
                let mut unreleasable = 0;
                for (base, size) in self.natives() {
                    let busy = self.busy_bytes(base, size, true);
                    prop_assert!(busy > 0, "trim left the idle native allocation {:#x}", base);
                    unreleasable += size - busy;
                }
                prop_assert_eq!(after.cached_bytes, unreleasable);
            }
            Op::Burst { size, stream, count } => {
                let before = self.allocator.stats();
                let mut served = 0u64;
                for _ in 0..count {
                    match self.allocator.allocate(size, MemoryKind::Device, &self.caches[stream]) {
                        Ok(buffer) => {
                            served += 1;
                            let (start, end) = (buffer.address(), buffer.address() + buffer.reserved_len());
                            for held in self.held.iter().filter(|h| h.start < end && start < h.end) {
                                for &(s, ticket) in &held.waits_for {
                                    prop_assert!(self.finished[s] >= ticket, "a burst reused {:#x} too early", start);
                                }
                            }
                            self.held.retain(|h| !(h.start < end && start < h.end));
                        }
                        Err(err) => {
                            prop_assert!(err.is_out_of_memory(), "unexpected error {err}");
                            // A refusal ticks the pool's clock but counts as no miss.
                            self.misses += 1;
                            break;
                        }
                    }
                }
                let after = self.allocator.stats();
                let hits = after.cache_hits - before.cache_hits;
                let misses = after.cache_misses - before.cache_misses;
                prop_assert_eq!(hits + misses, served, "every allocation counts as a hit or a miss");
                // With no cache limit releasing the block between rounds, only the first
                // round can miss.
                if self.allocator.config().cache_limit.is_none() {
                    prop_assert!(misses <= 1, "a burst missed {} times", misses);
                }
                self.misses += misses;
            }
            Op::CacheLimit(limit) => {
                self.allocator.set_cache_limit(limit);
                if let Some(limit) = limit {
                    let s = self.allocator.stats();
                    // Idle pieces of native allocations that hold a live or possibly
                    // pending block cannot be released; at most this many bytes are such.
                    let unreleasable: u64 = self
                        .natives()
                        .into_iter()
                        .filter(|&(base, size)| self.busy_bytes(base, size, true) > 0)
                        .map(|(base, size)| size - self.busy_bytes(base, size, false))
                        .sum();
                    prop_assert!(
                        s.cached_bytes <= limit + unreleasable,
                        "cached {} > limit {} + unreleasable {}: {:?}",
                        s.cached_bytes,
                        limit,
                        unreleasable,
                        s
                    );
                }
            }
        }
        self.note_busy();
        self.check_invariants()
    }

    fn natives(&self) -> Vec<(u64, u64)> {
        let natives = self.allocator.native().natives.lock();
        natives.iter().map(|(&base, &size)| (base, size)).collect()
    }

    /// Bytes of the native allocation at `base` that live buffers (and, with `held`,
    /// blocks possibly still pending) cover.
    fn busy_bytes(&self, base: u64, size: u64, held: bool) -> u64 {
        let inside = |start: u64| start >= base && start < base + size;
        let live: u64 = self
            .live
            .iter()
            .filter(|l| !l.buffer.is_empty() && inside(l.buffer.address()))
            .map(|l| l.buffer.reserved_len())
            .sum();
        let pending: u64 = if held {
            self.held
                .iter()
                .filter(|h| inside(h.start))
                .map(|h| h.end - h.start)
                .sum()
        } else {
            0
        };
        live + pending
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let stats = self.allocator.stats();
        let live_bytes: u64 = self.live.iter().map(|l| l.buffer.len()).sum();
        prop_assert_eq!(stats.live_bytes, live_bytes);
        prop_assert_eq!(
            stats.live_count,
            self.live.iter().filter(|l| !l.buffer.is_empty()).count() as u64
        );
        prop_assert_eq!(stats.reserved_bytes, self.allocator.native().inner.in_use());
        let natives = self.natives();
        prop_assert_eq!(stats.reserved_bytes, natives.iter().map(|n| n.1).sum::<u64>());
        prop_assert_eq!(stats.reserved_count, natives.len() as u64);
        prop_assert!(
            self.allocator.native().bad_frees.lock().is_empty(),
            "a native free got a piece: {:x?}",
            self.allocator.native().bad_frees.lock()
        );
        for live in self.live.iter().filter(|l| !l.buffer.is_empty()) {
            let (address, end) = (
                live.buffer.address(),
                live.buffer.address() + live.buffer.reserved_len(),
            );
            let native = natives
                .iter()
                .find(|&&(base, size)| address >= base && address < base + size);
            let Some(&(base, size)) = native else {
                return Err(TestCaseError::fail(format!(
                    "buffer {address:#x} lies in no native allocation"
                )));
            };
            prop_assert!(
                end <= base + size,
                "buffer {:#x}..{:#x} runs past its native allocation",
                address,
                end
            );
            prop_assert_eq!(live.buffer.region().native_offset, address - base);
        }
        let live_reserved: u64 = self.live.iter().map(|l| l.buffer.reserved_len()).sum();
        prop_assert!(
            stats.reserved_bytes >= live_reserved + stats.cached_bytes,
            "reserved {} < live {} + cached {}",
            stats.reserved_bytes,
            live_reserved,
            stats.cached_bytes
        );
        let mut ranges: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter(|l| !l.buffer.is_empty())
            .map(|l| (l.buffer.address(), l.buffer.address() + l.buffer.reserved_len()))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            prop_assert!(
                pair[0].1 <= pair[1].0,
                "live buffers overlap: {:x?} and {:x?}",
                pair[0],
                pair[1]
            );
        }
        Ok(())
    }
}

/// Threads the ops run on, one at a time: the model stays sequential, while the stream
/// caches' locks move between threads (a buffer allocated on one thread is dropped on
/// another, `trim` and `stats` run on a third while a worker holds a lock's bias), and
/// the workers exit at the end of each case with biases still pointing at them.
const THREADS: usize = 4;

/// Runs `ops` on `harness`, each on the worker thread it names.
fn run_on_threads(harness: Harness, ops: Vec<(usize, Op)>) -> Result<Harness, TestCaseError> {
    type Job = (Box<Harness>, Op);
    type Done = (Box<Harness>, Result<(), TestCaseError>);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
        let workers: Vec<std::sync::mpsc::Sender<Job>> = (0..THREADS)
            .map(|_| {
                let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
                let done_tx = done_tx.clone();
                scope.spawn(move || {
                    for (mut harness, op) in job_rx {
                        let trace = std::env::var_os("POOL_MODEL_TRACE").is_some();
                        if trace {
                            eprintln!("{op:?}");
                        }
                        let result = harness.apply(op);
                        if trace {
                            let s = harness.allocator.stats();
                            eprintln!(
                                "   cached {} pending {} live {}",
                                s.cached_bytes, s.pending_count, s.live_count
                            );
                        }
                        if done_tx.send((harness, result)).is_err() {
                            return;
                        }
                    }
                });
                job_tx
            })
            .collect();
        let mut harness = Box::new(harness);
        for (thread, op) in ops {
            workers[thread % THREADS]
                .send((harness, op))
                .map_err(|_| TestCaseError::fail("a worker thread is gone"))?;
            let (back, result) = done_rx
                .recv()
                .map_err(|_| TestCaseError::fail("a worker thread panicked"))?;
            harness = back;
            result?;
        }
        Ok(*harness)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_model(
        ops in proptest::collection::vec((0..THREADS, op()), 1..200),
        reserve_floor in prop_oneof![Just(0u64), Just(1u64 << 20), Just(16u64 << 20), Just(1u64 << 30)],
        release_after_misses in prop_oneof![Just(0u64), Just(1u64), Just(4u64)],
    ) {
        let harness = Harness::new(PoolConfig {
            reserve_floor,
            release_after_misses,
            ..PoolConfig::default()
        });
        let mut harness = run_on_threads(harness, ops)?;
        // Everything returns after drop (here, on yet another thread), the streams
        // finishing, and trim.
        harness.live.clear();
        for native in &harness.natives {
            native.finish();
        }
        harness.allocator.trim();
        let stats = harness.allocator.stats();
        prop_assert_eq!(stats.live_bytes, 0);
        prop_assert_eq!(stats.reserved_bytes, 0);
        prop_assert_eq!(harness.allocator.native().inner.in_use(), 0);
        prop_assert_eq!(stats.cached_bytes, 0);
        prop_assert!(harness.natives().is_empty());
        prop_assert_eq!(stats.native_allocations, stats.native_frees);
    }
}
