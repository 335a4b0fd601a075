//! Shapes of work whose allocations are recorded as traces (`gpuhal-bench record-shapes`),
//! beside the real gpt2 trace, so the cache's policy is judged on more than one workload:
//! an inference decode loop whose KV cache grows, and a training loop whose sequence
//! length changes every step.
//!
//! Each shape runs through the caching pool alone (no memory is touched) with gpuhal's
//! trace recorder on; what is recorded is the order and sizes of allocations and frees.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use gpuhal_hal::pool::{Buffer, CountingMemory, StreamCache};
use gpuhal_hal::trace::TraceRecorder;
use gpuhal_hal::MemoryKind;

use crate::harness::SplitMix;
use crate::noop::pool_alone;

/// The bytes of a bf16 element.
const BF16: u64 = 2;

type Held = Buffer<CountingMemory>;

fn alloc(cache: &StreamCache<CountingMemory>, bytes: u64) -> Result<Held> {
    Ok(cache.allocate(bytes, MemoryKind::Device)?)
}

/// A decoder (24 layers, width 2048, 16 heads, batch 8) generating 512 tokens after a
/// 128-token prompt. Each layer's KV cache grows in chunks of 64 tokens: a larger buffer
/// is allocated, the old one copied in and freed (what frameworks without paged KV do).
/// Per token, each layer allocates its activations and attention scores (which grow with
/// the context) and frees them; the logits are allocated once a token.
pub fn decode_kv(cache: &StreamCache<CountingMemory>) -> Result<()> {
    const LAYERS: usize = 24;
    const WIDTH: u64 = 2048;
    const HEADS: u64 = 16;
    const BATCH: u64 = 8;
    const VOCAB: u64 = 50_257;
    const CHUNK: u64 = 64;
    let weights: Vec<Held> = (0..LAYERS)
        .flat_map(|_| [WIDTH * 3 * WIDTH, WIDTH * WIDTH, WIDTH * 4 * WIDTH, 4 * WIDTH * WIDTH])
        .map(|elements| alloc(cache, elements * BF16))
        .collect::<Result<_>>()?;
    let kv_bytes = |tokens: u64| 2 * BATCH * tokens * WIDTH * BF16;
    let prompt: u64 = 128;
    let mut capacity = prompt.div_ceil(CHUNK) * CHUNK;
    let mut kv: Vec<Held> = (0..LAYERS)
        .map(|_| alloc(cache, kv_bytes(capacity)))
        .collect::<Result<_>>()?;
    for context in prompt..prompt + 512 {
        if context >= capacity {
            capacity += CHUNK;
            for slot in kv.iter_mut() {
                let grown = alloc(cache, kv_bytes(capacity))?;
                // The old cache is copied into the new one, then freed.
                *slot = grown;
            }
        }
        let mut hidden = alloc(cache, BATCH * WIDTH * BF16)?;
        for _ in 0..LAYERS {
            let qkv = alloc(cache, BATCH * 3 * WIDTH * BF16)?;
            let scores = alloc(cache, BATCH * HEADS * (context + 1) * 4)?;
            let attended = alloc(cache, BATCH * WIDTH * BF16)?;
            drop((qkv, scores));
            let up = alloc(cache, BATCH * 4 * WIDTH * BF16)?;
            let down = alloc(cache, BATCH * WIDTH * BF16)?;
            drop((up, attended));
            hidden = down;
        }
        let logits = alloc(cache, BATCH * VOCAB * 4)?;
        drop((logits, hidden));
    }
    drop((kv, weights));
    Ok(())
}

/// Training a 12-layer, 768-wide model (12 heads, batch 8) for 24 steps, each at a
/// sequence length drawn from 128–1024 in steps of 64. The forward pass keeps each
/// layer's activations for the backward pass, which frees them in reverse order while
/// allocating the gradients' temporaries; parameters, gradients and the optimizer's two
/// moments stay allocated throughout.
pub fn train_varlen(cache: &StreamCache<CountingMemory>) -> Result<()> {
    const LAYERS: usize = 12;
    const WIDTH: u64 = 768;
    const HEADS: u64 = 12;
    const BATCH: u64 = 8;
    const VOCAB: u64 = 50_257;
    let parameter_sizes: Vec<u64> = std::iter::once(VOCAB * WIDTH)
        .chain((0..LAYERS).flat_map(|_| [3 * WIDTH * WIDTH, WIDTH * WIDTH, 4 * WIDTH * WIDTH, 4 * WIDTH * WIDTH]))
        .collect();
    // Parameters (fp32), their gradients and two optimizer moments.
    let state: Vec<Held> = parameter_sizes
        .iter()
        .flat_map(|&n| [n * 4; 4])
        .map(|bytes| alloc(cache, bytes))
        .collect::<Result<_>>()?;
    let mut rng = SplitMix::new(0x7EA1);
    for _ in 0..24 {
        let seq = 128 + rng.below(15) * 64;
        let tokens = BATCH * seq;
        let mut saved: VecDeque<Vec<Held>> = VecDeque::new();
        let embedded = alloc(cache, tokens * WIDTH * BF16)?;
        for _ in 0..LAYERS {
            let layer = [
                tokens * WIDTH * BF16,            // normalised input
                tokens * 3 * WIDTH * BF16,        // q, k, v
                BATCH * HEADS * seq * seq * BF16, // attention probabilities
                tokens * WIDTH * BF16,            // attention output
                tokens * 4 * WIDTH * BF16,        // MLP up
                tokens * 4 * WIDTH * BF16,        // activation
                tokens * WIDTH * BF16,            // residual out
            ];
            let scores = alloc(cache, BATCH * HEADS * seq * seq * 4)?;
            let kept = layer.iter().map(|&b| alloc(cache, b)).collect::<Result<Vec<_>>>()?;
            drop(scores);
            saved.push_back(kept);
        }
        let logits = alloc(cache, tokens * VOCAB * BF16)?;
        let loss_grad = alloc(cache, tokens * VOCAB * BF16)?;
        drop(logits);
        let mut upstream = alloc(cache, tokens * WIDTH * BF16)?;
        drop(loss_grad);
        while let Some(kept) = saved.pop_back() {
            let mlp_grad = alloc(cache, tokens * 4 * WIDTH * BF16)?;
            let scores_grad = alloc(cache, BATCH * HEADS * seq * seq * 4)?;
            let qkv_grad = alloc(cache, tokens * 3 * WIDTH * BF16)?;
            drop((mlp_grad, scores_grad));
            let down = alloc(cache, tokens * WIDTH * BF16)?;
            drop((qkv_grad, kept));
            upstream = down;
        }
        drop((upstream, embedded));
        // The optimizer step's temporaries, a few of the largest parameters at a time.
        for &n in parameter_sizes.iter().take(4) {
            drop(alloc(cache, n * 4)?);
        }
    }
    drop(state);
    Ok(())
}

/// The recorded shapes: name and workload.
pub type Shape = (&'static str, fn(&StreamCache<CountingMemory>) -> Result<()>);

/// Every shape recorded by `record-shapes`.
pub const SHAPES: [Shape; 2] = [("decode_kv", decode_kv), ("train_varlen", train_varlen)];

/// Records every shape as `DIR/<name>.jsonl.gz`; returns the paths written.
pub fn record_all(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, shape) in SHAPES {
        let path = dir.join(format!("{name}.jsonl.gz"));
        let (allocator, cache) = pool_alone();
        allocator.start_trace(TraceRecorder::create(name, &path)?);
        shape(&cache).with_context(|| format!("running {name}"))?;
        let recorder = allocator.stop_trace().context("the trace recorder went missing")?;
        let events = recorder.finish()?;
        eprintln!("gpuhal-bench: {name}: {events} events → {}", path.display());
        written.push(path);
    }
    Ok(written)
}
