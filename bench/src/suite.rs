//! The backend-generic benchmarks: everything measured through gpuhal's traits, so the
//! same code runs over the mock and over CUDA. Native baselines live beside them, in the
//! backend's own module, and fill in rows with the same ids.

use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use gpuhal_hal::{Backend, Capabilities, Device, Event, Fence, Graph, GraphExec, ManagedPolicy, MemoryKind, Stream};

use crate::harness::{each_us, ns_per_op, thread_cpu_time, CpuTime, Settings, SplitMix, Summary};
use crate::noop::pool_alone;
use crate::report::{Report, NOT_ON_BACKEND};

/// Sizes of the cache-hit benchmark, with the suffix of their row ids.
pub const HIT_SIZES: [(u64, &str, &str); 2] = [(512, "512", "512 B"), (1 << 20, "1m", "1 MiB")];
/// Buffers alive at once in the churn benchmark.
pub const CHURN_LIVE: usize = 256;
/// Smallest and largest churn sizes.
pub const CHURN_SIZES: (u64, u64) = (512, 16 << 20);
/// Distinct sizes in the "recurring" churn variant.
pub const CHURN_RECURRING: usize = 64;
/// Thread counts of the scaling benchmark.
pub const THREAD_COUNTS: [usize; 3] = [1, 2, 8];
/// Buffers the producer of the cross-thread benchmark hands to its consumer at a time.
pub const CROSS_THREAD_BATCH: usize = 64;
/// Live buffers in the memory report benchmark.
pub const REPORT_LIVE: usize = 10_000;
/// Operations per graph in the graph benchmark.
pub const GRAPH_OPS: usize = 100;
/// Bytes each small graph operation touches.
const GRAPH_OP_BYTES: u64 = 4096;

/// A pre-generated churn workload: which slot to replace and with what size, so every
/// backend (and the native baseline) replays the very same sequence.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// Sizes of the initial live set.
    pub initial: Vec<u64>,
    /// (slot, new size) per replacement.
    pub steps: Vec<(usize, u64)>,
}

impl ChurnPlan {
    /// Random sizes: every allocation draws a fresh log-uniform size in [`CHURN_SIZES`].
    pub fn random(seed: u64) -> ChurnPlan {
        let mut rng = SplitMix::new(seed);
        let (low, high) = CHURN_SIZES;
        Self::build(&mut rng, |rng| rng.log_uniform(low, high))
    }

    /// Recurring sizes: draws from [`CHURN_RECURRING`] log-uniform sizes fixed up front,
    /// as a training or inference loop does.
    pub fn recurring(seed: u64) -> ChurnPlan {
        let mut rng = SplitMix::new(seed);
        let (low, high) = CHURN_SIZES;
        let menu: Vec<u64> = (0..CHURN_RECURRING).map(|_| rng.log_uniform(low, high)).collect();
        Self::build(&mut rng, |rng| menu[rng.below(menu.len() as u64) as usize])
    }

    fn build(rng: &mut SplitMix, mut size: impl FnMut(&mut SplitMix) -> u64) -> ChurnPlan {
        let initial = (0..CHURN_LIVE).map(|_| size(rng)).collect();
        let steps = (0..1 << 16)
            .map(|_| (rng.below(CHURN_LIVE as u64) as usize, size(rng)))
            .collect();
        ChurnPlan { initial, steps }
    }

    /// Replays the plan through `allocate`: fills the live set, then per batch replaces
    /// `iterations` random slots (a free and an allocate each, 2 ops). Returns ns per op.
    pub fn run<T>(
        &self,
        settings: &Settings,
        iterations: usize,
        mut allocate: impl FnMut(u64) -> Result<T>,
    ) -> Result<Summary> {
        let mut live: Vec<Option<T>> = Vec::with_capacity(CHURN_LIVE);
        for &size in &self.initial {
            live.push(Some(allocate(size)?));
        }
        let mut cursor = 0usize;
        ns_per_op(settings, iterations, 2, |n| {
            let start = Instant::now();
            for _ in 0..n {
                let (slot, size) = self.steps[cursor];
                cursor = (cursor + 1) % self.steps.len();
                live[slot] = None;
                live[slot] = Some(allocate(size)?);
            }
            Ok(start.elapsed())
        })
    }
}

/// One named benchmark step, adding rows to a report.
pub type Step<'a> = (&'static str, &'a dyn Fn(&mut Report) -> Result<()>);

/// Backend-specific sizes.
pub struct SuiteOptions {
    /// Bytes copied in the Device bandwidth benchmark.
    pub device_copy_bytes: u64,
    /// Bytes of each of the two managed buffers (their sum stays ≤ 1 GiB).
    pub managed_copy_bytes: u64,
    /// Bytes the hand-off's consumer fills before each copy (its longer kernel).
    pub handoff_consumer_bytes: u64,
}

/// Runs every gpuhal-side benchmark on `device`, adding rows to `report`.
pub fn run<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    options: &SuiteOptions,
    report: &mut Report,
) -> Result<()> {
    let steps: [Step; 9] = [
        ("cache-hit", &|r| cache_hit::<B>(device, settings, r)),
        ("churn", &|r| churn::<B>(device, settings, r)),
        ("thread scaling", &|r| thread_scaling::<B>(device, settings, r)),
        ("cross-thread", &|r| cross_thread::<B>(device, settings, r)),
        ("events", &|r| events::<B>(device, settings, r)),
        ("graph replay", &|r| graph_replay::<B>(device, settings, r)),
        ("graph memory", &|r| graph_memory::<B>(device, r)),
        ("bandwidth", &|r| bandwidth::<B>(device, settings, options, r)),
        // Last: the mock's misuse checker keeps state per stream-to-stream fence wait, which
        // would slow every later operation on that device.
        ("fences", &|r| fences::<B>(device, settings, r)),
    ];
    run_steps(&steps, settings, report, "benchmark")
}

/// Runs the steps `settings` wants, saying on stderr how long each took.
pub fn run_steps(steps: &[Step], settings: &Settings, report: &mut Report, what: &str) -> Result<()> {
    for (name, step) in steps.iter().filter(|(name, _)| settings.wants(name)) {
        let start = Instant::now();
        step(report).with_context(|| format!("{what} {name}"))?;
        eprintln!("  {name}: {:.1} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The caching pool over counting native memory: the pool's own cost, whatever the backend.
pub fn pool_alone_rows(settings: &Settings, report: &mut Report) -> Result<()> {
    let (_allocator, cache) = pool_alone();
    for (size, suffix, words) in HIT_SIZES {
        drop(cache.allocate(size, MemoryKind::Device)?);
        let summary = ns_per_op(settings, settings.iterations(200_000), 1, |n| {
            let start = Instant::now();
            for _ in 0..n {
                black_box(cache.allocate(black_box(size), MemoryKind::Device)?);
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        })?;
        let label = format!("caching pool alone (no-op native), {words}");
        report.measured_with_note(
            &format!("hit.pool.{suffix}"),
            "cache-hit",
            &label,
            "ns/pair",
            summary,
            lock_note(),
        );
    }
    // What a hit pair's two lock round trips (allocate and drop each lock the stream's cache
    // once) cost on a plain spin lock, with nothing else around them. The stream cache's
    // lock is biased to the thread that drives the stream, which takes it with no atomic
    // read-modify-write, so this is what the bias saves a pair on this host (the pair
    // still pays the bias's few plain loads and stores).
    let lock = spin::mutex::SpinMutex::<u64, spin::relax::Yield>::new(0);
    let summary = ns_per_op(settings, settings.iterations(200_000), 1, |n| {
        let start = Instant::now();
        for _ in 0..n {
            *black_box(&lock).lock() += 1;
            *black_box(&lock).lock() += 1;
        }
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    report.measured(
        "hit.floor.locks",
        "cache-hit",
        "two uncontended lock + unlock round trips of a spin lock (what a hit pair saves on its biased locks)",
        "ns/pair",
        summary,
    );
    memory_report_row(settings, report)?;
    traced_hit_rows(settings, report)?;
    for (plan, suffix, words) in churn_plans() {
        let (allocator, cache) = pool_alone();
        let summary = plan.run(settings, settings.iterations(20_000), |size| {
            Ok(cache.allocate(size, MemoryKind::Device)?)
        })?;
        let stats = allocator.stats();
        let label = format!("caching pool alone (no-op native), {words}");
        report.measured_with_note(
            &format!("churn.pool.{suffix}"),
            "churn",
            &label,
            "ns/op",
            summary,
            churn_note(
                stats.hit_rate(),
                stats.native_allocations,
                stats.native_frees,
                stats.cache_hits + stats.cache_misses,
            ),
        );
    }
    Ok(())
}

/// The pool-alone hit rows' note where the stream caches' locks are biased to their thread.
pub const LOCKS_BIASED_NOTE: &str = "locks biased to their thread (membarrier available)";

/// Whether the stream caches' locks were biased to their thread in this process.
pub fn lock_note() -> String {
    if gpuhal_hal::locks_biased() {
        LOCKS_BIASED_NOTE.into()
    } else {
        "locks not biased: membarrier(PRIVATE_EXPEDITED) unavailable, plain spin locks".into()
    }
}

/// The cache-hit pair (512 B, pool alone) with a `tracing` subscriber installed whose
/// filter turns gpuhal's own targets off, beside the same pair with none installed, batch
/// by batch in one run (alternating which goes first): the hit path has no tracing call
/// site, so the difference is noise.
fn traced_hit_rows(settings: &Settings, report: &mut Report) -> Result<()> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;

    let (_allocator, cache) = pool_alone();
    drop(cache.allocate(512, MemoryKind::Device)?);
    let iterations = settings.iterations(200_000);
    let batch = || -> Result<f64> {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(cache.allocate(black_box(512), MemoryKind::Device)?);
        }
        Ok(start.elapsed().as_nanos() as f64 / iterations as f64)
    };
    let filter = Targets::new()
        .with_target("gpuhal_hal", LevelFilter::OFF)
        .with_default(LevelFilter::TRACE);
    let subscriber = tracing_subscriber::registry().with(filter);
    let dispatch = tracing::Dispatch::new(subscriber);
    let (mut bare, mut traced, mut differences) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..settings.warmup_batches() + settings.batches() {
        // Which goes first alternates, so that an order effect cancels out.
        let (none, with) = if round % 2 == 0 {
            let none = batch()?;
            (none, tracing::dispatcher::with_default(&dispatch, batch)?)
        } else {
            let with = tracing::dispatcher::with_default(&dispatch, batch)?;
            (batch()?, with)
        };
        if round >= settings.warmup_batches() {
            bare.push(none);
            traced.push(with);
            differences.push(with - none);
        }
    }
    let summary = |values: &[f64]| Summary::of(values).unwrap_or(Summary::single(f64::NAN));
    report.measured(
        "hit.pool.512.untraced",
        "tracing",
        "caching pool alone, 512 B, no tracing subscriber (paired with the next row)",
        "ns/pair",
        summary(&bare),
    );
    report.measured(
        "hit.pool.512.traced",
        "tracing",
        "caching pool alone, 512 B, a tracing subscriber installed with gpuhal's targets filtered out",
        "ns/pair",
        summary(&traced),
    );
    report.measured(
        "hit.pool.512.traced_minus_untraced",
        "tracing",
        "difference of the two rows above, batch by batch",
        "ns/pair",
        summary(&differences),
    );
    Ok(())
}

/// The memory report over [`REPORT_LIVE`] live buffers of random sizes (512 B–16 MiB),
/// some cut from idle blocks, beside idle blocks and pieces: the time to read and build it.
fn memory_report_row(settings: &Settings, report: &mut Report) -> Result<()> {
    let (allocator, cache) = pool_alone();
    let mut rng = SplitMix::new(0x5EED);
    let (low, high) = CHURN_SIZES;
    let mut live = Vec::with_capacity(REPORT_LIVE + REPORT_LIVE / 4);
    for _ in 0..REPORT_LIVE + REPORT_LIVE / 4 {
        live.push(cache.allocate(rng.log_uniform(low, high), MemoryKind::Device)?);
    }
    for _ in 0..REPORT_LIVE / 2 {
        let index = rng.below(live.len() as u64) as usize;
        drop(live.swap_remove(index));
    }
    // Served from the idle blocks where they fit: cut allocations with live and idle pieces.
    for _ in 0..REPORT_LIVE / 4 {
        live.push(cache.allocate(rng.log_uniform(low, high), MemoryKind::Device)?);
    }
    let live_count = live.len();
    let mut pieces = 0;
    let summary = each_us(settings.warmup_batches(), settings.samples(30), || {
        let start = Instant::now();
        let memory = black_box(allocator.report());
        let elapsed = start.elapsed();
        pieces = memory.allocations.iter().map(|a| a.pieces.len()).sum::<usize>();
        Ok::<_, anyhow::Error>(elapsed)
    })?;
    report.measured_with_note(
        "report.pool.10k",
        "report",
        &format!("memory report, {live_count} live buffers (pool alone)"),
        "µs",
        summary,
        format!(
            "{pieces} pieces in {} native allocations",
            allocator.stats().reserved_count
        ),
    );
    Ok(())
}

fn churn_plans() -> [(ChurnPlan, &'static str, &'static str); 2] {
    [
        (
            ChurnPlan::random(0x5EED),
            "random",
            "random sizes 512 B–16 MiB, 256 live",
        ),
        (
            ChurnPlan::recurring(0x5EED),
            "recurring",
            "64 recurring sizes 512 B–16 MiB, 256 live",
        ),
    ]
}

/// The churn row's note, from the allocator's counters over the measured span: what the
/// misses cost shows up in native allocations and frees (evictions), not in the hit rate.
fn churn_note(hit_rate: f64, native_allocations: u64, native_frees: u64, requests: u64) -> String {
    format!(
        "hit rate {:.1}%, {native_allocations} native allocations and {native_frees} native frees in {requests} requests",
        hit_rate * 100.0,
    )
}

fn cache_hit<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    let stream = device.create_stream()?;
    for (size, suffix, words) in HIT_SIZES {
        // The first allocation misses; every later one is a hit.
        drop(device.allocate(size, MemoryKind::Device, &stream)?);
        let before = device.memory_stats();
        let summary = ns_per_op(settings, settings.iterations(200_000), 1, |n| {
            let start = Instant::now();
            for _ in 0..n {
                black_box(device.allocate(black_box(size), MemoryKind::Device, &stream)?);
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        })?;
        let after = device.memory_stats();
        let label = format!("gpuhal allocate + drop, {words}");
        let native_calls = after.native_allocations - before.native_allocations;
        report.measured_with_note(
            &format!("hit.gpuhal.{suffix}"),
            "cache-hit",
            &label,
            "ns/pair",
            summary,
            format!("{native_calls} native allocations while timed"),
        );
    }
    stream.synchronize()?;
    Ok(())
}

fn churn<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    for (plan, suffix, words) in churn_plans() {
        let stream = device.create_stream()?;
        let before = device.memory_stats();
        let summary = plan.run(settings, settings.iterations(20_000), |size| {
            Ok(device.allocate(size, MemoryKind::Device, &stream)?)
        })?;
        let after = device.memory_stats();
        stream.synchronize()?;
        let label = format!("gpuhal, {words}");
        report.measured_with_note(
            &format!("churn.gpuhal.{suffix}"),
            "churn",
            &label,
            "ns/op",
            summary,
            churn_note(
                ratio_or_zero(
                    after.cache_hits - before.cache_hits,
                    after.cache_misses - before.cache_misses,
                ),
                after.native_allocations - before.native_allocations,
                after.native_frees - before.native_frees,
                after.cache_hits + after.cache_misses - before.cache_hits - before.cache_misses,
            ),
        );
        // Leave the next benchmark a clean allocator.
        device.allocator().trim();
    }
    Ok(())
}

fn ratio_or_zero(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

fn thread_scaling<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    for threads in THREAD_COUNTS {
        let streams = (0..threads)
            .map(|_| device.create_stream())
            .collect::<gpuhal_hal::Result<Vec<_>>>()?;
        let summary = aggregate_rate(settings, &streams, |stream| {
            device.allocate(black_box(512), MemoryKind::Device, stream).map(drop)
        })
        .with_context(|| format!("{threads} threads allocating"))?;
        let label = format!("gpuhal, {threads} thread(s), own stream each, alloc + drop 512 B, aggregate");
        report.measured(
            &format!("threads.gpuhal.{threads}"),
            "threads",
            &label,
            "M pairs/s",
            summary,
        );
    }
    Ok(())
}

/// Allocates 512 B buffers on one thread and drops them on another, through the device.
fn cross_thread<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    let stream = device.create_stream()?;
    drop(device.allocate(512, MemoryKind::Device, &stream)?);
    let summary = cross_thread_pairs(settings, || {
        device.allocate(black_box(512), MemoryKind::Device, &stream)
    })
    .context("allocating on one thread and dropping on another")?;
    report.measured(
        "xthread.gpuhal",
        "cross-thread",
        &format!("gpuhal, allocate 512 B on one thread, drop on another, batches of {CROSS_THREAD_BATCH}"),
        "ns/pair",
        summary,
    );
    stream.synchronize()?;
    Ok(())
}

/// A producer (this thread) fills batches of [`CROSS_THREAD_BATCH`] buffers from
/// `allocate` and hands each to a consumer thread, which drops it, as a loader thread
/// handing tensors to a training thread does: every buffer goes back to its stream's cache
/// from a thread other than the one that took it out. Returns ns per allocate + drop pair,
/// timed until the consumer has dropped the last batch of a run.
fn cross_thread_pairs<T: Send>(settings: &Settings, allocate: impl Fn() -> gpuhal_hal::Result<T>) -> Result<Summary> {
    let batches = settings.iterations(200_000).div_ceil(CROSS_THREAD_BATCH);
    // `None` ends a run; the consumer answers it once everything before it is dropped.
    let (to_consumer, incoming) = std::sync::mpsc::sync_channel::<Option<Vec<T>>>(4);
    let (dropped_all, run_done) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Ok(message) = incoming.recv() {
                match message {
                    Some(batch) => drop(batch),
                    None => {
                        if dropped_all.send(()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let gone = || anyhow!("the consumer thread stopped");
        let summary = ns_per_op(settings, batches, CROSS_THREAD_BATCH, |n| {
            let start = Instant::now();
            for _ in 0..n {
                let batch = (0..CROSS_THREAD_BATCH)
                    .map(|_| allocate())
                    .collect::<gpuhal_hal::Result<Vec<T>>>()?;
                to_consumer.send(Some(batch)).map_err(|_| gone())?;
            }
            to_consumer.send(None).map_err(|_| gone())?;
            run_done.recv().map_err(|_| gone())?;
            Ok::<_, anyhow::Error>(start.elapsed())
        });
        // Ends the consumer's loop.
        drop(to_consumer);
        summary
    })
}

/// The same over the pool alone (counting native memory): separates the pool's scaling from
/// the backend's.
pub fn pool_alone_thread_rows(settings: &Settings, report: &mut Report) -> Result<()> {
    for threads in THREAD_COUNTS {
        let (allocator, _) = pool_alone();
        let caches: Vec<_> = (0..threads)
            .map(|_| allocator.stream_cache(gpuhal_hal::pool::CountingStream::new(), gpuhal_hal::StreamId::fresh()))
            .collect();
        let summary = aggregate_rate(settings, &caches, |cache| {
            cache.allocate(black_box(512), MemoryKind::Device).map(drop)
        })?;
        let label = format!("pool alone, {threads} thread(s), own stream each, alloc + drop 512 B, aggregate");
        report.measured(
            &format!("threads.pool.{threads}"),
            "threads",
            &label,
            "M pairs/s",
            summary,
        );
    }
    let (_allocator, cache) = pool_alone();
    drop(cache.allocate(512, MemoryKind::Device)?);
    let summary = cross_thread_pairs(settings, || cache.allocate(black_box(512), MemoryKind::Device))?;
    report.measured(
        "xthread.pool",
        "cross-thread",
        &format!("pool alone, allocate 512 B on one thread, drop on another, batches of {CROSS_THREAD_BATCH}"),
        "ns/pair",
        summary,
    );
    Ok(())
}

/// One thread per stream, each doing `pair(stream)` in a loop; rounds start and end
/// together. Returns the aggregate rate in million pairs per second.
fn aggregate_rate<S: Sync>(
    settings: &Settings,
    streams: &[S],
    pair: impl Fn(&S) -> gpuhal_hal::Result<()> + Sync,
) -> Result<Summary> {
    let pairs = settings.iterations(200_000);
    let threads = streams.len();
    let rounds = settings.warmup_batches() + settings.batches();
    let start_line = Barrier::new(threads + 1);
    let finish_line = Barrier::new(threads + 1);
    let failure: Mutex<Option<gpuhal_hal::Error>> = Mutex::new(None);
    let mut rates = Vec::new();
    std::thread::scope(|scope| {
        for stream in streams {
            let (start_line, finish_line, failure, pair) = (&start_line, &finish_line, &failure, &pair);
            scope.spawn(move || {
                for _ in 0..rounds {
                    start_line.wait();
                    for _ in 0..pairs {
                        if let Err(err) = pair(stream) {
                            if let Ok(mut slot) = failure.lock() {
                                slot.get_or_insert(err);
                            }
                            break;
                        }
                    }
                    finish_line.wait();
                }
            });
        }
        for round in 0..rounds {
            start_line.wait();
            let start = Instant::now();
            finish_line.wait();
            let elapsed = start.elapsed();
            if round >= settings.warmup_batches() {
                rates.push((threads * pairs) as f64 / elapsed.as_secs_f64() / 1e6);
            }
        }
    });
    if let Some(err) = failure.into_inner().ok().flatten() {
        return Err(anyhow!(err));
    }
    Summary::of(&rates).ok_or_else(|| anyhow!("no thread-scaling rounds ran"))
}

fn events<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    let stream = device.create_stream()?;
    let iterations = settings.iterations(50_000);
    // Warm the pool: one event is all a record-and-release loop needs.
    for _ in 0..16 {
        device.event(false)?.record(&stream)?;
    }
    stream.synchronize()?;
    let created_before = device.event_stats().native_created;
    let cycle = ns_per_op(settings, iterations, 1, |n| {
        let start = Instant::now();
        for _ in 0..n {
            let event = device.event(false)?;
            event.record(&stream)?;
            drop(black_box(event));
        }
        let elapsed = start.elapsed();
        stream.synchronize()?;
        Ok::<_, anyhow::Error>(elapsed)
    })?;
    let created = device.event_stats().native_created - created_before;
    report.measured(
        "event.gpuhal.cycle",
        "events",
        "gpuhal event acquire + record + release",
        "ns",
        cycle,
    );

    let held = device.event(false)?;
    let record = ns_per_op(settings, iterations, 1, |n| {
        let start = Instant::now();
        for _ in 0..n {
            held.record(&stream)?;
        }
        let elapsed = start.elapsed();
        stream.synchronize()?;
        Ok::<_, anyhow::Error>(elapsed)
    })?;
    report.measured(
        "event.gpuhal.record",
        "events",
        "gpuhal record of a held event",
        "ns",
        record,
    );
    report.measured(
        "event.gpuhal.created",
        "events",
        "native events created during the timed acquire loops (after warm-up)",
        "count",
        Summary::single(created as f64),
    );
    Ok(())
}

fn fences<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    if !device.capabilities().contains(Capabilities::TIMELINE_FENCE) {
        for (id, label) in FENCE_ROWS {
            report.missing(id, "fence", label, "µs", "no timeline fences on this device");
        }
        return Ok(());
    }
    let timeout = Duration::from_secs(10);
    let (a, b) = (device.create_stream()?, device.create_stream()?);
    let (f, g) = (device.create_fence(0)?, device.create_fence(0)?);
    let mut value = 0u64;
    let samples = settings.samples(300);
    let warmup = settings.samples(20);

    let gpu_to_cpu = each_us(warmup, samples, || {
        value += 1;
        let start = Instant::now();
        a.signal(&f, value)?;
        f.wait(value, timeout)?;
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    report.measured("fence.gpu_to_cpu", "fence", FENCE_ROWS[0].1, "µs", gpu_to_cpu);

    let mut value_g = 0u64;
    let cpu_stream_cpu = each_us(warmup, samples, || {
        value += 1;
        value_g += 1;
        b.wait(&f, value)?;
        b.signal(&g, value_g)?;
        let start = Instant::now();
        f.signal(value)?;
        g.wait(value_g, timeout)?;
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    report.measured("fence.cpu_stream_cpu", "fence", FENCE_ROWS[1].1, "µs", cpu_stream_cpu);

    let stream_stream_cpu = each_us(warmup, samples, || {
        value += 1;
        value_g += 1;
        b.wait(&f, value)?;
        b.signal(&g, value_g)?;
        let start = Instant::now();
        a.signal(&f, value)?;
        g.wait(value_g, timeout)?;
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    report.measured(
        "fence.stream_stream_cpu",
        "fence",
        FENCE_ROWS[2].1,
        "µs",
        stream_stream_cpu,
    );

    // A long wait: stream B waits on the device for a signal a sleeping CPU thread gives
    // after `hold`; this thread waits on B's follow-up signal. CPU time spent meanwhile
    // shows whether anyone spins.
    let hold = if settings.smoke {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(500)
    };
    value += 1;
    value_g += 1;
    b.wait(&f, value)?;
    b.signal(&g, value_g)?;
    let (before, start) = (CpuTime::now(), Instant::now());
    let waited = std::thread::scope(|scope| {
        let signaller = scope.spawn(|| {
            std::thread::sleep(hold);
            f.signal(value)
        });
        let waited = g.wait(value_g, timeout);
        match signaller.join() {
            Ok(signalled) => signalled.and(waited),
            Err(_) => Err(gpuhal_hal::Error::invalid(
                "fence benchmark",
                "signalling thread panicked",
            )),
        }
    });
    waited?;
    let (after, wall) = (CpuTime::now(), start.elapsed());
    let share = |cpu: Duration| 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
    report.measured_with_note(
        "fence.wait_cpu",
        "fence",
        FENCE_ROWS[3].1,
        "% of a core",
        Summary::single(share(after.process.saturating_sub(before.process))),
        format!("wait of {:.0} ms", wall.as_secs_f64() * 1e3),
    );
    report.measured(
        "fence.wait_cpu_thread",
        "fence",
        FENCE_ROWS[4].1,
        "% of a core",
        Summary::single(share(after.thread.saturating_sub(before.thread))),
    );
    a.synchronize()?;
    b.synchronize()?;
    Ok(())
}

const FENCE_ROWS: [(&str, &str); 5] = [
    (
        "fence.gpu_to_cpu",
        "stream signal → CPU wait returns (enqueue included)",
    ),
    (
        "fence.cpu_stream_cpu",
        "CPU signal → waiting stream B → B's signal → CPU wait returns",
    ),
    (
        "fence.stream_stream_cpu",
        "stream A signal → waiting stream B → B's signal → CPU wait returns",
    ),
    ("fence.wait_cpu", "CPU time during a long fence wait, whole process"),
    (
        "fence.wait_cpu_thread",
        "CPU time during a long fence wait, waiting thread",
    ),
];

const GRAPH_ROWS: [(&str, &str); 4] = [
    (
        "graph.eager.cpu",
        "100 small ops (4 KiB fill/copy) eager: submit, thread CPU time",
    ),
    (
        "graph.replay.cpu",
        "replay of the same 100 captured: launch, thread CPU time",
    ),
    ("graph.eager.e2e", "100 small ops eager: submit + synchronize, wall"),
    ("graph.replay.e2e", "replay of the 100: launch + synchronize, wall"),
];

fn graph_replay<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    if !device.capabilities().contains(Capabilities::GRAPHS) {
        for (id, label) in GRAPH_ROWS {
            report.missing(id, "graph", label, "µs/iter", "no graphs on this device");
        }
        return Ok(());
    }
    let stream = device.create_stream()?;
    let buffer = device.allocate(GRAPH_OPS as u64 * GRAPH_OP_BYTES, MemoryKind::Device, &stream)?;
    let work = |s: &B::Stream| -> gpuhal_hal::Result<()> {
        for op in 0..GRAPH_OPS as u64 {
            let offset = op * GRAPH_OP_BYTES;
            if op % 2 == 0 {
                s.fill(&buffer, offset, GRAPH_OP_BYTES, op as u8)?;
            } else {
                s.copy(&buffer, offset - GRAPH_OP_BYTES, &buffer, offset, GRAPH_OP_BYTES)?;
            }
        }
        Ok(())
    };
    let pool = device.graph_pool();
    let (graph, ()) = stream.capture(&pool, work)?;
    if graph.node_count() < GRAPH_OPS {
        return Err(anyhow!(
            "captured {} operations, expected {GRAPH_OPS}",
            graph.node_count()
        ));
    }
    let exec = graph.instantiate()?;
    let samples = settings.samples(500);
    let warmup = settings.samples(20);

    let cpu_of = |submit: &dyn Fn() -> gpuhal_hal::Result<()>| {
        each_us(warmup, samples, || {
            let start = thread_cpu_time();
            submit()?;
            let spent = thread_cpu_time().saturating_sub(start);
            stream.synchronize()?;
            Ok::<_, anyhow::Error>(spent)
        })
    };
    let wall_of = |submit: &dyn Fn() -> gpuhal_hal::Result<()>| {
        each_us(warmup, samples, || {
            let start = Instant::now();
            submit()?;
            stream.synchronize()?;
            Ok::<_, anyhow::Error>(start.elapsed())
        })
    };
    let eager = || work(&stream);
    let replay = || exec.launch(&stream);
    report.measured(GRAPH_ROWS[0].0, "graph", GRAPH_ROWS[0].1, "µs/iter", cpu_of(&eager)?);
    report.measured(GRAPH_ROWS[1].0, "graph", GRAPH_ROWS[1].1, "µs/iter", cpu_of(&replay)?);
    report.measured(GRAPH_ROWS[2].0, "graph", GRAPH_ROWS[2].1, "µs/iter", wall_of(&eager)?);
    report.measured(GRAPH_ROWS[3].0, "graph", GRAPH_ROWS[3].1, "µs/iter", wall_of(&replay)?);
    Ok(())
}

/// Captures a "batch size `batch`" forward pass: temporaries that grow with the batch,
/// allocated and freed inside the capture, and a result written into the slice of the
/// one shared output buffer (as engines keep one set of outputs for every batch size).
fn capture_batch<B: Backend>(
    device: &B::Device,
    stream: &B::Stream,
    pool: &gpuhal_hal::GraphPool<B>,
    output: &gpuhal_hal::Buffer<B>,
    batch: u64,
) -> gpuhal_hal::Result<B::Graph> {
    const UNIT: u64 = 1 << 20;
    let (graph, ()) = stream.capture(pool, |s| {
        let activations = device.allocate(batch * 2 * UNIT, MemoryKind::Device, s)?;
        let hidden = device.allocate(batch * 2 * UNIT, MemoryKind::Device, s)?;
        s.fill(&activations, 0, batch * 2 * UNIT, batch as u8)?;
        s.copy(&activations, 0, &hidden, 0, batch * 2 * UNIT)?;
        drop(activations);
        let logits = device.allocate(batch * UNIT, MemoryKind::Device, s)?;
        s.copy(&hidden, 0, &logits, 0, batch * UNIT)?;
        drop(hidden);
        s.copy(&logits, 0, output, 0, batch * (UNIT / 4))?;
        drop(logits);
        Ok(())
    })?;
    Ok(graph)
}

const GRAPH_MEMORY_ROWS: [(&str, &str); 3] = [
    ("graphmem.shared", "8 captures (batch 1–8) sharing one graph pool"),
    ("graphmem.separate", "8 captures, a graph pool each (sum)"),
    ("graphmem.largest", "the largest capture (batch 8) alone"),
];

fn graph_memory<B: Backend>(device: &B::Device, report: &mut Report) -> Result<()> {
    if !device.capabilities().contains(Capabilities::GRAPHS) {
        for (id, label) in GRAPH_MEMORY_ROWS {
            report.missing(id, "graph-memory", label, "MiB", "no graphs on this device");
        }
        return Ok(());
    }
    let stream = device.create_stream()?;
    let output = device.allocate(8 << 18, MemoryKind::Device, &stream)?;
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;

    // Largest first, as engines capture, so smaller captures fit in what it left free.
    let shared_pool = device.graph_pool();
    let mut shared = Vec::new();
    for batch in (1..=8).rev() {
        let graph = capture_batch::<B>(device, &stream, &shared_pool, &output, batch)?;
        shared.push(graph.instantiate()?);
    }
    // Replayed in one stream order, as graphs sharing a pool must be.
    for exec in &shared {
        exec.launch(&stream)?;
    }
    stream.synchronize()?;
    let shared_bytes = shared_pool.stats().reserved_bytes;

    let mut separate_bytes = 0;
    let mut largest_bytes = 0;
    let mut separate = Vec::new();
    for batch in (1..=8).rev() {
        let pool = device.graph_pool();
        let graph = capture_batch::<B>(device, &stream, &pool, &output, batch)?;
        separate.push(graph.instantiate()?);
        let reserved = pool.stats().reserved_bytes;
        separate_bytes += reserved;
        if batch == 8 {
            largest_bytes = reserved;
        }
    }
    let values = [shared_bytes, separate_bytes, largest_bytes];
    for ((id, label), bytes) in GRAPH_MEMORY_ROWS.into_iter().zip(values) {
        report.measured(id, "graph-memory", label, "MiB", Summary::single(mib(bytes)));
    }
    drop((shared, separate));
    Ok(())
}

fn bandwidth<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    options: &SuiteOptions,
    report: &mut Report,
) -> Result<()> {
    let stream = device.create_stream()?;
    let gb_per_s = |bytes: u64, elapsed: Duration| bytes as f64 / elapsed.as_secs_f64() / 1e9;
    let copies = settings.iterations(5);

    let size = settings.bytes(options.device_copy_bytes, 1 << 20);
    let src = device.allocate(size, MemoryKind::Device, &stream)?;
    let dst = device.allocate(size, MemoryKind::Device, &stream)?;
    stream.fill(&src, 0, size, 0x5A)?;
    let device_copy = copy_rate::<B>(&stream, &src, &dst, size, copies, settings)?;
    report.measured(
        "bw.gpuhal.device",
        "bandwidth",
        &format!("gpuhal stream.copy between two Device buffers, {}", bytes_words(size)),
        "GB/s",
        device_copy,
    );
    drop((src, dst));
    stream.synchronize()?;
    device.allocator().trim();

    let managed_rows = [
        ("nopolicy", "Managed, no policy", ManagedPolicy::NONE),
        (
            "policy",
            "Managed, policy (prefer device, prefetch)",
            ManagedPolicy::default(),
        ),
    ];
    let caps = device.capabilities();
    let size = settings.bytes(options.managed_copy_bytes, 1 << 20);
    if !caps.contains(Capabilities::MANAGED) {
        for (key, words, _) in managed_rows {
            for phase in ["first", "steady"] {
                report.missing(
                    &format!("bw.gpuhal.managed.{key}.{phase}"),
                    "bandwidth",
                    &format!("{words}: {phase} copy, {}", bytes_words(size)),
                    "GB/s",
                    "no managed memory on this device",
                );
            }
        }
        return Ok(());
    }
    let original = device.managed_policy();
    for (key, words, policy) in managed_rows {
        device.set_managed_policy(policy);
        let mut firsts = Vec::new();
        let mut steady = None;
        for round in 0..settings.samples(5) {
            // Fresh native allocations each round, so the first copy meets memory that
            // has never been touched, as a new tensor does.
            device.allocator().trim();
            let start = Instant::now();
            let src = device.allocate(size, MemoryKind::Managed, &stream)?;
            let dst = device.allocate(size, MemoryKind::Managed, &stream)?;
            stream.copy(&src, 0, &dst, 0, size)?;
            stream.synchronize()?;
            firsts.push(gb_per_s(size, start.elapsed()));
            if round == 0 {
                steady = Some(copy_rate::<B>(&stream, &src, &dst, size, copies, settings)?);
            }
        }
        stream.synchronize()?;
        device.allocator().trim();
        let first = Summary::of(&firsts).ok_or_else(|| anyhow!("no managed rounds ran"))?;
        report.measured(
            &format!("bw.gpuhal.managed.{key}.first"),
            "bandwidth",
            &format!("{words}: allocate + first copy, {}", bytes_words(size)),
            "GB/s",
            first,
        );
        if let Some(steady) = steady {
            report.measured(
                &format!("bw.gpuhal.managed.{key}.steady"),
                "bandwidth",
                &format!("{words}: later copies, {}", bytes_words(size)),
                "GB/s",
                steady,
            );
        }
    }
    device.set_managed_policy(original);
    Ok(())
}

/// GB/s of `copies` back-to-back copies of `size` bytes per batch (bytes copied, not
/// bytes moved: a copy reads and writes each byte once).
fn copy_rate<B: Backend>(
    stream: &B::Stream,
    src: &gpuhal_hal::Buffer<B>,
    dst: &gpuhal_hal::Buffer<B>,
    size: u64,
    copies: usize,
    settings: &Settings,
) -> Result<Summary> {
    let ns_per_copy = ns_per_op(settings, copies, 1, |n| {
        stream.synchronize()?;
        let start = Instant::now();
        for _ in 0..n {
            stream.copy(src, 0, dst, 0, size)?;
        }
        stream.synchronize()?;
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    Ok(ns_per_copy.inverted(|ns| size as f64 / ns))
}

/// "1 GiB", "512 MiB", "1 MiB".
pub fn bytes_words(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} B")
    }
}

/// Rows for every native baseline, marked as not measurable on a backend without native
/// calls to compare with.
pub fn native_rows_missing(report: &mut Report, options: &SuiteOptions) {
    for (id, group, label, unit) in native_row_specs(options) {
        report.missing(&id, group, &label, unit, NOT_ON_BACKEND);
    }
}

/// Id, group, label and unit of every native baseline row.
pub fn native_row_specs(options: &SuiteOptions) -> Vec<(String, &'static str, String, &'static str)> {
    let mut rows = Vec::new();
    for (_, suffix, words) in HIT_SIZES {
        rows.push((
            format!("hit.native.async.{suffix}"),
            "cache-hit",
            format!("cuMemAllocAsync + cuMemFreeAsync, {words}"),
            "ns/pair",
        ));
    }
    for (_, suffix, words) in HIT_SIZES {
        rows.push((
            format!("hit.native.sync.{suffix}"),
            "cache-hit",
            format!("cuMemAlloc + cuMemFree, {words}"),
            "ns/pair",
        ));
    }
    rows.push((
        "churn.native.async.random".into(),
        "churn",
        "cuMemAllocAsync / cuMemFreeAsync, the same random sequence".into(),
        "ns/op",
    ));
    rows.push((
        "event.native.record".into(),
        "events",
        "bare cuEventRecord".into(),
        "ns",
    ));
    rows.push((
        "event.paired.overhead".into(),
        "events",
        "gpuhal cycle minus bare cuEventRecord on the same stream, batch by batch".into(),
        "ns",
    ));
    rows.push((
        "event.native.create_destroy".into(),
        "events",
        "cuEventCreate + cuEventDestroy".into(),
        "ns",
    ));
    rows.push((
        "graph.native.eager".into(),
        "graph",
        "100 small ops (50 cuMemsetD8Async + 50 cuMemcpyDtoDAsync, 4 KiB) eager: submit, thread CPU time".into(),
        "µs/iter",
    ));
    rows.push((
        "graph.native.replay".into(),
        "graph",
        "cuGraphLaunch of the same 100 captured: thread CPU time".into(),
        "µs/iter",
    ));
    let size = bytes_words(options.device_copy_bytes);
    rows.push((
        "bw.native.raw".into(),
        "bandwidth",
        format!("cuMemcpyDtoDAsync between two cuMemAlloc buffers, {size}"),
        "GB/s",
    ));
    rows.push((
        "bw.native.gpuhal_ptrs".into(),
        "bandwidth",
        format!("cuMemcpyDtoDAsync between two gpuhal Device buffers, {size}"),
        "GB/s",
    ));
    rows
}

/// Replays a trace on a fresh device and adds its rows. With `limit`, the device's
/// allocator is first held to that multiple of the trace's peak live (the replay then
/// fails with out of memory if the pool cannot stay under it), and the rows say so.
pub fn trace_rows<B: Backend>(
    device: &B::Device,
    trace: &gpuhal_hal::trace::Trace,
    limit: Option<f64>,
    report: &mut Report,
) -> Result<()> {
    if let Some(factor) = limit {
        let bytes = (trace.peak_live_bytes() as f64 * factor) as u64;
        device.allocator().set_memory_limit(Some(bytes));
    }
    let replay = gpuhal_hal::trace::replay::<B>(device, trace)
        .with_context(|| format!("replaying {} (memory limit: {limit:?} × peak live)", trace.name()))?;
    let name = replay.trace.clone();
    let (suffix, words) = match limit {
        Some(factor) => (".limited", format!(" under a memory limit of {factor} × peak live")),
        None => ("", String::new()),
    };
    report.measured(
        &format!("trace.ns_per_event{suffix}"),
        "trace",
        &format!("replay of {name}{words}: time per event"),
        "ns",
        Summary::single(replay.ns_per_event),
    );
    report.measured_with_note(
        &format!("trace.reserved_over_live{suffix}"),
        "trace",
        &format!("replay of {name}{words}: peak reserved ÷ peak live"),
        "ratio",
        Summary::single(replay.reserved_over_live),
        format!(
            "{} native allocations, hit rate {:.2}%",
            replay.native_allocations,
            replay.hit_rate * 100.0
        ),
    );
    if limit.is_none() {
        report.replay = Some(replay);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_plans_are_reproducible_and_in_range() {
        let a = ChurnPlan::random(1);
        let b = ChurnPlan::random(1);
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.initial.len(), CHURN_LIVE);
        assert!(a
            .steps
            .iter()
            .all(|&(slot, size)| slot < CHURN_LIVE && (512..=16 << 20).contains(&size)));
        let recurring = ChurnPlan::recurring(1);
        let mut distinct: Vec<u64> = recurring.steps.iter().map(|s| s.1).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() <= CHURN_RECURRING);
    }

    #[test]
    fn pool_alone_rows_run_in_smoke_mode() {
        let mut report = Report::new("suite", true);
        let settings = Settings {
            smoke: true,
            ..Settings::default()
        };
        pool_alone_rows(&settings, &mut report).unwrap();
        assert!(report.median("hit.pool.512").is_some());
        assert!(report.median("hit.floor.locks").is_some());
        assert!(report.median("churn.pool.random").is_some());
    }

    #[test]
    fn cross_thread_pairs_return_every_buffer_to_the_pool() {
        let settings = Settings {
            smoke: true,
            ..Settings::default()
        };
        let (allocator, cache) = pool_alone();
        let summary = cross_thread_pairs(&settings, || cache.allocate(512, MemoryKind::Device)).unwrap();
        assert!(summary.median > 0.0);
        let stats = allocator.stats();
        assert_eq!(stats.live_count, 0, "the consumer dropped every buffer it was handed");
        assert!(stats.cache_hits > 0, "dropped buffers came back for reuse");
    }
}
