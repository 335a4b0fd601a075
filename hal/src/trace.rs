//! Allocation traces: recording a workload's alloc/free events as JSON lines, and reading
//! them back for replay.
//!
//! The format: a header line (`{"trace": NAME, ...}`), then one event per line,
//! `{"op": "alloc"|"free", "id": N, "size": BYTES, "stream": S}`; `id` pairs a free with
//! its alloc. Files ending in `.gz` are gzip-compressed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Whether an event allocates or frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceOp {
    /// An allocation.
    Alloc,
    /// A free.
    Free,
}

/// One alloc or free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Alloc or free.
    pub op: TraceOp,
    /// Pairs a free with its alloc.
    pub id: u64,
    /// Bytes requested.
    pub size: u64,
    /// Stream the allocation was made on.
    pub stream: u64,
}

impl TraceEvent {
    /// An alloc event.
    pub fn alloc(id: u64, size: u64, stream: u64) -> Self {
        TraceEvent {
            op: TraceOp::Alloc,
            id,
            size,
            stream,
        }
    }

    /// A free event.
    pub fn free(id: u64, size: u64, stream: u64) -> Self {
        TraceEvent {
            op: TraceOp::Free,
            id,
            size,
            stream,
        }
    }
}

/// A trace read from a file: its header (kept as JSON, fields vary by recorder) and events.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The header line.
    pub header: serde_json::Value,
    /// Events in the order they happened.
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// The trace's name from its header, or "unnamed".
    pub fn name(&self) -> &str {
        self.header.get("trace").and_then(|v| v.as_str()).unwrap_or("unnamed")
    }

    /// Highest sum of requested sizes alive at once.
    pub fn peak_live_bytes(&self) -> u64 {
        let (mut live, mut peak) = (0u64, 0u64);
        for event in &self.events {
            match event.op {
                TraceOp::Alloc => {
                    live += event.size;
                    peak = peak.max(live);
                }
                TraceOp::Free => live = live.saturating_sub(event.size),
            }
        }
        peak
    }

    /// Reads a `.jsonl` or `.jsonl.gz` trace, or a PyTorch memory snapshot (`.pickle`,
    /// `.pkl`: device 0's actions, see [`torch_snapshot`](crate::torch_snapshot)).
    pub fn read(path: &Path) -> Result<Trace> {
        let context = |what: &str| format!("{what} {}", path.display());
        if path.extension().is_some_and(|e| e == "pickle" || e == "pkl") {
            let bytes = std::fs::read(path).map_err(|source| Error::Trace {
                context: context("reading"),
                source,
            })?;
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("snapshot");
            return crate::torch_snapshot::parse(&bytes, name, 0);
        }
        let file = File::open(path).map_err(|source| Error::Trace {
            context: context("opening"),
            source,
        })?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        Self::parse(BufReader::new(reader)).map_err(|err| match err {
            Error::Trace { context: c, source } => Error::Trace {
                context: format!("{c} in {}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Parses a trace from JSON lines.
    pub fn parse(reader: impl BufRead) -> Result<Trace> {
        let bad = |line: usize, why: String| Error::Trace {
            context: format!("line {line}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        };
        let mut lines = reader.lines().enumerate();
        let header = match lines.next() {
            Some((_, line)) => {
                let line = line.map_err(|source| Error::Trace {
                    context: "line 1".into(),
                    source,
                })?;
                serde_json::from_str(&line).map_err(|e| bad(1, format!("header: {e}")))?
            }
            None => return Err(bad(1, "empty trace: no header".into())),
        };
        let mut events = Vec::new();
        for (index, line) in lines {
            let line = line.map_err(|source| Error::Trace {
                context: format!("line {}", index + 1),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            events.push(serde_json::from_str(&line).map_err(|e| bad(index + 1, e.to_string()))?);
        }
        Ok(Trace { header, events })
    }
}

/// Writes alloc/free events as JSON lines. Give one to
/// [`CachingAllocator::start_trace`](crate::pool::CachingAllocator::start_trace).
///
/// ```
/// use gpuhal_hal::trace::{Trace, TraceEvent, TraceRecorder};
/// # fn main() -> gpuhal_hal::Result<()> {
/// let path = std::env::temp_dir().join("gpuhal-trace-doc.jsonl.gz");
/// let mut recorder = TraceRecorder::create("demo", &path)?;
/// recorder.record(&TraceEvent::alloc(0, 1024, 0));
/// recorder.record(&TraceEvent::free(0, 1024, 0));
/// recorder.finish()?;
/// let trace = Trace::read(&path)?;
/// assert_eq!(trace.events.len(), 2);
/// assert_eq!(trace.peak_live_bytes(), 1024);
/// # Ok(())
/// # }
/// ```
pub struct TraceRecorder {
    out: Box<dyn Write + Send>,
    events: u64,
    error: Option<std::io::Error>,
}

impl TraceRecorder {
    /// A recorder writing to `out`, starting with a header naming the trace.
    pub fn new(name: &str, out: impl Write + Send + 'static) -> Self {
        let mut recorder = TraceRecorder {
            out: Box::new(BufWriter::new(out)),
            events: 0,
            error: None,
        };
        let header = serde_json::json!({ "trace": name, "recorder": "gpuhal" });
        recorder.write_line(&header.to_string());
        recorder
    }

    /// A recorder writing to a new file at `path` (gzip-compressed if it ends in `.gz`).
    pub fn create(name: &str, path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::Trace {
            context: format!("creating {}", path.display()),
            source,
        })?;
        Ok(if path.extension().is_some_and(|e| e == "gz") {
            Self::new(name, flate2::write::GzEncoder::new(file, flate2::Compression::fast()))
        } else {
            Self::new(name, file)
        })
    }

    /// Appends one event. The first write error is kept and reported by [`finish`](Self::finish).
    pub fn record(&mut self, event: &TraceEvent) {
        self.events += 1;
        let line = format!(
            r#"{{"op": "{}", "id": {}, "size": {}, "stream": {}}}"#,
            match event.op {
                TraceOp::Alloc => "alloc",
                TraceOp::Free => "free",
            },
            event.id,
            event.size,
            event.stream
        );
        self.write_line(&line);
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn write_line(&mut self, line: &str) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.out, "{line}") {
                self.error = Some(e);
            }
        }
    }

    /// Flushes buffered lines, keeping the first error for [`finish`](Self::finish).
    pub fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    /// Flushes and reports the first write error, if any.
    pub fn finish(mut self) -> Result<u64> {
        self.flush();
        match self.error.take() {
            Some(source) => Err(Error::Trace {
                context: "writing".into(),
                source,
            }),
            None => Ok(self.events),
        }
    }
}

/// What replaying a trace through an allocator measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReplayReport {
    /// The trace's name.
    pub trace: String,
    /// Events replayed.
    pub events: u64,
    /// Peak live bytes according to the trace itself.
    pub peak_live_bytes: u64,
    /// Peak bytes reserved from the native API during the replay.
    pub peak_reserved_bytes: u64,
    /// `peak_reserved_bytes / peak_live_bytes`.
    pub reserved_over_live: f64,
    /// Native allocation calls made.
    pub native_allocations: u64,
    /// Fraction of allocations served from the cache.
    pub hit_rate: f64,
    /// Wall time per event, in nanoseconds.
    pub ns_per_event: f64,
    /// What the allocator that recorded the trace reserved at its peak, when the trace
    /// says (`torch_peak_reserved` in its header: PyTorch's traces and snapshots).
    pub recorded_peak_reserved_bytes: Option<u64>,
    /// Highest device memory in use above what was in use when the replay began, as the
    /// device reports it ([`Device::memory_info`](crate::Device::memory_info), sampled
    /// every [`DEVICE_SAMPLE_EVENTS`] events and at the end): what the native source holds
    /// beyond the pool's own accounting shows here. `None` when the device cannot say.
    pub peak_device_bytes: Option<u64>,
}

/// How often [`replay`] samples the device's memory in use, in events.
pub const DEVICE_SAMPLE_EVENTS: usize = 16;

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} events, peak live {} B, peak reserved {} B, reserved/peak live {:.4}, \
             {} native allocations, cache hit rate {:.2}%, {:.0} ns/event",
            self.trace,
            self.events,
            self.peak_live_bytes,
            self.peak_reserved_bytes,
            self.reserved_over_live,
            self.native_allocations,
            self.hit_rate * 100.0,
            self.ns_per_event
        )?;
        if let Some(recorded) = self.recorded_peak_reserved_bytes {
            write!(
                f,
                "; the recording allocator reserved {recorded} B at its peak ({:.4} x peak live)",
                recorded as f64 / self.peak_live_bytes.max(1) as f64
            )?;
        }
        if let Some(device) = self.peak_device_bytes {
            write!(
                f,
                "; device memory in use peaked {device} B above the start ({:.4} x peak live)",
                device as f64 / self.peak_live_bytes.max(1) as f64
            )?;
        }
        Ok(())
    }
}

/// Replays `trace` through `device`'s allocator: each trace stream gets a stream of its own,
/// allocations are made with the requested sizes (device memory) and freed in trace order.
/// The allocator should be fresh (its stats are read as the replay's).
pub fn replay<B: crate::Backend>(device: &B::Device, trace: &Trace) -> Result<ReplayReport> {
    use crate::{Device, MemoryKind};
    use std::collections::HashMap;

    let mut streams: HashMap<u64, B::Stream> = HashMap::new();
    for event in &trace.events {
        if let std::collections::hash_map::Entry::Vacant(slot) = streams.entry(event.stream) {
            slot.insert(device.create_stream()?);
        }
    }
    let before = device.memory_stats();
    let in_use = || {
        device
            .memory_info()
            .ok()
            .map(|(free, total)| total.saturating_sub(free))
    };
    let baseline = in_use();
    let mut peak_device = baseline;
    let mut live: HashMap<u64, crate::Buffer<B>> = HashMap::with_capacity(1024);
    let start = std::time::Instant::now();
    for (index, event) in trace.events.iter().enumerate() {
        if index % DEVICE_SAMPLE_EVENTS == 0 {
            peak_device = peak_device.max(in_use());
        }
        match event.op {
            TraceOp::Alloc => {
                let stream = &streams[&event.stream];
                let buffer = device.allocate(event.size, MemoryKind::Device, stream)?;
                live.insert(event.id, buffer);
            }
            TraceOp::Free => {
                live.remove(&event.id);
            }
        }
    }
    let elapsed = start.elapsed();
    peak_device = peak_device.max(in_use());
    let after = device.memory_stats();
    drop(live);
    let peak_live = trace.peak_live_bytes();
    let hits = after.cache_hits - before.cache_hits;
    let misses = after.cache_misses - before.cache_misses;
    Ok(ReplayReport {
        trace: trace.name().to_string(),
        events: trace.events.len() as u64,
        peak_live_bytes: peak_live,
        peak_reserved_bytes: after.peak_reserved_bytes,
        reserved_over_live: after.peak_reserved_bytes as f64 / peak_live.max(1) as f64,
        native_allocations: after.native_allocations - before.native_allocations,
        hit_rate: if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        },
        ns_per_event: elapsed.as_nanos() as f64 / trace.events.len().max(1) as f64,
        recorded_peak_reserved_bytes: trace.header.get("torch_peak_reserved").and_then(|v| v.as_u64()),
        peak_device_bytes: baseline
            .zip(peak_device)
            .map(|(start, peak)| peak.saturating_sub(start)),
    })
}
