//! Graph capture and replay, graph pools shared by captures, and captures that must be
//! refused.

use gpuhal_hal::{Backend, Capabilities, Device, Error, Graph, GraphExec, GraphPool, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, KIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq, expect_error};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Graphs;
    let graphs = Capabilities::GRAPHS;
    vec![
        Case::new(
            "replay_after_input_change",
            area,
            graphs,
            replay_after_input_change::<B>,
        ),
        Case::new("capture_does_not_execute", area, graphs, capture_does_not_execute::<B>),
        Case::new("node_count_matches_captured_work", area, graphs, node_count::<B>),
        Case::new("exec_outlives_its_graph", area, graphs, exec_outlives_graph::<B>),
        Case::new(
            "outputs_have_stable_addresses",
            area,
            graphs,
            outputs_have_stable_addresses::<B>,
        ),
        Case::new("shared_pool_tracks_the_largest_capture", area, graphs, shared_pool::<B>),
        Case::new("update_with_same_shape", area, graphs, update_same_shape::<B>),
        Case::new(
            "update_with_different_shape_fails",
            area,
            graphs,
            update_different_shape::<B>,
        ),
        Case::new(
            "synchronize_during_capture_is_refused",
            area,
            graphs,
            synchronize_during_capture::<B>,
        ),
        Case::new("read_during_capture_is_refused", area, graphs, read_during_capture::<B>),
        Case::new(
            "write_during_capture_is_refused",
            area,
            graphs,
            write_during_capture::<B>,
        ),
        Case::new(
            "failed_closure_abandons_the_capture",
            area,
            graphs,
            closure_abandons::<B>,
        ),
    ]
}

const LEN: u64 = 64 * KIB;

fn replay_after_input_change<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let input = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let output = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let (graph, ()) = stream
        .capture(&pool, |s| {
            s.copy(&input, 0, &output, 0, LEN)?;
            s.fill(&output, LEN - 64, 64, 0xab)
        })
        .during("capturing copy + fill")?;
    let exec = graph.instantiate().during("instantiating")?;
    for replay in 0..5u8 {
        let data = pattern(LEN as usize, replay);
        stream.write(&input, 0, &data).during("changing the input")?;
        exec.launch(&stream).during("launching")?;
        let mut expected = data;
        expected[(LEN - 64) as usize..].fill(0xab);
        let read = read_back::<B>(&stream, &output, 0, LEN as usize)?;
        ensure_bytes(&read, &expected, &format!("output of replay {replay}"))?;
    }
    Ok(())
}

fn capture_does_not_execute<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    stream.fill(&buffer, 0, LEN, 0).during("clearing")?;
    stream.synchronize().during("synchronising")?;
    let (graph, ()) = stream
        .capture(&pool, |s| s.fill(&buffer, 0, LEN, 7))
        .during("capturing a fill")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(
        &read,
        &vec![0; LEN as usize],
        "buffer after capturing (not replaying) a fill",
    )?;
    graph
        .instantiate()
        .during("instantiating")?
        .launch(&stream)
        .during("launching")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![7; LEN as usize], "buffer after replaying the fill")
}

fn node_count<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let a = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let b = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let (graph, ()) = stream
        .capture(&pool, |s| {
            s.fill(&a, 0, LEN, 1)?;
            s.copy(&a, 0, &b, 0, LEN)?;
            s.fill(&b, 0, 16, 2)
        })
        .during("capturing fill, copy, fill")?;
    ensure_eq!(graph.node_count(), 3, "node count of a capture of fill, copy, fill");
    let (empty, ()) = stream.capture(&pool, |_| Ok(())).during("capturing nothing")?;
    ensure_eq!(empty.node_count(), 0, "node count of an empty capture");
    empty
        .instantiate()
        .during("instantiating an empty graph")?
        .launch(&stream)
        .during("launching an empty graph")?;
    stream.synchronize().during("synchronising")
}

fn exec_outlives_graph<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let exec = {
        let pool = device.graph_pool();
        let (graph, ()) = stream
            .capture(&pool, |s| s.fill(&buffer, 0, LEN, 0x3c))
            .during("capturing")?;
        graph.instantiate().during("instantiating")?
    };
    exec.launch(&stream)
        .during("launching after the graph and pool handles were dropped")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![0x3c; LEN as usize], "buffer after the replay")
}

fn outputs_have_stable_addresses<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let input = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let (graph, output) = stream
        .capture(&pool, |s| {
            let scratch = device.allocate(LEN, MemoryKind::Device, s)?;
            let output = device.allocate(LEN, MemoryKind::Device, s)?;
            s.copy(&input, 0, &scratch, 0, LEN)?;
            s.copy(&scratch, 0, &output, 0, LEN)?;
            Ok(output)
        })
        .during("capturing with allocations")?;
    ensure!(
        output.is_graph_allocation(),
        "a buffer allocated during capture did not come from the graph pool"
    );
    let address = output.address();
    let exec = graph.instantiate().during("instantiating")?;
    for replay in 0..4u8 {
        let data = pattern(LEN as usize, 40 + replay);
        stream.write(&input, 0, &data).during("changing the input")?;
        // Ordinary allocations between replays must not be given the output's memory.
        let other = device
            .allocate(LEN, MemoryKind::Device, &stream)
            .during("allocating outside the capture")?;
        ensure!(
            !other.is_graph_allocation(),
            "an allocation after end_capture came from the graph pool"
        );
        ensure!(
            other.address() + other.len() <= address || address + output.len() <= other.address(),
            "an allocation outside the capture at {:#x} overlaps the captured output at {address:#x}",
            other.address()
        );
        stream
            .fill(&other, 0, LEN, 0xff)
            .during("filling the other allocation")?;
        exec.launch(&stream).during("launching")?;
        ensure_eq!(output.address(), address, "output address after replay {replay}");
        let read = read_back::<B>(&stream, &output, 0, LEN as usize)?;
        ensure_bytes(&read, &data, &format!("captured output after replay {replay}"))?;
    }
    Ok(())
}

/// Captures a batch of `batch` units: two temporaries, freed inside the capture, as a
/// framework's intermediate activations would be.
fn capture_batch<B: Backend>(
    device: &B::Device,
    stream: &B::Stream,
    pool: &GraphPool<B>,
    batch: u64,
) -> gpuhal_hal::Result<B::Graph> {
    let unit = 256 * KIB;
    let (graph, ()) = stream.capture(pool, |s| {
        let activations = device.allocate(batch * unit, MemoryKind::Device, s)?;
        let logits = device.allocate(batch * unit / 2, MemoryKind::Device, s)?;
        s.fill(&activations, 0, activations.len(), batch as u8)?;
        s.copy(&activations, 0, &logits, 0, logits.len())?;
        Ok(())
    })?;
    Ok(graph)
}

fn shared_pool<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let batches: Vec<u64> = (1..=8).rev().collect();

    let shared = device.graph_pool();
    let mut graphs = Vec::new();
    for &batch in &batches {
        graphs.push(capture_batch::<B>(device, &stream, &shared, batch).during("capturing into the shared pool")?);
    }
    let shared_reserved = shared.stats().reserved_bytes;

    let mut separate_reserved = Vec::new();
    let mut separate_graphs = Vec::new();
    for &batch in &batches {
        let own = device.graph_pool();
        separate_graphs.push(capture_batch::<B>(device, &stream, &own, batch).during("capturing into its own pool")?);
        separate_reserved.push(own.stats().reserved_bytes);
    }
    let largest = separate_reserved.iter().copied().max().unwrap_or(0);
    let sum: u64 = separate_reserved.iter().sum();
    ensure!(largest > 0, "a capture with allocations reserved nothing in its pool");
    ensure!(
        shared_reserved * 100 <= largest * 105,
        "8 captures sharing one pool reserved {shared_reserved} bytes; the largest alone needs {largest} \
         (limit 1.05×); separate pools total {sum}"
    );
    ensure!(
        sum > shared_reserved,
        "separate pools ({sum} bytes) needed no more than one shared pool ({shared_reserved})"
    );
    // Replayed in one stream order, every graph still runs.
    for graph in &graphs {
        graph
            .instantiate()
            .during("instantiating")?
            .launch(&stream)
            .during("launching")?;
    }
    stream.synchronize().during("synchronising after replaying every graph")
}

/// Captures one fill of the whole of `buffer` with `value`.
fn capture_fill<B: Backend>(
    stream: &B::Stream,
    pool: &GraphPool<B>,
    buffer: &gpuhal_hal::Buffer<B>,
    value: u8,
) -> Result<B::Graph, Failure> {
    let (graph, ()) = stream
        .capture(pool, |s| s.fill(buffer, 0, buffer.len(), value))
        .during("capturing a fill")?;
    Ok(graph)
}

fn update_same_shape<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let ones = capture_fill::<B>(&stream, &pool, &buffer, 1)?;
    let twos = capture_fill::<B>(&stream, &pool, &buffer, 2)?;
    let mut exec = ones.instantiate().during("instantiating")?;
    exec.launch(&stream).during("launching")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![1; LEN as usize], "buffer after the first graph")?;
    exec.update(&twos).during("updating with a same-shaped capture")?;
    exec.launch(&stream).during("launching the updated exec")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![2; LEN as usize], "buffer after the updated exec ran")
}

fn update_different_shape<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let other = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let ones = capture_fill::<B>(&stream, &pool, &buffer, 1)?;
    let (two_nodes, ()) = stream
        .capture(&pool, |s| {
            s.fill(&buffer, 0, LEN, 3)?;
            s.copy(&buffer, 0, &other, 0, LEN)
        })
        .during("capturing fill + copy")?;
    let mut exec = ones.instantiate().during("instantiating")?;
    expect_error!(
        exec.update(&two_nodes),
        Error::GraphUpdate { .. },
        "updating a one-fill exec with a fill + copy capture"
    );
    stream.fill(&buffer, 0, LEN, 0).during("clearing")?;
    exec.launch(&stream).during("launching after the refused update")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(
        &read,
        &vec![1; LEN as usize],
        "buffer after launching the unchanged exec",
    )
}

/// Begins a capture, runs `illegal` (which must be refused with `CaptureInvalidated`),
/// and checks that the stream works normally afterwards.
fn refused_during_capture<B: Backend>(
    ctx: &Context<B>,
    what: &str,
    illegal: impl FnOnce(&B::Stream, &gpuhal_hal::Buffer<B>) -> gpuhal_hal::Result<()>,
) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    stream.begin_capture(&pool).during("beginning a capture")?;
    stream.fill(&buffer, 0, LEN, 1).during("capturing a fill")?;
    expect_error!(
        illegal(&stream, &buffer),
        Error::CaptureInvalidated { .. },
        "{what} on a capturing stream"
    );
    ensure!(
        !stream.is_capturing(),
        "the stream still captures after {what} invalidated it"
    );
    let data = pattern(LEN as usize, 50);
    stream
        .write(&buffer, 0, &data)
        .during(&format!("writing after {what} was refused"))?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &data, &format!("buffer written after {what} was refused"))?;
    let graph = capture_fill::<B>(&stream, &pool, &buffer, 6)?;
    graph
        .instantiate()
        .during("instantiating a capture made afterwards")?
        .launch(&stream)
        .during("launching")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![6; LEN as usize], "buffer after a capture made afterwards")
}

fn synchronize_during_capture<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    refused_during_capture(ctx, "synchronize", |stream, _| stream.synchronize())
}

fn read_during_capture<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    refused_during_capture(ctx, "read", |stream, buffer| {
        let mut out = [0u8; 16];
        stream.read(buffer, 0, &mut out)
    })
}

fn write_during_capture<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    refused_during_capture(ctx, "write", |stream, buffer| stream.write(buffer, 0, &[1; 16]))
}

fn closure_abandons<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let pool = device.graph_pool();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).during("allocating")?;
    let result = stream.capture(&pool, |s| {
        s.fill(&buffer, 0, LEN, 1)?;
        Err::<(), _>(Error::invalid("conformance", "the body gave up"))
    });
    match result {
        Err(Error::InvalidArgument { .. }) => {}
        Err(other) => {
            return Err(Failure::new(format!(
                "capture whose body failed: expected the body's error, got {other}"
            )))
        }
        Ok(_) => {
            return Err(Failure::new(
                "capture whose body failed: expected the body's error, got a graph",
            ))
        }
    }
    ensure!(
        !stream.is_capturing(),
        "the stream still captures after the body failed"
    );
    stream.fill(&buffer, 0, LEN, 4).during("filling afterwards")?;
    let read = read_back::<B>(&stream, &buffer, 0, LEN as usize)?;
    ensure_bytes(&read, &vec![4; LEN as usize], "buffer after the abandoned capture")
}
