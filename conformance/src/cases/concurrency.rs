//! Several threads and streams on one device at once.

use std::time::Duration;

use gpuhal_hal::{Backend, Capabilities, Device, Event, Fence, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, OpenOnDrop, KIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

const THREADS: usize = 8;

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Concurrency;
    let none = Capabilities::empty();
    let fence = Capabilities::TIMELINE_FENCE;
    vec![
        Case::new("eight_threads_on_their_own_streams", area, none, eight_threads::<B>),
        Case::new("stats_balance_after_threads_finish", area, none, stats_balance::<B>),
        Case::new(
            "buffers_dropped_on_another_thread",
            area,
            none,
            dropped_on_another_thread::<B>,
        ),
        Case::new("events_from_many_threads", area, none, events_from_many_threads::<B>),
        Case::new(
            "blocked_stream_does_not_block_others",
            area,
            fence,
            blocked_stream_isolated::<B>,
        ),
        Case::new("many_cpu_waiters_on_one_fence", area, fence, many_waiters::<B>),
    ]
}

/// Runs `work(thread index)` on `THREADS` scoped threads; the first failure (or panic)
/// wins.
fn on_threads(work: impl Fn(usize) -> Result<(), Failure> + Sync) -> Result<(), Failure> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|index| {
                scope.spawn({
                    let work = &work;
                    move || work(index)
                })
            })
            .collect();
        let mut first = Ok(());
        for (index, handle) in handles.into_iter().enumerate() {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(Failure::new(format!("thread {index} panicked"))));
            if first.is_ok() {
                first = result.map_err(|f| match f {
                    Failure::Failed(message) => Failure::Failed(format!("thread {index}: {message}")),
                    skip => skip,
                });
            }
        }
        first
    })
}

fn alloc_fill_verify_loop<B: Backend>(ctx: &Context<B>, stream: &B::Stream, index: usize) -> Result<(), Failure> {
    let device = ctx.device();
    for round in 0..20usize {
        // The same sizes every round, as in a training loop, so the cache serves them;
        // threads differ, so their caches hold different size classes.
        let size = (1 + index % 4) as u64 * 16 * KIB + index as u64 * 512 + 7;
        let data = pattern(size as usize, (index * 31 + round) as u8);
        let buffer = device
            .allocate(size, MemoryKind::Device, stream)
            .during(&format!("allocating {size} bytes"))?;
        stream.write(&buffer, 0, &data).during("writing")?;
        let copy = device
            .allocate(size, MemoryKind::Device, stream)
            .during("allocating the copy")?;
        stream.copy(&buffer, 0, &copy, 0, size).during("copying")?;
        stream.fill(&buffer, 0, size, 0).during("clearing")?;
        let read = read_back::<B>(stream, &copy, 0, data.len())?;
        ensure_bytes(&read, &data, &format!("round {round}"))?;
    }
    Ok(())
}

fn eight_threads<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    on_threads(|index| {
        let stream = ctx.device().create_stream().during("creating a stream")?;
        alloc_fill_verify_loop(ctx, &stream, index)
    })
}

fn stats_balance<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let streams: Vec<_> = (0..THREADS).map(|_| ctx.stream()).collect::<Result<_, _>>()?;
    let before = ctx.device().memory_stats();
    on_threads(|index| alloc_fill_verify_loop(ctx, &streams[index], index))?;
    let after = ctx.device().memory_stats();
    ensure_eq!(
        after.live_count,
        before.live_count,
        "live buffers after every thread finished"
    );
    ensure_eq!(
        after.live_bytes,
        before.live_bytes,
        "live bytes after every thread finished"
    );
    ensure!(
        after.cache_hits > before.cache_hits,
        "eight threads of repeated sizes made no cache hits"
    );
    Ok(())
}

fn dropped_on_another_thread<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let data = pattern(100 * KIB as usize, 9);
    let buffer = device
        .allocate(data.len() as u64, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.write(&buffer, 0, &data).during("writing")?;
    let address = buffer.address();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let read = read_back::<B>(&stream, &buffer, 0, data.len())?;
                ensure_bytes(&read, &data, "data read on another thread")?;
                drop(buffer);
                let again = device
                    .allocate(data.len() as u64, MemoryKind::Device, &stream)
                    .during("allocating on the other thread")?;
                ensure_eq!(
                    again.address(),
                    address,
                    "address reused after a drop on another thread"
                );
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(Failure::new("the other thread panicked")))
    })
}

fn events_from_many_threads<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    on_threads(|_| {
        let producer = device.create_stream().during("creating a stream")?;
        let consumer = device.create_stream().during("creating a stream")?;
        let buffer = device
            .allocate(4096, MemoryKind::Device, &producer)
            .during("allocating")?;
        for round in 0..50u8 {
            producer.fill(&buffer, 0, 4096, round).during("filling")?;
            let event = device.event(false).during("taking an event")?;
            event.record(&producer).during("recording")?;
            consumer.wait_event(&event).during("waiting")?;
        }
        consumer.synchronize().during("synchronising")
    })?;
    let stats = device.event_stats();
    ensure!(
        stats.native_created <= stats.acquired,
        "{} native events created for {} acquired",
        stats.native_created,
        stats.acquired
    );
    ensure_eq!(
        stats.native_live,
        stats.idle,
        "native events live vs idle once every event was dropped"
    );
    Ok(())
}

fn blocked_stream_isolated<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let blocked = ctx.stream()?;
    let gate = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&gate, 1);
    blocked.wait(&gate, 1).during("blocking a stream")?;
    let blocked_done = device.event(false).during("taking an event")?;
    blocked_done.record(&blocked).during("recording")?;
    let free = ctx.stream()?;
    let data = pattern(64 * KIB as usize, 2);
    let buffer = device
        .allocate(data.len() as u64, MemoryKind::Device, &free)
        .during("allocating on the free stream")?;
    free.write(&buffer, 0, &data).during("writing on the free stream")?;
    let read = read_back::<B>(&free, &buffer, 0, data.len())?;
    ensure_bytes(&read, &data, "data on a stream beside a blocked one")?;
    free.synchronize().during("synchronising the free stream")?;
    ensure!(
        !blocked_done.is_complete().during("querying")?,
        "the blocked stream ran past an unsignalled fence"
    );
    gate.signal(1).during("releasing the blocked stream")?;
    blocked.synchronize().during("synchronising the released stream")
}

fn many_waiters<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    let stream = ctx.stream()?;
    std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..THREADS as u64)
            .map(|index| {
                let fence = &fence;
                scope.spawn(move || fence.wait(index + 1, Duration::from_secs(10)))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(10));
        let mut result = Ok(());
        for value in 1..=THREADS as u64 {
            if let Err(err) = stream.signal(&fence, value) {
                result = Err(Failure::from(err));
                break;
            }
        }
        for (index, waiter) in waiters.into_iter().enumerate() {
            let waited = waiter
                .join()
                .map_err(|_| Failure::new(format!("waiter {index} panicked")))
                .and_then(|r| r.during(&format!("waiter {index} waiting for {}", index + 1)));
            if result.is_ok() {
                result = waited;
            }
        }
        result
    })?;
    ensure_eq!(fence.value().during("reading")?, THREADS as u64, "final value");
    Ok(())
}
