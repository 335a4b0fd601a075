//! The timeline picture of an allocation trace: live and reserved memory over time, live
//! memory stacked by allocation (as PyTorch's memory viewer draws it), the peaks marked,
//! and a legend naming the allocations that make the peak. Written as SVG with
//! `plotters`.
//!
//! *Live* is the sum of requested sizes alive after each event, from the trace itself.
//! *Reserved* is what gpuhal's caching pool holds from the native API when it replays
//! the trace: the pool's own policy over counting native memory, which is the same on
//! every backend, so the picture needs no device and draws the same everywhere.
//!
//! ```no_run
//! # fn main() -> gpuhal_hal::Result<()> {
//! use gpuhal_hal::trace::Trace;
//! use gpuhal_timeline::Timeline;
//!
//! let trace = Trace::read("traces/gpt2_train.jsonl.gz".as_ref())?;
//! Timeline::from_trace(&trace, Default::default())?.write_svg("timeline.svg".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! A live run is recorded and drawn in one call with [`record_svg`].

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gpuhal_hal::pool::{Allocator, CachingAllocator, CountingMemory, CountingStream, PoolConfig, StreamCache};
use gpuhal_hal::trace::{Trace, TraceOp, TraceRecorder};
use gpuhal_hal::{Error, MemoryKind, Result, StreamId};

mod draw;

/// Allocations the legend names and the picture draws in colour: the largest of those
/// alive at the peak of live memory. The rest are stacked as one grey band.
pub const HIGHLIGHTED: usize = 8;

/// One allocation of the trace: when it was made and freed, in event indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The trace's id of the allocation.
    pub id: u64,
    /// Bytes requested.
    pub size: u64,
    /// The trace's stream number.
    pub stream: u64,
    /// Index of its alloc event.
    pub start: usize,
    /// Index of its free event (the trace's length when it is never freed).
    pub end: usize,
}

/// Live and reserved bytes after every event of a trace, and every allocation's span.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The trace's name.
    pub name: String,
    /// Live bytes (requested sizes) after each event.
    pub live: Vec<u64>,
    /// Bytes gpuhal's pool reserved after each event, replaying the trace.
    pub reserved: Vec<u64>,
    /// Every allocation, in the order they were made.
    pub spans: Vec<Span>,
}

impl Timeline {
    /// Replays `trace` through a caching pool with `config` over counting native memory
    /// (one stream cache per trace stream, device memory), noting live and reserved bytes
    /// after every event.
    pub fn from_trace(trace: &Trace, config: PoolConfig) -> Result<Timeline> {
        let allocator = CachingAllocator::with_config(CountingMemory::new(u64::MAX / 4), config);
        let mut streams: HashMap<u64, StreamCache<CountingMemory>> = HashMap::new();
        let mut buffers = HashMap::new();
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut spans = Vec::new();
        let mut live = Vec::with_capacity(trace.events.len());
        let mut reserved = Vec::with_capacity(trace.events.len());
        let mut now = 0u64;
        for (index, event) in trace.events.iter().enumerate() {
            match event.op {
                TraceOp::Alloc => {
                    let cache = streams
                        .entry(event.stream)
                        .or_insert_with(|| allocator.stream_cache(CountingStream::new(), StreamId::fresh()));
                    buffers.insert(event.id, cache.allocate(event.size, MemoryKind::Device)?);
                    open.insert(event.id, spans.len());
                    spans.push(Span {
                        id: event.id,
                        size: event.size,
                        stream: event.stream,
                        start: index,
                        end: trace.events.len(),
                    });
                    now += event.size;
                }
                TraceOp::Free => {
                    // A free whose alloc the trace does not hold (recorded mid-run) is skipped.
                    if let Some(at) = open.remove(&event.id) {
                        spans[at].end = index;
                        now -= spans[at].size;
                        buffers.remove(&event.id);
                    }
                }
            }
            live.push(now);
            reserved.push(allocator.stats().reserved_bytes);
        }
        Ok(Timeline {
            name: trace.name().to_string(),
            live,
            reserved,
            spans,
        })
    }

    /// The event after which live memory was highest, and how high (the first such event).
    pub fn peak_live(&self) -> (usize, u64) {
        peak(&self.live)
    }

    /// The event after which reserved memory was highest, and how high.
    pub fn peak_reserved(&self) -> (usize, u64) {
        peak(&self.reserved)
    }

    /// The allocations alive at the peak of live memory, largest first (ties: made first).
    pub fn alive_at_peak(&self) -> Vec<&Span> {
        let (at, _) = self.peak_live();
        let mut alive: Vec<&Span> = self.spans.iter().filter(|s| s.start <= at && at < s.end).collect();
        alive.sort_by_key(|s| (std::cmp::Reverse(s.size), s.start));
        alive
    }

    /// The picture, as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        draw::svg(self).map_err(|why| Error::Trace {
            context: format!("drawing the timeline of {}", self.name),
            source: std::io::Error::other(why),
        })
    }

    /// Writes the picture to `path` as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<()> {
        let svg = self.to_svg()?;
        std::fs::write(path, svg).map_err(|source| Error::Trace {
            context: format!("writing {}", path.display()),
            source,
        })
    }
}

fn peak(values: &[u64]) -> (usize, u64) {
    values
        .iter()
        .enumerate()
        .fold((0, 0), |best, (at, &v)| if v > best.1 { (at, v) } else { best })
}

/// Records the allocations `work` makes through `allocator` and returns its result with
/// their timeline (reserved memory as the pool's policy replays them with the allocator's
/// configuration). Replaces any trace recording the allocator had running.
pub fn record<N: Allocator, R>(
    allocator: &CachingAllocator<N>,
    name: &str,
    work: impl FnOnce() -> R,
) -> Result<(R, Timeline)> {
    let buffer = SharedBuffer::default();
    allocator.start_trace(TraceRecorder::new(name, buffer.clone()));
    let result = work();
    if let Some(recorder) = allocator.stop_trace() {
        recorder.finish()?;
    }
    let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
    let trace = Trace::parse(bytes.as_slice())?;
    Ok((result, Timeline::from_trace(&trace, allocator.config())?))
}

/// [`record`], then writes the picture to `path`: a live run drawn in one call.
///
/// ```
/// use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream};
/// use gpuhal_hal::{MemoryKind, StreamId};
/// # fn main() -> gpuhal_hal::Result<()> {
/// let allocator = CachingAllocator::new(CountingMemory::new(1 << 40));
/// let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());
/// let path = std::env::temp_dir().join("gpuhal-timeline-doc.svg");
/// gpuhal_timeline::record_svg(&allocator, "doc", &path, || -> gpuhal_hal::Result<()> {
///     let weights = stream.allocate(64 << 20, MemoryKind::Device)?;
///     for _ in 0..4 {
///         drop(stream.allocate(16 << 20, MemoryKind::Device)?);
///     }
///     drop(weights);
///     Ok(())
/// })??;
/// assert!(std::fs::read_to_string(&path).unwrap().contains("peak live"));
/// # Ok(())
/// # }
/// ```
pub fn record_svg<N: Allocator, R>(
    allocator: &CachingAllocator<N>,
    name: &str,
    path: &Path,
    work: impl FnOnce() -> R,
) -> Result<R> {
    let (result, timeline) = record(allocator, name, work)?;
    timeline.write_svg(path)?;
    Ok(result)
}

/// A writer into memory that the recorder can own while the caller keeps a handle.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("trace buffer poisoned"))?;
        buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
