//! One graph per batch size, all captured into one graph pool and writing one shared
//! output buffer: what an inference engine does for decode steps (vLLM's case). Graph
//! memory then tracks the largest capture, not the sum of them all.
//!
//! `cargo run --example graph_batches` runs on the mock; with `--features cuda` on a
//! machine with an NVIDIA driver it runs on the GPU (`GPUHAL_REQUIRE_GPU=1`: fail rather
//! than fall back to the mock).

use std::error::Error;
use std::process::ExitCode;

use gpuhal::mock::{MockBackend, MockConfig, MockDevice};
use gpuhal::{Backend, Capabilities, Device, Graph, GraphExec, MemoryKind, Stream};

/// Bytes per row of a batch.
const ROW: u64 = 256 << 10;
/// Batch sizes captured, largest first, as engines do (the first capture sizes the pool).
const BATCHES: [u64; 4] = [8, 4, 2, 1];
/// Bytes at the end of each output that the step stamps with its batch size.
const STAMP: u64 = 64;

fn run<B: Backend>(device: &B::Device) -> Result<(), Box<dyn Error>> {
    if !device.capabilities().contains(Capabilities::GRAPHS) {
        println!(
            "graph_batches: {} cannot capture graphs; nothing to show",
            device.info().name
        );
        return Ok(());
    }
    let stream = device.create_stream()?;
    // Static input and output buffers, sized for the largest batch, allocated outside any
    // capture: every graph reads and writes the same addresses, so a replay needs only a
    // write of the new input.
    let largest = BATCHES[0] * ROW;
    let input = device.allocate(largest, MemoryKind::Device, &stream)?;
    let output = device.allocate(largest, MemoryKind::Device, &stream)?;

    // One pool for every capture: temporaries of each capture come from its memory.
    let pool = device.graph_pool();
    let mut steps = Vec::new();
    for batch in BATCHES {
        let len = batch * ROW;
        let (graph, ()) = stream.capture(&pool, |s| {
            // A temporary (activations), freed inside the capture: two rows per batch row.
            let hidden = device.allocate(2 * len, MemoryKind::Device, s)?;
            s.copy(&input, 0, &hidden, 0, len)?;
            s.fill(&hidden, len - STAMP, STAMP, batch as u8)?; // stands in for a layer
            s.copy(&hidden, 0, &output, 0, len)
        })?;
        steps.push((batch, graph.instantiate()?));
    }
    let graph_reserved = pool.stats().reserved_bytes;
    let sum_of_temporaries: u64 = BATCHES.iter().map(|batch| 2 * batch * ROW).sum();
    println!(
        "graph_batches on {}: {} captures share one pool holding {} KiB (largest capture's temporaries: {} KiB, \
         all of them: {} KiB)",
        device.info().name,
        steps.len(),
        graph_reserved >> 10,
        (2 * largest) >> 10,
        sum_of_temporaries >> 10
    );
    if graph_reserved >= sum_of_temporaries {
        return Err(format!("the shared pool reserved {graph_reserved} bytes, no less than separate pools").into());
    }

    // Serve requests: each runs the smallest graph that fits its batch.
    for (request, rows) in [3u64, 1, 8, 5].into_iter().enumerate() {
        let Some((batch, exec)) = steps.iter().rev().find(|(batch, _)| *batch >= rows) else {
            return Err(format!("no graph captured for batch {rows}").into());
        };
        let len = batch * ROW;
        let tokens: Vec<u8> = (0..len).map(|i| (i as usize * 31 + request) as u8).collect();
        stream.write(&input, 0, &tokens)?;
        exec.launch(&stream)?;
        let mut host = vec![0; len as usize];
        stream.read(&output, 0, &mut host)?;
        let body = (len - STAMP) as usize;
        if host[..body] != tokens[..body] || host[body..].iter().any(|&b| u64::from(b) != *batch) {
            return Err(format!("request {request}: the batch-{batch} graph wrote the wrong output").into());
        }
        println!("  request of {rows} rows: replayed the batch-{batch} graph, output correct");
    }
    Ok(())
}

fn main() -> ExitCode {
    #[cfg(feature = "cuda")]
    if gpuhal::cuda::driver_available() {
        return finish(
            gpuhal::cuda::CudaDevice::open(0)
                .map_err(Into::into)
                .and_then(|device| run::<gpuhal::cuda::CudaBackend>(&device)),
        );
    }
    if std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|value| value == "1") {
        eprintln!("graph_batches: GPUHAL_REQUIRE_GPU=1, but no NVIDIA driver was found (or `cuda` is not compiled in)");
        return ExitCode::FAILURE;
    }
    finish(
        MockDevice::open(MockConfig::default())
            .map_err(Into::into)
            .and_then(|device| run::<MockBackend>(&device)),
    )
}

fn finish(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("graph_batches: {error}");
            ExitCode::FAILURE
        }
    }
}
