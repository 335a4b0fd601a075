//! gpuhal's developer tasks, run as `cargo xtask <task>` from anywhere in the workspace.
//!
//! - `conformance`: the backend conformance suite (mock under every profile by default)
//! - `ci`: everything CI checks, in order, stopping at the first failure
//! - `bench`: the benchmark suite (and criterion benches in full mode) into `target/bench/`
//! - `replay TRACE`: replays an allocation trace through a backend's caching allocator
//! - `gpu-bundle`: release binaries and a `run.sh` for a GPU host without a Rust toolchain

mod bundle;
mod cargo;
mod ci;
mod vulkan;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cargo::{cargo, require_features, require_target, run, ChildFailed};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "gpuhal's developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Runs the conformance suite against a backend (default: the mock, every profile).
    Conformance(ConformanceArgs),
    /// Runs what CI runs: fmt, clippy, tests, conformance (mock; Vulkan when a driver is
    /// installed) and the benchmark smoke test. Stops at the first failure.
    Ci,
    /// Runs the benchmark suite; results go to target/bench/.
    Bench(BenchArgs),
    /// Replays an allocation trace (JSON lines, optionally .gz) through a backend's
    /// caching allocator and prints peak live/reserved memory, native calls and hit rate.
    Replay(ReplayArgs),
    /// Builds release binaries (conformance, bench, CUDA tests) and a run.sh into
    /// bundle/, to copy to a GPU host that has a driver but no Rust toolchain.
    GpuBundle(bundle::BundleArgs),
}

/// A backend the conformance runner can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Host memory standing in for a GPU; runs anywhere.
    Mock,
    /// NVIDIA GPUs through the CUDA driver API.
    Cuda,
    /// Any Vulkan 1.2+ driver (lavapipe on CPUs, NVIDIA, …).
    Vulkan,
}

impl Backend {
    /// The name used for cargo features and the runners' `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Mock => "mock",
            Backend::Cuda => "cuda",
            Backend::Vulkan => "vulkan",
        }
    }
}

/// A backend the bench binary can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// Host memory standing in for a GPU.
    Mock,
    /// NVIDIA GPUs through the CUDA driver API.
    Cuda,
}

impl BenchBackend {
    fn name(self) -> &'static str {
        match self {
            BenchBackend::Mock => "mock",
            BenchBackend::Cuda => "cuda",
        }
    }
}

/// The mock's platform profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Like an H100 on x86: host register works, no pageable access.
    Discrete,
    /// Like GH200/GB10: host register unsupported, pageable access works.
    Coherent,
    /// No managed memory, no graphs.
    Minimal,
    /// Every profile in turn.
    All,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Discrete => "discrete",
            Profile::Coherent => "coherent",
            Profile::Minimal => "minimal",
            Profile::All => "all",
        }
    }
}

#[derive(Args, Clone, Debug)]
struct ConformanceArgs {
    /// The backend to check.
    #[arg(long, value_enum, default_value = "mock")]
    backend: Backend,
    /// The mock's platform profile (mock only; default: all).
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Runs only the cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Lists the cases instead of running them.
    #[arg(long)]
    list: bool,
    /// Also writes the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Builds the runner in release mode.
    #[arg(long)]
    release: bool,
}

#[derive(Args, Clone, Debug)]
struct BenchArgs {
    /// The backend to measure.
    #[arg(long, value_enum, default_value = "mock")]
    backend: BenchBackend,
    /// A quick run that only proves the suite works (a debug build, few iterations:
    /// its numbers mean nothing). Without it: the full suite in release, then the
    /// criterion benches.
    #[arg(long)]
    smoke: bool,
}

#[derive(Args, Clone, Debug)]
struct ReplayArgs {
    /// The trace file (JSON lines, `.gz` allowed).
    trace: PathBuf,
    /// The backend whose allocator replays it.
    #[arg(long, value_enum, default_value = "mock")]
    backend: BenchBackend,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Conformance(args) => conformance(&args),
        Task::Ci => ci::ci(),
        Task::Bench(args) => bench(&args),
        Task::Replay(args) => replay(&args),
        Task::GpuBundle(args) => bundle::gpu_bundle(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            // Propagate a failed child's own exit status (the conformance runner's, say).
            let code = error
                .downcast_ref::<ChildFailed>()
                .and_then(|failed| failed.code)
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

const CONFORMANCE_PACKAGE: &str = "gpuhal-conformance";
const CONFORMANCE_BIN: &str = "gpuhal-conformance";
const BENCH_PACKAGE: &str = "gpuhal-bench";
const BENCH_BIN: &str = "gpuhal-bench";

/// Where benchmark results go, relative to the workspace root.
pub const BENCH_OUT: &str = "target/bench";

fn conformance(args: &ConformanceArgs) -> Result<()> {
    let backend = args.backend;
    let why = format!("conformance on {}", backend.name());
    require_features(CONFORMANCE_PACKAGE, &[backend.name()], &why)?;
    require_target(CONFORMANCE_PACKAGE, "bin", CONFORMANCE_BIN, &why)?;
    let mut command = cargo(["run"]);
    if args.release {
        command.arg("--release");
    }
    command.args([
        "--quiet",
        "-p",
        CONFORMANCE_PACKAGE,
        "--bin",
        CONFORMANCE_BIN,
        "--no-default-features",
        "--features",
        backend.name(),
        "--",
        "--backend",
        backend.name(),
    ]);
    match (backend, args.profile) {
        (Backend::Mock, profile) => {
            command.args(["--profile", profile.unwrap_or(Profile::All).name()]);
        }
        (_, Some(_)) => anyhow::bail!(
            "--profile chooses among the mock's platforms; the {} backend runs on the device it finds",
            backend.name()
        ),
        (_, None) => {}
    }
    if let Some(filter) = &args.filter {
        command.args(["--filter", filter]);
    }
    if args.list {
        command.arg("--list");
    }
    if let Some(json) = &args.json {
        command.arg("--json").arg(absolute(json)?);
    }
    run(&mut command)
}

fn bench(args: &BenchArgs) -> Result<()> {
    let backend = args.backend.name();
    let why = format!("the {backend} benchmarks");
    require_features(BENCH_PACKAGE, &[backend], &why)?;
    require_target(BENCH_PACKAGE, "bin", BENCH_BIN, &why)?;
    let out = cargo::workspace_root().join(BENCH_OUT);
    std::fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;

    let mut command = cargo(["run", "--quiet"]);
    if !args.smoke {
        command.arg("--release");
    }
    command.args([
        "-p",
        BENCH_PACKAGE,
        "--bin",
        BENCH_BIN,
        "--no-default-features",
        "--features",
        backend,
    ]);
    command.args(["--", "suite", "--backend", backend, "--out"]).arg(&out);
    if args.smoke {
        command.arg("--smoke");
    }
    run(&mut command)?;

    if !args.smoke {
        let criterion_benches = cargo::target_names(BENCH_PACKAGE, "bench")?;
        if criterion_benches.is_empty() {
            eprintln!("xtask: {BENCH_PACKAGE} defines no criterion benches; only the suite ran");
        } else {
            // Criterion writes its own reports under target/criterion/.
            let mut command = cargo([
                "bench",
                "-p",
                BENCH_PACKAGE,
                "--no-default-features",
                "--features",
                backend,
            ]);
            run(&mut command)?;
        }
    }
    eprintln!("xtask: benchmark results are in {}", out.display());
    Ok(())
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let backend = args.backend.name();
    let why = format!("replay on {backend}");
    require_features(BENCH_PACKAGE, &[backend], &why)?;
    require_target(BENCH_PACKAGE, "bin", BENCH_BIN, &why)?;
    let trace = absolute(&args.trace)?;
    if !trace.is_file() {
        anyhow::bail!("no trace file at {}", trace.display());
    }
    let mut command = cargo([
        "run",
        "--quiet",
        "--release",
        "-p",
        BENCH_PACKAGE,
        "--bin",
        BENCH_BIN,
        "--no-default-features",
        "--features",
        backend,
        "--",
        "replay",
    ]);
    command.arg(&trace).args(["--backend", backend]);
    run(&mut command)
}

/// `path` made absolute against the directory xtask was started in, because cargo runs
/// the child from the workspace root.
fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("could not resolve {}", path.display()))
}
