//! `cargo xtask ci`: every check CI makes, in order, each timed, stopping at the first
//! failure.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cargo::{cargo, run};
use crate::{vulkan, Backend, BenchArgs, BenchBackend, ConformanceArgs, Profile};

/// Set to `1` to make a missing Vulkan driver fail CI instead of skipping the Vulkan
/// conformance run (CI sets it after installing lavapipe, so a broken install shows).
const REQUIRE_VULKAN: &str = "GPUHAL_REQUIRE_VULKAN";

enum Outcome {
    Passed,
    Skipped(String),
}

struct Step {
    name: &'static str,
    run: Box<dyn Fn() -> Result<Outcome>>,
}

fn step(name: &'static str, run: impl Fn() -> Result<Outcome> + 'static) -> Step {
    Step {
        name,
        run: Box::new(run),
    }
}

fn passed(result: Result<()>) -> Result<Outcome> {
    result.map(|()| Outcome::Passed)
}

pub fn ci() -> Result<()> {
    let steps = [
        step("fmt", || passed(run(&mut cargo(["fmt", "--all", "--", "--check"])))),
        step("clippy", || {
            passed(run(&mut cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                // Every backend's code, the GPU-only benchmark paths included, builds on
                // any machine (drivers load at run time), so lint all of it.
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])))
        }),
        step("C header current (capi/include/gpuhal.h)", || {
            passed(crate::header::header(true))
        }),
        // Includes the C ABI's C program (compiled by the system `cc`) and, with the
        // library built, the Python package's tests on the mock.
        step("test", || passed(run(&mut cargo(["test", "--workspace"])))),
        // Every example builds (the CUDA ones too: the driver loads at run time), and the
        // ones that run on the mock run.
        step("examples build (--features cuda)", || {
            passed(run(&mut cargo([
                "build",
                "-p",
                "gpuhal",
                "--examples",
                "--features",
                "cuda",
            ])))
        }),
        step("examples run (mock)", run_mock_examples),
        step("docs (cargo doc, warnings are errors)", || {
            let mut command = cargo(["doc", "--workspace", "--all-features", "--no-deps"]);
            command.env("RUSTDOCFLAGS", "-D warnings");
            passed(run(&mut command))
        }),
        step("conformance mock (every profile)", || {
            passed(crate::conformance(&ConformanceArgs {
                backend: Backend::Mock,
                profile: Some(Profile::All),
                filter: None,
                list: false,
                json: None,
                release: false,
            }))
        }),
        step("vulkan (conformance, facade tests)", vulkan_step),
        step("bench smoke (mock)", || {
            passed(crate::bench(&BenchArgs {
                backend: BenchBackend::Mock,
                smoke: true,
            }))
        }),
    ];

    let started = Instant::now();
    let mut finished: Vec<(&str, Duration, String)> = Vec::new();
    for step in &steps {
        eprintln!("\n==> {}", step.name);
        let step_started = Instant::now();
        let outcome = (step.run)();
        let took = step_started.elapsed();
        match outcome {
            Ok(Outcome::Passed) => {
                eprintln!("<== {}: passed in {}", step.name, seconds(took));
                finished.push((step.name, took, "passed".into()));
            }
            Ok(Outcome::Skipped(reason)) => {
                eprintln!("<== {}: SKIPPED ({reason})", step.name);
                finished.push((step.name, took, format!("skipped: {reason}")));
            }
            Err(error) => {
                eprintln!("<== {}: FAILED after {}", step.name, seconds(took));
                summary(&finished);
                return Err(error.context(format!("ci step `{}` failed", step.name)));
            }
        }
    }
    summary(&finished);
    eprintln!(
        "ci: every step passed or was skipped, in {}",
        seconds(started.elapsed())
    );
    Ok(())
}

/// The examples that run on the mock when no GPU is present (each checks its own
/// results and exits non-zero when they are wrong).
pub const MOCK_EXAMPLES: [&str; 4] = ["generic", "graph_batches", "managed_policy", "import_mmap"];

fn run_mock_examples() -> Result<Outcome> {
    for example in MOCK_EXAMPLES {
        run(&mut cargo(["run", "--quiet", "-p", "gpuhal", "--example", example]))?;
    }
    Ok(Outcome::Passed)
}

fn vulkan_step() -> Result<Outcome> {
    let setup = match vulkan::detect() {
        Ok(setup) => setup,
        Err(reason) if std::env::var(REQUIRE_VULKAN).is_ok_and(|value| value == "1") => {
            bail!("{REQUIRE_VULKAN}=1 but the Vulkan backend cannot run here: {reason}")
        }
        Err(reason) => return Ok(Outcome::Skipped(reason)),
    };
    eprintln!("xtask: Vulkan found: {setup}");
    crate::conformance(&ConformanceArgs {
        backend: Backend::Vulkan,
        profile: None,
        filter: None,
        list: false,
        json: None,
        release: false,
    })?;
    // The facade's tests that need two backends (BackendMismatch) run only with one
    // besides the mock compiled in.
    run(&mut cargo(["test", "-p", "gpuhal", "--features", "vulkan"]))?;
    Ok(Outcome::Passed)
}

fn summary(finished: &[(&str, Duration, String)]) {
    eprintln!("\nci summary:");
    for (name, took, outcome) in finished {
        eprintln!("  {:>8}  {name}: {outcome}", seconds(*took));
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
