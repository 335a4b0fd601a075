//! gpuhal's benchmarks: the caching pool, events, fences, graphs, bandwidth and trace
//! replay, measured beside the native calls they replace, in one run.
//!
//! The binary (`gpuhal-bench suite` / `gpuhal-bench replay`) prints Markdown tables and
//! writes the same as JSON. CPU micro benchmarks of the pool alone are criterion benches
//! under `benches/`.

pub mod checks;
pub mod handoff;
pub mod harness;
pub mod noop;
pub mod report;
pub mod shapes;
pub mod sharing;
pub mod suite;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "mock")]
pub mod mock;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use gpuhal_hal::{Backend, Device};

use crate::harness::Settings;
use crate::report::{DeviceSummary, Report};
use crate::suite::SuiteOptions;

/// The native baselines of a backend, measured beside gpuhal in the same run.
pub trait Baselines<B: Backend> {
    /// Adds the native rows (ids from [`suite::native_row_specs`]) to `report`.
    fn run(&self, device: &B::Device, settings: &Settings, options: &SuiteOptions, report: &mut Report) -> Result<()>;
}

/// Where the suite looks for the gpt2_train trace when none is given, relative to the
/// working directory: the repository's vendored copy, then the shared traces beside or
/// above it.
pub const TRACE_CANDIDATES: [&str; 3] = [
    "traces/gpt2_train.jsonl.gz",
    "shared/traces/gpt2_train.jsonl.gz",
    "../shared/traces/gpt2_train.jsonl.gz",
];

/// The trace to replay: `given`, or the first candidate that exists.
pub fn find_trace(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(path) => Some(path.to_path_buf()),
        None => TRACE_CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// Describes an opened device.
pub fn device_summary<B: Backend>(device: &B::Device) -> DeviceSummary {
    let info = device.info();
    DeviceSummary {
        backend: B::NAME,
        name: info.name.clone(),
        total_memory: info.total_memory,
    }
}

/// Runs the whole suite: the pool alone, gpuhal on `open()`'s device, the native
/// baselines, and the trace replay on a fresh device; then checks the targets.
pub fn run_suite<B: Backend>(
    open: &dyn Fn() -> Result<B::Device>,
    baselines: &dyn Baselines<B>,
    settings: &Settings,
    options: &SuiteOptions,
    trace: Option<&Path>,
) -> Result<Report> {
    let mut report = Report::new("suite", settings.smoke);
    eprintln!("gpuhal-bench: {}", suite::lock_note());
    if settings.wants("pool alone") {
        eprintln!("gpuhal-bench: caching pool alone …");
        suite::pool_alone_rows(settings, &mut report)?;
    }
    if settings.wants("pool alone thread") {
        eprintln!("gpuhal-bench: caching pool alone, thread scaling …");
        suite::pool_alone_thread_rows(settings, &mut report)?;
    }
    {
        let device = open()?;
        report.device = Some(device_summary::<B>(&device));
        eprintln!("gpuhal-bench: gpuhal on the {} backend …", B::NAME);
        suite::run::<B>(&device, settings, options, &mut report)?;
        eprintln!("gpuhal-bench: native baselines …");
        baselines.run(&device, settings, options, &mut report)?;
    }
    if settings.wants("handoff") {
        eprintln!("gpuhal-bench: producer → consumer hand-off, each policy on a fresh device …");
        let start = std::time::Instant::now();
        handoff::rows::<B>(open, settings, options.handoff_consumer_bytes, &mut report).context("hand-off")?;
        eprintln!("  handoff: {:.1} s", start.elapsed().as_secs_f64());
    }
    match find_trace(trace).filter(|_| settings.wants("trace")) {
        Some(path) => {
            eprintln!("gpuhal-bench: replaying {} …", path.display());
            let trace = gpuhal_hal::trace::Trace::read(&path)?;
            // The replay reads the allocator's statistics as its own: it needs a fresh one.
            let device = open().context("opening a fresh device for the trace replay")?;
            suite::trace_rows::<B>(&device, &trace, None, &mut report)?;
            drop(device);
            let device = open().context("opening a fresh device for the limited trace replay")?;
            suite::trace_rows::<B>(&device, &trace, Some(checks::target::RESERVED_OVER_LIVE), &mut report)?;
        }
        None => {
            let why = if settings.wants("trace") {
                "trace not found: pass --trace PATH"
            } else {
                "not selected by --only"
            };
            report.missing(
                "trace.ns_per_event",
                "trace",
                "replay of gpt2_train: time per event",
                "ns",
                why,
            );
            report.missing(
                "trace.reserved_over_live",
                "trace",
                "replay of gpt2_train: peak reserved ÷ peak live",
                "ratio",
                why,
            );
        }
    }
    sort_rows(&mut report);
    checks::evaluate(&mut report);
    Ok(report)
}

/// Groups rows by benchmark (native baselines beside gpuhal's rows), keeping run order
/// inside a group.
fn sort_rows(report: &mut Report) {
    const ORDER: [&str; 11] = [
        "cache-hit",
        "churn",
        "handoff",
        "threads",
        "cross-thread",
        "events",
        "fence",
        "graph",
        "graph-memory",
        "bandwidth",
        "trace",
    ];
    report
        .rows
        .sort_by_key(|row| ORDER.iter().position(|g| *g == row.group).unwrap_or(ORDER.len()));
}

/// Replays one trace on `device` and reports it; with `limit`, under a memory limit of
/// that multiple of its peak live.
pub fn run_replay<B: Backend>(device: &B::Device, path: &Path, limit: Option<f64>) -> Result<Report> {
    let trace = gpuhal_hal::trace::Trace::read(path)?;
    let mut report = Report::new("replay", false);
    report.device = Some(device_summary::<B>(device));
    suite::trace_rows::<B>(device, &trace, limit, &mut report)?;
    if let Some(factor) = limit {
        let ratio = report.median("trace.reserved_over_live.limited").unwrap_or(f64::NAN);
        report.check(
            "trace",
            format!("completes under a memory limit of {factor} × peak live"),
            format!("completed; reserved ÷ peak live {ratio:.4}"),
            report::Verdict::Met,
        );
    }
    Ok(report)
}
