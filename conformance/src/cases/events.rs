//! Pooled events: recording, cross-stream waits, completion, timing, and a steady state
//! that creates no native events.

use std::time::Duration;

use gpuhal_hal::{Backend, Capabilities, Device, Event, Fence, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, OpenOnDrop, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Events;
    let none = Capabilities::empty();
    let fence = Capabilities::TIMELINE_FENCE;
    vec![
        Case::new("steady_state_creates_no_native_events", area, none, steady_state::<B>),
        Case::new(
            "dropped_event_returns_to_the_pool",
            area,
            none,
            dropped_event_returns::<B>,
        ),
        Case::new("unrecorded_event_is_complete", area, none, unrecorded_is_complete::<B>),
        Case::new(
            "synchronize_completes_recorded_work",
            area,
            none,
            synchronize_completes::<B>,
        ),
        Case::new(
            "is_complete_tracks_blocked_work",
            area,
            fence,
            is_complete_tracks_work::<B>,
        ),
        Case::new("rerecording_tracks_the_latest_work", area, fence, rerecord::<B>),
        Case::new(
            "wait_event_orders_two_streams",
            area,
            fence,
            wait_event_orders_streams::<B>,
        ),
        Case::new(
            "timing_elapsed_is_monotone",
            area,
            Capabilities::TIMING_EVENTS,
            timing_monotone::<B>,
        ),
        Case::new(
            "elapsed_without_timing_is_an_error",
            area,
            none,
            elapsed_without_timing::<B>,
        ),
    ]
}

fn steady_state<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let producer = ctx.stream()?;
    let consumer = ctx.stream()?;
    let buffer = device
        .allocate(4096, MemoryKind::Device, &producer)
        .during("allocating")?;
    let iteration = |value: u8| -> Result<(), Failure> {
        producer.fill(&buffer, 0, 4096, value).during("filling")?;
        let event = device.event(false).during("taking an event")?;
        event.record(&producer).during("recording")?;
        consumer.wait_event(&event).during("waiting on the event")?;
        Ok(())
    };
    for value in 0..10 {
        iteration(value)?;
    }
    producer.synchronize().during("synchronising")?;
    let warm = device.event_stats();
    let iterations = 200;
    for value in 0..iterations {
        iteration(value as u8)?;
    }
    let after = device.event_stats();
    ensure_eq!(
        after.native_created,
        warm.native_created,
        "native events created over {iterations} steady record/wait iterations"
    );
    ensure!(
        after.acquired >= warm.acquired + iterations,
        "events acquired grew by {} over {iterations} iterations",
        after.acquired - warm.acquired
    );
    Ok(())
}

fn dropped_event_returns<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let first = device.event(false).during("taking an event")?;
    first.record(&stream).during("recording")?;
    first.synchronize().during("synchronising")?;
    drop(first);
    let before = device.event_stats();
    ensure!(before.idle >= 1, "no idle event in the pool after dropping one");
    ensure!(
        before.native_live >= before.idle,
        "{} native events live but {} idle",
        before.native_live,
        before.idle
    );
    let second = device.event(false).during("taking an event again")?;
    ensure!(!second.has_timing(), "an event asked for without timing reports timing");
    let after = device.event_stats();
    ensure_eq!(
        after.native_created,
        before.native_created,
        "native events created for a reuse"
    );
    ensure_eq!(after.idle + 1, before.idle, "idle events after taking one");
    Ok(())
}

fn unrecorded_is_complete<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let event = ctx.device().event(false).during("taking an event")?;
    ensure!(
        event.is_complete().during("querying")?,
        "an event never recorded is not complete"
    );
    event.synchronize().during("synchronising an event never recorded")
}

fn synchronize_completes<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let buffer = device
        .allocate(8 * MIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    for value in 0..8 {
        stream.fill(&buffer, 0, buffer.len(), value).during("filling")?;
    }
    let event = device.event(false).during("taking an event")?;
    event.record(&stream).during("recording")?;
    event.synchronize().during("synchronising the event")?;
    ensure!(
        event.is_complete().during("querying")?,
        "an event is not complete right after its synchronize returned"
    );
    Ok(())
}

fn is_complete_tracks_work<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let gate = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&gate, 1);
    stream.wait(&gate, 1).during("making the stream wait")?;
    let event = device.event(false).during("taking an event")?;
    event.record(&stream).during("recording behind the fence")?;
    std::thread::sleep(Duration::from_millis(5));
    ensure!(
        !event.is_complete().during("querying")?,
        "an event recorded behind an unsignalled fence reports complete"
    );
    gate.signal(1).during("signalling")?;
    event.synchronize().during("synchronising")?;
    ensure!(
        event.is_complete().during("querying")?,
        "the event is not complete after its work ran"
    );
    Ok(())
}

fn rerecord<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let event = device.event(false).during("taking an event")?;
    event.record(&stream).during("recording on an idle stream")?;
    event.synchronize().during("synchronising")?;
    ensure!(event.is_complete().during("querying")?, "first recording not complete");
    let gate = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&gate, 1);
    stream.wait(&gate, 1).during("making the stream wait")?;
    event.record(&stream).during("recording again behind the fence")?;
    ensure!(
        !event.is_complete().during("querying")?,
        "a re-recorded event still reports its earlier, completed recording"
    );
    gate.signal(1).during("signalling")?;
    event.synchronize().during("synchronising")?;
    ensure!(event.is_complete().during("querying")?, "second recording not complete");
    Ok(())
}

fn wait_event_orders_streams<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let producer = ctx.stream()?;
    let consumer = ctx.stream()?;
    let gate = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&gate, 1);
    let len = MIB;
    let data = pattern(len as usize, 23);
    let staging = device
        .allocate(len, MemoryKind::Device, &producer)
        .during("allocating")?;
    let source = device
        .allocate(len, MemoryKind::Device, &producer)
        .during("allocating")?;
    let target = device
        .allocate(len, MemoryKind::Device, &consumer)
        .during("allocating")?;
    producer
        .write(&staging, 0, &data)
        .during("writing the staging buffer")?;
    producer.fill(&source, 0, len, 0).during("clearing the source")?;
    // The producer is held at the gate, so a consumer that ignored the event would copy
    // the cleared source.
    producer.wait(&gate, 1).during("holding the producer")?;
    producer
        .copy(&staging, 0, &source, 0, len)
        .during("copying on the producer")?;
    let done = device.event(false).during("taking an event")?;
    done.record(&producer).during("recording")?;
    consumer.wait_event(&done).during("ordering the consumer")?;
    source.record_use(consumer.cache());
    consumer
        .copy(&source, 0, &target, 0, len)
        .during("copying on the consumer")?;
    gate.signal(1).during("opening the gate")?;
    let read = read_back::<B>(&consumer, &target, 0, len as usize)?;
    ensure_bytes(
        &read,
        &data,
        "data the consumer copied after waiting on the producer's event",
    )
}

fn timing_monotone<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let buffer = device
        .allocate(8 * MIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    let marks: Vec<_> = (0..3)
        .map(|_| device.event(true))
        .collect::<gpuhal_hal::Result<_>>()
        .during("taking timing events")?;
    for mark in &marks {
        ensure!(mark.has_timing(), "an event asked for with timing reports no timing");
    }
    marks[0].record(&stream).during("recording")?;
    for value in 0..4 {
        stream.fill(&buffer, 0, buffer.len(), value).during("filling")?;
    }
    marks[1].record(&stream).during("recording")?;
    for value in 0..4 {
        stream.fill(&buffer, 0, buffer.len(), value).during("filling")?;
    }
    marks[2].record(&stream).during("recording")?;
    marks[2].synchronize().during("synchronising")?;
    let first = marks[0].elapsed(&marks[1]).during("elapsed 0→1")?;
    let both = marks[0].elapsed(&marks[2]).during("elapsed 0→2")?;
    let second = marks[1].elapsed(&marks[2]).during("elapsed 1→2")?;
    ensure!(
        first <= both && second <= both,
        "elapsed times are not monotone: 0→1 {first:?}, 1→2 {second:?}, 0→2 {both:?}"
    );
    ensure!(both < Duration::from_secs(60), "0→2 took {both:?} for 8 fills of 8 MiB");
    Ok(())
}

fn elapsed_without_timing<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let start = device.event(false).during("taking an event")?;
    let end = device.event(false).during("taking an event")?;
    ensure!(!start.has_timing(), "an event asked for without timing reports timing");
    start.record(&stream).during("recording")?;
    end.record(&stream).during("recording")?;
    end.synchronize().during("synchronising")?;
    match start.elapsed(&end) {
        Ok(duration) => Err(Failure::new(format!(
            "elapsed between events without timing: expected an error, got {duration:?}"
        ))),
        Err(_) => {
            // Both events stay usable.
            start.record(&stream).during("recording after the refused elapsed")?;
            start.synchronize().during("synchronising after the refused elapsed")
        }
    }
}
