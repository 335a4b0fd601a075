//! The caching pool driven by several threads at once: each thread allocates on its own
//! stream (so each stream cache's lock settles on one thread), hands some buffers to
//! another thread to drop, and one more thread trims and reads stats all the while.
//! Nothing handed out may overlap anything live, and once every buffer is back the
//! stats are exact and `trim` returns everything, the exited threads' caches included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use gpuhal_hal::pool::{Buffer, CachingAllocator, CountingMemory, CountingStream, StreamCache};
use gpuhal_hal::{MemoryKind, StreamId};
use parking_lot::Mutex;

const WORKERS: usize = 4;
const ROUNDS: usize = 20_000;

/// Live ranges, start → end, of every buffer handed out and not yet dropped.
type LiveRanges = Mutex<BTreeMap<u64, u64>>;

fn claim(live: &LiveRanges, buffer: &Buffer<CountingMemory>) {
    let (start, end) = (buffer.address(), buffer.address() + buffer.reserved_len());
    let mut live = live.lock();
    if let Some((&before, &before_end)) = live.range(..end).next_back() {
        assert!(
            before_end <= start,
            "{start:#x}..{end:#x} handed out over the live {before:#x}..{before_end:#x}"
        );
    }
    live.insert(start, end);
}

fn release(live: &LiveRanges, buffer: Buffer<CountingMemory>) {
    live.lock().remove(&buffer.address());
    drop(buffer);
}

#[test]
fn threads_allocating_dropping_across_threads_and_trimming_keep_the_pool_exact() {
    let allocator = CachingAllocator::new(CountingMemory::new(1 << 40));
    // Made here, used on the workers: each lock's bias has to move to its worker.
    let caches: Vec<Arc<StreamCache<CountingMemory>>> = (0..WORKERS)
        .map(|_| Arc::new(allocator.stream_cache(CountingStream::new(), StreamId::fresh())))
        .collect();
    let live: Arc<LiveRanges> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..WORKERS).map(|_| mpsc::channel::<Buffer<CountingMemory>>()).unzip();

    let trimmer = {
        let (allocator, done) = (allocator.clone(), done.clone());
        std::thread::spawn(move || {
            let mut trims = 0u64;
            while !done.load(Ordering::Relaxed) {
                allocator.trim();
                let stats = allocator.stats();
                assert!(stats.cached_bytes <= stats.reserved_bytes, "{stats:?}");
                trims += 1;
                // Long enough for a worker's lock to settle on it again between trims.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            trims
        })
    };

    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| {
            let cache = caches[index].clone();
            let next = senders[(index + 1) % WORKERS].clone();
            let live = live.clone();
            std::thread::spawn(move || {
                let mut kept: Vec<Buffer<CountingMemory>> = Vec::new();
                let mut seed = index as u64 * 0x9e37_79b9 + 1;
                for round in 0..ROUNDS {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let size = [512, 4096, 100_000, 1 << 20][(seed % 4) as usize];
                    let buffer = cache.allocate(size, MemoryKind::Device).expect("allocate");
                    claim(&live, &buffer);
                    match seed % 8 {
                        // To the next worker, which drops it on its thread.
                        0 => {
                            if let Err(mpsc::SendError(buffer)) = next.send(buffer) {
                                release(&live, buffer);
                            }
                        }
                        1..=2 => kept.push(buffer),
                        _ => release(&live, buffer),
                    }
                    if kept.len() > 16 || round % 64 == 0 {
                        for buffer in kept.drain(..) {
                            release(&live, buffer);
                        }
                    }
                    while let Ok(buffer) = inbox.try_recv() {
                        release(&live, buffer);
                    }
                }
                for buffer in kept {
                    release(&live, buffer);
                }
                inbox
            })
        })
        .collect();
    drop(senders);
    // The workers have exited once joined; drain what was sent to them last.
    let inboxes: Vec<_> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    for inbox in inboxes {
        while let Ok(buffer) = inbox.try_recv() {
            release(&live, buffer);
        }
    }
    done.store(true, Ordering::Relaxed);
    let trims = trimmer.join().expect("trimmer");
    assert!(trims > 0);

    let stats = allocator.stats();
    assert_eq!(stats.live_bytes, 0, "{stats:?}");
    assert_eq!(stats.live_count, 0);
    assert_eq!(stats.pending_count, 0);
    assert_eq!(stats.cache_hits + stats.cache_misses, (WORKERS * ROUNDS) as u64);
    assert!(stats.cache_hits > stats.cache_misses, "{stats:?}");
    // The caches of threads that have exited are reached: trim leaves nothing reserved.
    let released = allocator.trim();
    assert_eq!(released, stats.cached_bytes);
    let after = allocator.stats();
    assert_eq!(after.reserved_bytes, 0, "{after:?}");
    assert_eq!(after.cached_bytes, 0);
    assert_eq!(allocator.native().in_use(), 0);
}
