//! The pipelined hand-off: per thread a producer and a consumer stream. Each step
//! allocates a buffer on the producer (uniform random size, 8 KiB–4 MiB in 512-byte
//! steps) and fills it; an event orders the consumer after it; the consumer, busy first
//! with a longer fill of its own scratch buffer (its "kernel"), copies the buffer into
//! one allocated on the consumer; the producer's buffer gets `record_use(consumer)` and
//! is dropped, and the producer at once allocates and fills another of the same size.
//! The producer runs up to [`LAG`] steps ahead of the consumer.
//!
//! Every policy runs on a fresh device, so each row's peaks are its own. Every 64th step
//! the consumer's copy is read back and compared with what the producer wrote: a buffer
//! handed out again before the consumer's copy had read it shows up as wrong bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use gpuhal_hal::{Backend, Device, Event, MemoryKind, Stream};

use crate::harness::{Settings, SplitMix, Summary};
use crate::report::Report;

/// Threads, each with its producer and consumer stream.
pub const THREADS: usize = 8;
/// Steps the producer may run ahead of the consumer.
pub const LAG: usize = 8;
/// Smallest and largest sizes, and their step.
pub const SIZES: (u64, u64, u64) = (8 << 10, 4 << 20, 512);
/// Every this many steps, the consumer's copy is read back and checked.
const VERIFY_EVERY: u64 = 64;

/// A release policy the hand-off runs under.
pub struct Policy {
    /// Row id suffix.
    pub id: &'static str,
    /// What it is, for the row's label.
    pub words: &'static str,
    /// Sets it on a fresh device's allocator.
    pub apply: fn(&gpuhal_hal::pool::PoolConfig) -> gpuhal_hal::pool::PoolConfig,
}

/// The policies compared: the default, the default before the reserve floor (1% slack,
/// any idle block released to it), and never releasing (the ceiling for hit rate).
pub const POLICIES: [Policy; 3] = [
    Policy {
        id: "default",
        words: "default policy",
        apply: |c| *c,
    },
    Policy {
        id: "slack1",
        words: "1% slack, no floor (the default before)",
        apply: |c| gpuhal_hal::pool::PoolConfig {
            reserve_floor: 0,
            release_after_misses: 0,
            reserve_slack: 0.01,
            ..*c
        },
    },
    Policy {
        id: "never",
        words: "never release (infinite slack)",
        apply: |c| gpuhal_hal::pool::PoolConfig {
            reserve_slack: f64::INFINITY,
            ..*c
        },
    },
];

/// What one policy's run measured.
struct Outcome {
    /// The allocator's statistics when the timed rounds began.
    warm: gpuhal_hal::MemoryStats,
    rates: Vec<f64>,
    handoffs: u64,
    wrong_bytes: u64,
    verified_bytes: u64,
}

/// Runs the hand-off under every policy, each on a device from `open`, adding a row each.
pub fn rows<B: Backend>(
    open: &dyn Fn() -> Result<B::Device>,
    settings: &Settings,
    consumer_bytes: u64,
    report: &mut Report,
) -> Result<()> {
    let threads = if settings.smoke { 2 } else { THREADS };
    let rounds = settings.batches().min(5);
    let round = if settings.smoke {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    for policy in &POLICIES {
        let device = open()?;
        let allocator = device.allocator();
        let config = (policy.apply)(&allocator.config());
        allocator.set_reserve_slack(config.reserve_slack);
        allocator.set_reserve_floor(config.reserve_floor);
        allocator.set_release_after_misses(config.release_after_misses);
        let outcome = run::<B>(&device, threads, rounds, round, consumer_bytes)?;
        let (warm, stats) = (&outcome.warm, device.memory_stats());
        // Over the timed rounds only: the cold cache's first misses are not the policy's.
        let hits = (stats.cache_hits - warm.cache_hits) as f64;
        let hit_rate = hits / (hits + (stats.cache_misses - warm.cache_misses) as f64).max(1.0);
        let summary = Summary::of(&outcome.rates).ok_or_else(|| anyhow!("no hand-off rounds ran"))?;
        report.measured_with_note(
            &format!("handoff.gpuhal.{}", policy.id),
            "handoff",
            &format!(
                "{threads} threads, producer → lagging consumer, 8 KiB–4 MiB: {}",
                policy.words
            ),
            "k hand-offs/s",
            summary,
            format!(
                "hit rate {:.1}% (timed rounds), {} native allocations in them, peak reserved {:.0} MiB = {:.2} × peak live, {} hand-offs, {} wrong bytes of {} checked",
                hit_rate * 100.0,
                stats.native_allocations - warm.native_allocations,
                stats.peak_reserved_bytes as f64 / (1u64 << 20) as f64,
                stats.peak_reserved_bytes as f64 / stats.peak_live_bytes.max(1) as f64,
                outcome.handoffs,
                outcome.wrong_bytes,
                outcome.verified_bytes,
            ),
        );
        report.measured(
            &format!("handoff.hit_rate.{}", policy.id),
            "handoff",
            &format!("hit rate: {}", policy.words),
            "%",
            Summary::single(hit_rate * 100.0),
        );
        if outcome.wrong_bytes != 0 {
            return Err(anyhow!(
                "hand-off ({}): {} wrong bytes of {} checked",
                policy.words,
                outcome.wrong_bytes,
                outcome.verified_bytes
            ));
        }
    }
    Ok(())
}

fn run<B: Backend>(
    device: &B::Device,
    threads: usize,
    rounds: usize,
    round: Duration,
    consumer_bytes: u64,
) -> Result<Outcome> {
    let handoffs = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    let verified = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None::<anyhow::Error>);
    let stop = AtomicBool::new(false);
    let mut rates = Vec::new();
    let mut warm = None;
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (handoffs, wrong, verified, failure, stop) = (&handoffs, &wrong, &verified, &failure, &stop);
            scope.spawn(move || {
                let result = worker::<B>(device, thread as u64, consumer_bytes, stop, handoffs, wrong, verified);
                if let Err(err) = result {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = failure.lock() {
                        slot.get_or_insert(err);
                    }
                }
            });
        }
        // One warm-up round, then the timed ones.
        std::thread::sleep(round);
        warm = Some(device.memory_stats());
        for _ in 0..rounds {
            let (before, start) = (handoffs.load(Ordering::Relaxed), Instant::now());
            std::thread::sleep(round);
            let done = handoffs.load(Ordering::Relaxed) - before;
            rates.push(done as f64 / start.elapsed().as_secs_f64() / 1e3);
        }
        stop.store(true, Ordering::Relaxed);
    });
    if let Some(err) = failure.into_inner().ok().flatten() {
        return Err(err);
    }
    Ok(Outcome {
        warm: warm.unwrap_or_default(),
        rates,
        handoffs: handoffs.into_inner(),
        wrong_bytes: wrong.into_inner(),
        verified_bytes: verified.into_inner(),
    })
}

fn worker<B: Backend>(
    device: &B::Device,
    seed: u64,
    consumer_bytes: u64,
    stop: &AtomicBool,
    handoffs: &AtomicU64,
    wrong: &AtomicU64,
    verified: &AtomicU64,
) -> Result<()> {
    let producer = device.create_stream()?;
    let consumer = device.create_stream()?;
    let scratch = device.allocate(consumer_bytes, MemoryKind::Device, &consumer)?;
    let mut rng = SplitMix::new(0x4A4D ^ seed);
    let mut in_flight: VecDeque<B::Event> = VecDeque::with_capacity(LAG + 1);
    let mut host = Vec::new();
    let (low, high, step) = SIZES;
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        index += 1;
        let size = low + rng.below((high - low) / step + 1) * step;
        let value = (index % 251) as u8 + 1;
        let handed = device.allocate(size, MemoryKind::Device, &producer)?;
        producer.fill(&handed, 0, size, value)?;
        let filled = device.event(false)?;
        filled.record(&producer)?;
        consumer.wait_event(&filled)?;
        consumer.fill(&scratch, 0, consumer_bytes, value)?;
        let copy = device.allocate(size, MemoryKind::Device, &consumer)?;
        consumer.copy(&handed, 0, &copy, 0, size)?;
        handed.record_use(consumer.cache());
        drop(handed);
        // The same size again at once: the block just dropped still waits on the consumer.
        let again = device.allocate(size, MemoryKind::Device, &producer)?;
        producer.fill(&again, 0, size, !value)?;
        drop(again);
        if index.is_multiple_of(VERIFY_EVERY) {
            host.resize(size as usize, 0);
            consumer.read(&copy, 0, &mut host)?;
            let bad = host.iter().filter(|&&b| b != value).count() as u64;
            wrong.fetch_add(bad, Ordering::Relaxed);
            verified.fetch_add(size, Ordering::Relaxed);
        }
        drop(copy);
        let copied = device.event(false)?;
        copied.record(&consumer)?;
        in_flight.push_back(copied);
        if in_flight.len() > LAG {
            if let Some(oldest) = in_flight.pop_front() {
                oldest.synchronize()?;
            }
        }
        handoffs.fetch_add(1, Ordering::Relaxed);
    }
    consumer.synchronize()?;
    producer.synchronize()?;
    Ok(())
}
