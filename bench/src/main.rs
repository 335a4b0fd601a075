//! `gpuhal-bench suite [--backend mock|cuda] [--smoke] [--out DIR]` measures gpuhal beside
//! the native calls it replaces and prints medians, ratios and the targets met or missed;
//! `gpuhal-bench replay TRACE` replays an allocation trace through the caching allocator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use gpuhal_bench::harness::Settings;
use gpuhal_bench::report::Report;

#[derive(Parser)]
#[command(name = "gpuhal-bench", about = "gpuhal beside the native calls it replaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every benchmark and checks the targets.
    Suite {
        #[arg(long, value_enum, default_value_t = BackendName::default_compiled())]
        backend: BackendName,
        /// A handful of iterations each, to prove the benchmarks work (not results).
        #[arg(long)]
        smoke: bool,
        /// Where to write the JSON and Markdown (default: target/bench).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The gpt2_train trace (default: shared/traces/gpt2_train.jsonl.gz if present).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Device ordinal.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Run only the benchmarks whose names contain one of these (comma-separated):
        /// pool, cache-hit, churn, thread, cross-thread, events, fences, graph replay, graph memory,
        /// bandwidth, trace.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Platform the mock imitates.
        #[arg(long, value_enum, default_value_t = MockProfile::Discrete)]
        profile: MockProfile,
        /// Mock only: run with the race checker on, to measure what it costs (compare with a
        /// run without, on the same build).
        #[arg(long)]
        check_races: bool,
    },
    /// Replays an allocation trace (.jsonl or .jsonl.gz) through the caching allocator.
    Replay {
        trace: PathBuf,
        #[arg(long, value_enum, default_value_t = BackendName::default_compiled())]
        backend: BackendName,
        /// Where to write the JSON (default: target/bench).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device ordinal.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Hold the allocator to this multiple of the trace's peak live (1.02, say).
        #[arg(long)]
        limit: Option<f64>,
        /// Also draw the trace's timeline (live and reserved memory, live stacked by
        /// allocation, peaks marked) as SVG to this file.
        #[arg(long, value_name = "SVG")]
        timeline: Option<PathBuf>,
        /// Where device memory comes from: `native` (the backend's pool) or `growable`.
        #[arg(long, default_value = "native", value_parser = parse_segments)]
        segments: gpuhal_hal::SegmentStrategy,
        /// The pool's reserve floor in bytes (default: the pool's default).
        #[arg(long)]
        reserve_floor: Option<u64>,
    },
    /// Two processes on one device: export/import round trip checked, export and import
    /// latency, copy bandwidth through an imported buffer beside a local one.
    Sharing {
        #[arg(long, value_enum, default_value_t = BackendName::default_compiled())]
        backend: BackendName,
        /// A handful of iterations each, to prove the benchmark works (not results).
        #[arg(long)]
        smoke: bool,
        /// Where to write the JSON and Markdown (default: target/bench).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Device ordinal.
        #[arg(long, default_value_t = 0)]
        device: u32,
    },
    /// The importer process of `sharing` (started by it).
    #[command(hide = true)]
    SharingImporter {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 0)]
        device: u32,
    },
    /// Records the synthetic shapes of work (a decode loop with a growing KV cache, a
    /// training loop of varying sequence length) as traces in DIR.
    RecordShapes {
        #[arg(default_value = "traces")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendName {
    Mock,
    Cuda,
}

impl BackendName {
    fn default_compiled() -> BackendName {
        if cfg!(feature = "mock") {
            BackendName::Mock
        } else {
            BackendName::Cuda
        }
    }

    fn name(self) -> &'static str {
        match self {
            BackendName::Mock => "mock",
            BackendName::Cuda => "cuda",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum MockProfile {
    Discrete,
    Coherent,
    Minimal,
}

fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("bench")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gpuhal-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Suite {
            backend,
            smoke,
            out,
            trace,
            device,
            only,
            profile,
            check_races,
        } => {
            let settings = Settings { smoke, only };
            let mut report = suite(backend, &settings, device, profile, check_races, trace.as_deref())?;
            let name = format!(
                "suite-{}{}{}",
                backend.name(),
                if check_races { "-checked" } else { "" },
                if smoke { "-smoke" } else { "" }
            );
            publish(&mut report, &out.unwrap_or_else(default_out), &name)
        }
        Command::Replay {
            trace,
            backend,
            out,
            device,
            limit,
            timeline,
            segments,
            reserve_floor,
        } => {
            if let Some(svg) = &timeline {
                draw_timeline(&trace, limit, svg)?;
            }
            let mut pool = gpuhal_hal::PoolConfig {
                segments,
                ..Default::default()
            };
            if let Some(floor) = reserve_floor {
                pool.reserve_floor = floor;
            }
            let mut report = replay(backend, device, &trace, limit, pool)?;
            if let Some(replay) = &report.replay {
                println!("{replay}");
                println!("{}", serde_json::to_string(replay)?);
            }
            let name = format!(
                "replay-{}-{}-{}{}",
                report.replay.as_ref().map_or("trace", |r| r.trace.as_str()),
                backend.name(),
                segments.name(),
                reserve_floor.map_or(String::new(), |f| format!("-floor{f}"))
            );
            let json = report.write(&out.unwrap_or_else(default_out), &name)?;
            eprintln!("gpuhal-bench: wrote {}", json.display());
            Ok(())
        }
        Command::Sharing {
            backend,
            smoke,
            out,
            device,
        } => {
            let settings = Settings {
                smoke,
                only: Vec::new(),
            };
            let mut report = sharing(backend, &settings, device)?;
            let name = format!("sharing-{}{}", backend.name(), if smoke { "-smoke" } else { "" });
            publish(&mut report, &out.unwrap_or_else(default_out), &name)
        }
        Command::SharingImporter { socket, device } => sharing_importer(device, &socket),
        Command::RecordShapes { dir } => {
            gpuhal_bench::shapes::record_all(&dir)?;
            Ok(())
        }
    }
}

/// Draws `trace`'s timeline to `svg`, the pool held to `limit` × peak live when given.
fn draw_timeline(trace: &Path, limit: Option<f64>, svg: &Path) -> Result<()> {
    let trace = gpuhal_hal::trace::Trace::read(trace)?;
    let config = gpuhal_hal::PoolConfig {
        memory_limit: limit.map(|l| (trace.peak_live_bytes() as f64 * l) as u64),
        ..Default::default()
    };
    let timeline = gpuhal_timeline::Timeline::from_trace(&trace, config)?;
    timeline.write_svg(svg)?;
    let (live_at, live) = timeline.peak_live();
    let (reserved_at, reserved) = timeline.peak_reserved();
    eprintln!(
        "gpuhal-bench: wrote {} (peak live {live} B after event {live_at}, peak reserved {reserved} B after event {reserved_at})",
        svg.display()
    );
    Ok(())
}

fn publish(report: &mut Report, out: &Path, name: &str) -> Result<()> {
    let json = report.write(out, name)?;
    println!("{}", report.to_markdown());
    eprintln!("gpuhal-bench: wrote {} (and .md beside it)", json.display());
    Ok(())
}

#[allow(unused_variables)]
fn suite(
    backend: BackendName,
    settings: &Settings,
    ordinal: u32,
    profile: MockProfile,
    check_races: bool,
    trace: Option<&Path>,
) -> Result<Report> {
    match backend {
        BackendName::Mock => {
            #[cfg(feature = "mock")]
            {
                use gpuhal_bench::mock;
                let profile = mock_profile(profile);
                gpuhal_bench::run_suite::<gpuhal_mock::MockBackend>(
                    &|| mock::open(profile, check_races),
                    &mock::NoBaselines,
                    settings,
                    &mock::OPTIONS,
                    trace,
                )
            }
            #[cfg(not(feature = "mock"))]
            Err(not_built(backend))
        }
        BackendName::Cuda => {
            if check_races {
                anyhow::bail!("--check-races applies to the mock, the only backend with a race checker");
            }
            #[cfg(feature = "cuda")]
            {
                use gpuhal_bench::cuda;
                let baselines = cuda::Baselines::open(ordinal)?;
                gpuhal_bench::run_suite::<gpuhal_cuda::CudaBackend>(
                    &|| cuda::open(ordinal),
                    &baselines,
                    settings,
                    &cuda::OPTIONS,
                    trace,
                )
            }
            #[cfg(not(feature = "cuda"))]
            Err(not_built(backend))
        }
    }
}

#[allow(unused_variables)]
fn sharing(backend: BackendName, settings: &Settings, ordinal: u32) -> Result<Report> {
    let mut report = Report::new("sharing", settings.smoke);
    match backend {
        BackendName::Mock => {
            #[cfg(feature = "mock")]
            {
                let device = gpuhal_mock::MockDevice::open(gpuhal_mock::MockConfig {
                    ordinal,
                    sharing: true,
                    ..Default::default()
                })?;
                report.device = Some(gpuhal_bench::device_summary::<gpuhal_mock::MockBackend>(&device));
                gpuhal_bench::sharing::in_process::<gpuhal_mock::MockBackend>(&device, settings, &mut report)?;
                Ok(report)
            }
            #[cfg(not(feature = "mock"))]
            Err(not_built(backend))
        }
        BackendName::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = gpuhal_cuda::CudaDevice::open_shared(ordinal, gpuhal_hal::PoolConfig::default())?;
                report.device = Some(gpuhal_bench::device_summary::<gpuhal_cuda::CudaBackend>(&device));
                let program = std::env::current_exe()?;
                let args = vec![
                    "sharing-importer".to_string(),
                    "--device".to_string(),
                    ordinal.to_string(),
                ];
                gpuhal_bench::sharing::with_child::<gpuhal_cuda::CudaBackend>(
                    &device,
                    &program,
                    &args,
                    settings,
                    &mut report,
                )?;
                Ok(report)
            }
            #[cfg(not(feature = "cuda"))]
            Err(not_built(backend))
        }
    }
}

#[allow(unused_variables)]
fn sharing_importer(ordinal: u32, socket: &Path) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let device = gpuhal_cuda::CudaDevice::open_shared(ordinal, gpuhal_hal::PoolConfig::default())?;
        gpuhal_bench::sharing::serve::<gpuhal_cuda::CudaBackend>(&device, socket)
    }
    #[cfg(not(feature = "cuda"))]
    Err(not_built(BackendName::Cuda))
}

/// The error for a backend whose cargo feature this binary was built without.
#[cfg(not(all(feature = "mock", feature = "cuda")))]
fn not_built(backend: BackendName) -> anyhow::Error {
    anyhow::anyhow!(
        "this gpuhal-bench was built without the {} backend (enable its cargo feature)",
        backend.name()
    )
}

#[allow(unused_variables)]
fn parse_segments(text: &str) -> std::result::Result<gpuhal_hal::SegmentStrategy, String> {
    gpuhal_hal::SegmentStrategy::parse(text).ok_or_else(|| format!("expected native or growable, got {text:?}"))
}

#[allow(unused_variables)]
fn replay(
    backend: BackendName,
    ordinal: u32,
    trace: &Path,
    limit: Option<f64>,
    pool: gpuhal_hal::PoolConfig,
) -> Result<Report> {
    match backend {
        BackendName::Mock => {
            #[cfg(feature = "mock")]
            {
                let device = gpuhal_mock::MockDevice::open(gpuhal_mock::MockConfig {
                    profile: gpuhal_mock::Profile::Discrete,
                    pool,
                    check_races: false,
                    ..Default::default()
                })?;
                gpuhal_bench::run_replay::<gpuhal_mock::MockBackend>(&device, trace, limit)
            }
            #[cfg(not(feature = "mock"))]
            Err(not_built(backend))
        }
        BackendName::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = gpuhal_cuda::CudaDevice::open_with(ordinal, pool)?;
                gpuhal_bench::run_replay::<gpuhal_cuda::CudaBackend>(&device, trace, limit)
            }
            #[cfg(not(feature = "cuda"))]
            Err(not_built(backend))
        }
    }
}

#[cfg(feature = "mock")]
fn mock_profile(profile: MockProfile) -> gpuhal_mock::Profile {
    match profile {
        MockProfile::Discrete => gpuhal_mock::Profile::Discrete,
        MockProfile::Coherent => gpuhal_mock::Profile::Coherent,
        MockProfile::Minimal => gpuhal_mock::Profile::Minimal,
    }
}
