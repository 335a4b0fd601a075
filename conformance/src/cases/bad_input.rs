//! Misuse fails with the documented error, never a panic, and loses nothing else: each
//! case checks that another live buffer keeps its contents and that the allocator keeps
//! serving requests afterwards.

use std::time::Duration;

use gpuhal_hal::{Backend, Capabilities, Device, Error, Event, Fence, ImportPolicy, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, Sentinel};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq, expect_error};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let none = Capabilities::empty();
    let area = Area::BadInput;
    let fence = Capabilities::TIMELINE_FENCE;
    let graphs = Capabilities::GRAPHS;
    vec![
        Case::new("out_of_bounds_write", area, none, out_of_bounds_write::<B>),
        Case::new("out_of_bounds_read", area, none, out_of_bounds_read::<B>),
        Case::new("out_of_bounds_fill", area, none, out_of_bounds_fill::<B>),
        Case::new("out_of_bounds_copy_source", area, none, out_of_bounds_copy_source::<B>),
        Case::new(
            "out_of_bounds_copy_destination",
            area,
            none,
            out_of_bounds_copy_destination::<B>,
        ),
        Case::new("offset_overflow_is_out_of_bounds", area, none, offset_overflow::<B>),
        Case::new("foreign_buffer_is_refused", area, none, foreign_buffer::<B>),
        Case::new(
            "foreign_stream_for_allocation_is_refused",
            area,
            none,
            foreign_stream_allocation::<B>,
        ),
        Case::new("foreign_event_is_refused", area, none, foreign_event::<B>),
        Case::new("foreign_fence_is_refused", area, fence, foreign_fence::<B>),
        Case::new("oversized_request_is_an_error", area, none, oversized_request::<B>),
        Case::new("stream_signal_regression", area, fence, stream_signal_regression::<B>),
        Case::new("zero_timeout_wait_times_out", area, fence, zero_timeout_wait::<B>),
        Case::new(
            "end_capture_without_begin",
            area,
            graphs,
            end_capture_without_begin::<B>,
        ),
        Case::new("begin_capture_twice", area, graphs, begin_capture_twice::<B>),
        Case::new(
            "out_of_bounds_copy_from_import",
            area,
            none,
            out_of_bounds_copy_from_import::<B>,
        ),
    ]
}

const LEN: u64 = 4096;

/// A 4 KiB buffer with known contents on the sentinel's stream.
fn target<B: Backend>(ctx: &Context<B>, sentinel: &Sentinel<B>) -> Result<(gpuhal_hal::Buffer<B>, Vec<u8>), Failure> {
    let contents = pattern(LEN as usize, 0x17);
    let buffer = ctx
        .device()
        .allocate(LEN, MemoryKind::Device, sentinel.stream())
        .during("allocating the target buffer")?;
    sentinel
        .stream()
        .write(&buffer, 0, &contents)
        .during("writing the target")?;
    Ok((buffer, contents))
}

fn ensure_unchanged<B: Backend>(
    sentinel: &Sentinel<B>,
    buffer: &gpuhal_hal::Buffer<B>,
    contents: &[u8],
    after: &str,
) -> Result<(), Failure> {
    let read = read_back::<B>(sentinel.stream(), buffer, 0, contents.len())?;
    ensure_bytes(&read, contents, &format!("the target buffer after {after}"))
}

fn ensure_out_of_bounds(err: &Error, offset: u64, size: u64, len: u64) -> Result<(), Failure> {
    if let Error::OutOfBounds {
        offset: o,
        size: s,
        len: l,
        ..
    } = err
    {
        ensure_eq!((*o, *s, *l), (offset, size, len), "(offset, size, len) in the error");
    }
    Ok(())
}

fn out_of_bounds_write<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (buffer, contents) = target(ctx, &sentinel)?;
    let err = expect_error!(
        sentinel.stream().write(&buffer, LEN - 96, &[0xff; 100]),
        Error::OutOfBounds { .. },
        "writing 100 bytes at {} of a {LEN}-byte buffer",
        LEN - 96
    );
    ensure_out_of_bounds(&err, LEN - 96, 100, LEN)?;
    ensure_unchanged(&sentinel, &buffer, &contents, "a refused write")?;
    sentinel.verify(ctx, "an out-of-bounds write")
}

fn out_of_bounds_read<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (buffer, contents) = target(ctx, &sentinel)?;
    let mut out = vec![0u8; 200];
    let err = expect_error!(
        sentinel.stream().read(&buffer, LEN - 100, &mut out),
        Error::OutOfBounds { .. },
        "reading 200 bytes at {} of a {LEN}-byte buffer",
        LEN - 100
    );
    ensure_out_of_bounds(&err, LEN - 100, 200, LEN)?;
    ensure_unchanged(&sentinel, &buffer, &contents, "a refused read")?;
    sentinel.verify(ctx, "an out-of-bounds read")
}

fn out_of_bounds_fill<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (buffer, contents) = target(ctx, &sentinel)?;
    let err = expect_error!(
        sentinel.stream().fill(&buffer, 4000, 200, 0xff),
        Error::OutOfBounds { .. },
        "filling 200 bytes at 4000 of a {LEN}-byte buffer"
    );
    ensure_out_of_bounds(&err, 4000, 200, LEN)?;
    ensure_unchanged(&sentinel, &buffer, &contents, "a refused fill")?;
    sentinel.verify(ctx, "an out-of-bounds fill")
}

fn out_of_bounds_copy_source<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (destination, contents) = target(ctx, &sentinel)?;
    let source = ctx
        .device()
        .allocate(1000, MemoryKind::Device, sentinel.stream())
        .during("allocating the source")?;
    let err = expect_error!(
        sentinel.stream().copy(&source, 900, &destination, 0, 200),
        Error::OutOfBounds { .. },
        "copying 200 bytes from offset 900 of a 1000-byte source"
    );
    ensure_out_of_bounds(&err, 900, 200, 1000)?;
    ensure_unchanged(&sentinel, &destination, &contents, "a refused copy")?;
    sentinel.verify(ctx, "an out-of-bounds copy source")
}

fn out_of_bounds_copy_destination<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (destination, contents) = target(ctx, &sentinel)?;
    let source = ctx
        .device()
        .allocate(LEN, MemoryKind::Device, sentinel.stream())
        .during("allocating the source")?;
    sentinel
        .stream()
        .fill(&source, 0, LEN, 0xee)
        .during("filling the source")?;
    let err = expect_error!(
        sentinel.stream().copy(&source, 0, &destination, LEN - 10, 20),
        Error::OutOfBounds { .. },
        "copying 20 bytes to offset {} of a {LEN}-byte destination",
        LEN - 10
    );
    ensure_out_of_bounds(&err, LEN - 10, 20, LEN)?;
    ensure_unchanged(&sentinel, &destination, &contents, "a refused copy")?;
    sentinel.verify(ctx, "an out-of-bounds copy destination")
}

fn offset_overflow<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (buffer, contents) = target(ctx, &sentinel)?;
    let stream = sentinel.stream();
    expect_error!(
        stream.write(&buffer, u64::MAX - 1, &[1, 2, 3, 4]),
        Error::OutOfBounds { .. },
        "writing 4 bytes at offset u64::MAX - 1"
    );
    expect_error!(
        stream.fill(&buffer, u64::MAX, u64::MAX, 1),
        Error::OutOfBounds { .. },
        "filling u64::MAX bytes at offset u64::MAX"
    );
    expect_error!(
        stream.copy(&buffer, 1, &buffer, 0, u64::MAX),
        Error::OutOfBounds { .. },
        "copying u64::MAX bytes"
    );
    ensure_unchanged(&sentinel, &buffer, &contents, "overflowing ranges")?;
    sentinel.verify(ctx, "overflowing ranges")
}

fn foreign_buffer<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let other = ctx.open_another_device()?;
    ensure!(
        other.id() != ctx.device().id(),
        "two opened devices share the id {:?}",
        other.id()
    );
    let other_stream = other.create_stream().during("creating a stream on the second device")?;
    let foreign = other
        .allocate(LEN, MemoryKind::Device, &other_stream)
        .during("allocating on the second device")?;
    ensure_eq!(
        foreign.device(),
        other.id(),
        "device of a buffer from the second device"
    );
    other_stream
        .fill(&foreign, 0, LEN, 0x44)
        .during("filling on the second device")?;
    let stream = sentinel.stream();
    expect_error!(
        stream.write(&foreign, 0, &[1; 16]),
        Error::ForeignHandle { .. },
        "writing another device's buffer"
    );
    expect_error!(
        stream.copy(sentinel.buffer(), 0, &foreign, 0, 16),
        Error::ForeignHandle { .. },
        "copying into another device's buffer"
    );
    expect_error!(
        stream.fill(&foreign, 0, 16, 0),
        Error::ForeignHandle { .. },
        "filling another device's buffer"
    );
    let kept = read_back::<B>(&other_stream, &foreign, 0, LEN as usize)?;
    ensure_bytes(&kept, &[0x44; LEN as usize], "the foreign buffer on its own device")?;
    sentinel.verify(ctx, "using another device's buffer")
}

fn foreign_stream_allocation<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let other = ctx.open_another_device()?;
    let other_stream = other.create_stream().during("creating a stream on the second device")?;
    let before = ctx.device().memory_stats();
    expect_error!(
        ctx.device().allocate(LEN, MemoryKind::Device, &other_stream),
        Error::ForeignHandle { .. },
        "allocating on another device's stream"
    );
    ensure_eq!(
        ctx.device().memory_stats().live_count,
        before.live_count,
        "live buffers after a refused allocation"
    );
    sentinel.verify(ctx, "allocating on another device's stream")
}

fn foreign_event<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let other = ctx.open_another_device()?;
    let foreign = other.event(false).during("taking an event on the second device")?;
    expect_error!(
        sentinel.stream().wait_event(&foreign),
        Error::ForeignHandle { .. },
        "waiting on another device's event"
    );
    expect_error!(
        foreign.record(sentinel.stream()),
        Error::ForeignHandle { .. },
        "recording another device's event on this device's stream"
    );
    sentinel.verify(ctx, "using another device's event")
}

fn foreign_fence<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let other = ctx.open_another_device()?;
    let foreign = other.create_fence(0).during("creating a fence on the second device")?;
    expect_error!(
        sentinel.stream().signal(&foreign, 1),
        Error::ForeignHandle { .. },
        "signalling another device's fence"
    );
    expect_error!(
        sentinel.stream().wait(&foreign, 1),
        Error::ForeignHandle { .. },
        "waiting on another device's fence"
    );
    ensure_eq!(
        foreign.value().during("reading the fence")?,
        0,
        "the foreign fence's value"
    );
    sentinel.verify(ctx, "using another device's fence")
}

fn oversized_request<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let device = ctx.device();
    let before = device.memory_stats();
    for size in [u64::MAX, 1 << 60, 1 << 50] {
        if device.allocate(size, MemoryKind::Device, sentinel.stream()).is_ok() {
            return Err(Failure::new(format!(
                "allocating {size} bytes: expected an error, got a buffer"
            )));
        }
    }
    ensure_eq!(
        device.memory_stats().live_count,
        before.live_count,
        "live buffers after refused requests"
    );
    sentinel.verify(ctx, "oversized requests")
}

fn stream_signal_regression<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    let stream = sentinel.stream();
    stream.signal(&fence, 5).during("signalling 5")?;
    let err = expect_error!(
        stream.signal(&fence, 3),
        Error::FenceRegressed { .. },
        "signalling 3 after 5 on a stream"
    );
    if let Error::FenceRegressed { requested, current } = err {
        ensure_eq!((requested, current), (3, 5), "(requested, current) in the error");
    }
    stream
        .signal(&fence, 6)
        .during("signalling 6 after the refused regression")?;
    fence
        .wait(6, Duration::from_secs(10))
        .during("waiting for 6 on the CPU")?;
    ensure_eq!(fence.value().during("reading")?, 6, "fence value");
    sentinel.verify(ctx, "a refused fence regression")
}

fn zero_timeout_wait<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let fence = ctx.device().create_fence(0).during("creating a fence")?;
    expect_error!(
        fence.wait(1, Duration::ZERO),
        Error::Timeout { .. },
        "waiting with a zero timeout for a value never signalled"
    );
    fence
        .wait(0, Duration::ZERO)
        .during("waiting for a value already reached")?;
    fence.signal(1).during("signalling after the timeout")?;
    fence.wait(1, Duration::ZERO).during("waiting after the signal")
}

fn end_capture_without_begin<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    expect_error!(
        sentinel.stream().end_capture(),
        Error::CaptureState(_),
        "ending a capture never begun"
    );
    ensure!(
        !sentinel.stream().is_capturing(),
        "the stream reports capturing after a refused end_capture"
    );
    sentinel.verify(ctx, "end_capture without begin_capture")
}

fn begin_capture_twice<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let pool = ctx.device().graph_pool();
    let stream = ctx.stream()?;
    stream.begin_capture(&pool).during("beginning a capture")?;
    expect_error!(
        stream.begin_capture(&pool),
        Error::CaptureState(_),
        "beginning a capture on a capturing stream"
    );
    if stream.is_capturing() {
        stream.end_capture().during("ending the first capture")?;
    }
    ensure!(
        !stream.is_capturing(),
        "the stream is still capturing after end_capture"
    );
    let buffer = ctx
        .device()
        .allocate(LEN, MemoryKind::Device, &stream)
        .during("allocating on the stream afterwards")?;
    stream.fill(&buffer, 0, LEN, 9).during("filling afterwards")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &[9; LEN as usize], "the stream's work after the refused capture")?;
    sentinel.verify(ctx, "beginning a capture twice")
}

fn out_of_bounds_copy_from_import<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let sentinel = Sentinel::new(ctx)?;
    let (destination, contents) = target(ctx, &sentinel)?;
    let host = pattern(1000, 3);
    let import = ctx
        .device()
        .import_host(&host, ImportPolicy::ANY, sentinel.stream())
        .during("importing 1000 bytes")?;
    let err = expect_error!(
        sentinel.stream().copy(&import, 0, &destination, 0, 1001),
        Error::OutOfBounds { .. },
        "copying 1001 bytes from a 1000-byte import"
    );
    ensure_out_of_bounds(&err, 0, 1001, 1000)?;
    ensure_unchanged(&sentinel, &destination, &contents, "a refused copy from an import")?;
    drop(import);
    sentinel.verify(ctx, "an out-of-bounds copy from an import")
}
