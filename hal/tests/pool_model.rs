//! State-machine test of the caching pool against a simple model.

use std::collections::HashMap;
use std::sync::Arc;

use gpuhal_hal::pool::{Buffer, CachingAllocator, CountingMemory, CountingStream, StreamCache};
use gpuhal_hal::{MemoryKind, StreamId};
use proptest::prelude::*;

const STREAMS: usize = 3;
const CAPACITY: u64 = 256 << 20;

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: u64, kind: usize, stream: usize },
    Free { index: usize },
    RecordUse { index: usize, stream: usize },
    Submit { stream: usize },
    Finish { stream: usize },
    Trim,
    CacheLimit(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![0u64..2048, 1u64..(8 << 20)], 0usize..3, 0..STREAMS)
            .prop_map(|(size, kind, stream)| Op::Alloc { size, kind, stream }),
        4 => any::<usize>().prop_map(|index| Op::Free { index }),
        2 => (any::<usize>(), 0..STREAMS).prop_map(|(index, stream)| Op::RecordUse { index, stream }),
        1 => (0..STREAMS).prop_map(|stream| Op::Submit { stream }),
        1 => (0..STREAMS).prop_map(|stream| Op::Finish { stream }),
        1 => Just(Op::Trim),
        1 => prop_oneof![Just(None), (0u64..(32 << 20)).prop_map(Some)].prop_map(Op::CacheLimit),
    ]
}

struct Live {
    buffer: Buffer<CountingMemory>,
    stream: usize,
    used_on: Vec<usize>,
}

/// A block freed while other streams had unfinished work on it: it must not come back
/// until each of those streams has finished.
struct Held {
    waits_for: Vec<(usize, u64)>,
}

struct Harness {
    allocator: CachingAllocator<CountingMemory>,
    natives: Vec<Arc<CountingStream>>,
    caches: Vec<StreamCache<CountingMemory>>,
    submitted: Vec<u64>,
    finished: Vec<u64>,
    live: Vec<Live>,
    held: HashMap<u64, Held>,
}

impl Harness {
    fn new() -> Self {
        let allocator = CachingAllocator::new(CountingMemory::new(CAPACITY));
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
            held: HashMap::new(),
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Alloc { size, kind, stream } => {
                let kind = MemoryKind::ALL[kind];
                match self.allocator.allocate(size, kind, &self.caches[stream]) {
                    Ok(buffer) => {
                        prop_assert_eq!(buffer.len(), size);
                        prop_assert_eq!(buffer.kind(), kind);
                        prop_assert_eq!(buffer.address() % 256, 0);
                        if size > 0 {
                            prop_assert!(buffer.reserved_len() >= size);
                            if let Some(held) = self.held.get(&buffer.address()) {
                                for &(s, ticket) in &held.waits_for {
                                    prop_assert!(
                                        self.finished[s] >= ticket,
                                        "block {:#x} handed out before stream {} finished its use",
                                        buffer.address(),
                                        s
                                    );
                                }
                            }
                            self.held.remove(&buffer.address());
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
                    if !waits_for.is_empty() && !live.buffer.is_empty() {
                        self.held.insert(live.buffer.address(), Held { waits_for });
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
                prop_assert_eq!(after.cached_bytes, 0);
            }
            Op::CacheLimit(limit) => {
                self.allocator.set_cache_limit(limit);
                if let Some(limit) = limit {
                    let s = self.allocator.stats();
                    prop_assert!(
                        s.cached_bytes <= limit,
                        "cached {} > limit {}: {:?}",
                        s.cached_bytes,
                        limit,
                        s
                    );
                }
            }
        }
        self.check_invariants()
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let stats = self.allocator.stats();
        let live_bytes: u64 = self.live.iter().map(|l| l.buffer.len()).sum();
        prop_assert_eq!(stats.live_bytes, live_bytes);
        prop_assert_eq!(
            stats.live_count,
            self.live.iter().filter(|l| !l.buffer.is_empty()).count() as u64
        );
        prop_assert_eq!(stats.reserved_bytes, self.allocator.native().in_use());
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut harness = Harness::new();
        for op in ops {
            if std::env::var_os("POOL_MODEL_TRACE").is_some() { eprintln!("{op:?}"); }
            harness.apply(op)?;
            if std::env::var_os("POOL_MODEL_TRACE").is_some() { let s = harness.allocator.stats(); eprintln!("   cached {} pending {} live {}", s.cached_bytes, s.pending_count, s.live_count); }
        }
        // Everything returns after drop, the streams finishing, and trim.
        harness.live.clear();
        for native in &harness.natives {
            native.finish();
        }
        harness.allocator.trim();
        let stats = harness.allocator.stats();
        prop_assert_eq!(stats.live_bytes, 0);
        prop_assert_eq!(stats.reserved_bytes, 0);
        prop_assert_eq!(harness.allocator.native().in_use(), 0);
        prop_assert_eq!(stats.native_allocations, stats.native_frees);
    }
}
