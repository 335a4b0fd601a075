//! Timeline fences: values that only grow, signalled and awaited by streams and the CPU.

use std::time::{Duration, Instant};

use gpuhal_hal::{Backend, Capabilities, Device, Error, Event, Fence, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, OpenOnDrop, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq, expect_error};

/// Long enough for any healthy backend; a wait that needs it has already gone wrong.
const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Fences;
    let fence = Capabilities::TIMELINE_FENCE;
    vec![
        Case::new("initial_value", area, fence, initial_value::<B>),
        Case::new("cpu_signal_and_wait", area, fence, cpu_signal_and_wait::<B>),
        Case::new(
            "signalling_the_same_value_is_a_no_op",
            area,
            fence,
            same_value_signal::<B>,
        ),
        Case::new("cpu_regression_is_refused", area, fence, cpu_regression::<B>),
        Case::new("wait_timeout_leaves_the_fence_usable", area, fence, wait_timeout::<B>),
        Case::new("two_stream_ordering", area, fence, two_stream_ordering::<B>),
        Case::new("wait_enqueued_before_its_signal", area, fence, wait_before_signal::<B>),
        Case::new(
            "cpu_signal_releases_a_waiting_stream",
            area,
            fence,
            cpu_signal_releases_stream::<B>,
        ),
        Case::new(
            "stream_signal_reaches_the_cpu",
            area,
            fence,
            stream_signal_reaches_cpu::<B>,
        ),
        Case::new(
            "cpu_wait_released_by_another_thread",
            area,
            fence,
            cpu_wait_other_thread::<B>,
        ),
        Case::new(
            "observed_values_never_decrease",
            area,
            fence,
            values_never_decrease::<B>,
        ),
    ]
}

fn initial_value<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(5).during("creating a fence at 5")?;
    ensure_eq!(fence.value().during("reading")?, 5, "initial value");
    fence.wait(5, Duration::ZERO).during("waiting for the initial value")?;
    fence
        .wait(3, Duration::ZERO)
        .during("waiting for a value below the initial one")
}

fn cpu_signal_and_wait<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    fence.signal(3).during("signalling 3")?;
    ensure_eq!(fence.value().during("reading")?, 3, "value after signalling 3");
    fence.wait(3, PATIENCE).during("waiting for 3")?;
    fence
        .wait(2, Duration::ZERO)
        .during("waiting for a value already passed")?;
    fence.signal(10).during("signalling 10")?;
    ensure_eq!(fence.value().during("reading")?, 10, "value after signalling 10");
    Ok(())
}

fn same_value_signal<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    fence.signal(4).during("signalling 4")?;
    fence.signal(4).during("signalling 4 again")?;
    ensure_eq!(fence.value().during("reading")?, 4, "value after signalling 4 twice");
    Ok(())
}

fn cpu_regression<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    fence.signal(5).during("signalling 5")?;
    let err = expect_error!(fence.signal(3), Error::FenceRegressed { .. }, "signalling 3 after 5");
    if let Error::FenceRegressed { requested, current } = err {
        ensure_eq!((requested, current), (3, 5), "(requested, current) in the error");
    }
    ensure_eq!(fence.value().during("reading")?, 5, "value after a refused regression");
    fence.signal(6).during("signalling 6 after the refused regression")?;
    ensure_eq!(fence.value().during("reading")?, 6, "value after signalling 6");
    Ok(())
}

fn wait_timeout<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(1).during("creating a fence")?;
    let timeout = Duration::from_millis(30);
    let started = Instant::now();
    let err = expect_error!(
        fence.wait(2, timeout),
        Error::Timeout { .. },
        "waiting 30 ms for a value never signalled"
    );
    let waited = started.elapsed();
    ensure!(
        waited >= timeout,
        "the wait gave up after {waited:?}, before its {timeout:?} timeout"
    );
    if let Error::Timeout { target, reached, .. } = err {
        ensure_eq!((target, reached), (2, 1), "(target, reached) in the error");
    }
    fence.signal(2).during("signalling after the timeout")?;
    fence.wait(2, PATIENCE).during("waiting after the timeout")?;
    let stream = ctx.stream()?;
    stream
        .signal(&fence, 3)
        .during("signalling from a stream after the timeout")?;
    fence
        .wait(3, PATIENCE)
        .during("waiting for the stream's signal after the timeout")
}

fn two_stream_ordering<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let writer = ctx.stream()?;
    let reader = ctx.stream()?;
    let fence = device.create_fence(0).during("creating a fence")?;
    let _open_fence = OpenOnDrop::<B>::new(&fence, 1);
    let gate = device.create_fence(0).during("creating a gate fence")?;
    let _open_gate = OpenOnDrop::<B>::new(&gate, 1);
    let len = MIB;
    let data = pattern(len as usize, 31);
    let staging = device.allocate(len, MemoryKind::Device, &writer).during("allocating")?;
    let source = device.allocate(len, MemoryKind::Device, &writer).during("allocating")?;
    let target = device.allocate(len, MemoryKind::Device, &reader).during("allocating")?;
    writer.write(&staging, 0, &data).during("writing the staging buffer")?;
    writer.fill(&source, 0, len, 0).during("clearing the source")?;
    // The writer is held at a gate, so a reader that ignored the fence would copy the
    // cleared source.
    writer.wait(&gate, 1).during("holding the writer")?;
    writer
        .copy(&staging, 0, &source, 0, len)
        .during("writing the source on the writer")?;
    writer.signal(&fence, 1).during("signalling from the writer")?;
    reader.wait(&fence, 1).during("making the reader wait")?;
    source.record_use(reader.cache());
    reader
        .copy(&source, 0, &target, 0, len)
        .during("copying on the reader")?;
    gate.signal(1).during("opening the gate")?;
    let read = read_back::<B>(&reader, &target, 0, len as usize)?;
    ensure_bytes(&read, &data, "data copied by the reader after the fence")?;
    ensure!(fence.value().during("reading")? >= 1, "the fence never reached 1");
    Ok(())
}

fn wait_before_signal<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let writer = ctx.stream()?;
    let reader = ctx.stream()?;
    let fence = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&fence, 1);
    let len = MIB;
    let data = pattern(len as usize, 37);
    let source = device.allocate(len, MemoryKind::Device, &writer).during("allocating")?;
    let target = device.allocate(len, MemoryKind::Device, &reader).during("allocating")?;
    writer.fill(&source, 0, len, 0).during("clearing")?;
    writer.synchronize().during("synchronising")?;
    // Pipelines set up the consumer first: only the fence orders its copy after the
    // write that is enqueued later.
    reader.wait(&fence, 1).during("making the reader wait")?;
    source.record_use(reader.cache());
    reader
        .copy(&source, 0, &target, 0, len)
        .during("copying on the reader")?;
    writer.write(&source, 0, &data).during("writing on the writer")?;
    writer.signal(&fence, 1).during("signalling from the writer")?;
    let read = read_back::<B>(&reader, &target, 0, len as usize)?;
    ensure_bytes(
        &read,
        &data,
        "data copied by a reader whose wait was enqueued before the signal",
    )
}

fn cpu_signal_releases_stream<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let fence = device.create_fence(0).during("creating a fence")?;
    let _open = OpenOnDrop::<B>::new(&fence, 1);
    let buffer = device
        .allocate(4096, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.fill(&buffer, 0, 4096, 1).during("filling")?;
    stream.wait(&fence, 1).during("making the stream wait")?;
    stream.fill(&buffer, 0, 4096, 2).during("filling behind the fence")?;
    let done = device.event(false).during("taking an event")?;
    done.record(&stream).during("recording")?;
    std::thread::sleep(Duration::from_millis(5));
    ensure!(
        !done.is_complete().during("querying")?,
        "work behind an unsignalled fence completed"
    );
    fence.signal(1).during("signalling from the CPU")?;
    done.synchronize().during("waiting for the released work")?;
    let read = read_back::<B>(&stream, &buffer, 0, 4096)?;
    ensure_bytes(&read, &[2; 4096], "buffer after the released fill")
}

fn stream_signal_reaches_cpu<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let fence = device.create_fence(0).during("creating a fence")?;
    let buffer = device
        .allocate(4 * MIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.fill(&buffer, 0, buffer.len(), 7).during("filling")?;
    stream.signal(&fence, 7).during("signalling 7 from the stream")?;
    fence.wait(7, PATIENCE).during("waiting for 7 on the CPU")?;
    ensure!(
        fence.value().during("reading")? >= 7,
        "value below 7 after the wait returned"
    );
    // The signal follows the fill in stream order, so the fill is visible now.
    let read = read_back::<B>(&stream, &buffer, buffer.len() - 16, 16)?;
    ensure_bytes(&read, &[7; 16], "end of the buffer filled before the signal")
}

fn cpu_wait_other_thread<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    std::thread::scope(|scope| {
        let signaller = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            fence.signal(1)
        });
        let waited = fence.wait(1, PATIENCE).during("waiting for another thread's signal");
        let signalled = match signaller.join() {
            Ok(result) => result.during("signalling from another thread"),
            Err(_) => Err(Failure::new("the signalling thread panicked")),
        };
        waited.and(signalled)
    })?;
    ensure_eq!(
        fence.value().during("reading")?,
        1,
        "value after the other thread's signal"
    );
    Ok(())
}

fn values_never_decrease<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let fence = device.create_fence(0).during("creating a fence")?;
    let buffer = device
        .allocate(64 * 1024, MemoryKind::Device, &stream)
        .during("allocating")?;
    let last = 100;
    for value in 1..=last {
        stream.fill(&buffer, 0, buffer.len(), value as u8).during("filling")?;
        stream.signal(&fence, value).during("signalling")?;
    }
    let mut seen = 0;
    let deadline = Instant::now() + PATIENCE;
    while seen < last {
        let now = fence.value().during("reading")?;
        ensure!(now >= seen, "fence value went down from {seen} to {now}");
        ensure!(now <= last, "fence value {now} beyond the highest signalled ({last})");
        seen = now;
        ensure!(Instant::now() < deadline, "fence stuck at {seen} of {last}");
        std::thread::yield_now();
    }
    Ok(())
}
