//! `cargo xtask gpu-bundle`: release binaries for a GPU host that has a driver but no Rust
//! toolchain, and a `run.sh` that runs them all and keeps the logs.
//!
//! The binaries load the CUDA driver and the Vulkan loader at run time (cudarc's and ash's
//! dynamic loading), so they build on any Linux machine and need on the GPU host only the
//! driver and a glibc at least as new as the build machine's.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cargo::{build_executables, cargo, require_features, require_target, workspace_root, Artifact};
use crate::{BENCH_BIN, BENCH_PACKAGE, CONFORMANCE_BIN, CONFORMANCE_PACKAGE};

const CUDA_PACKAGE: &str = "gpuhal-cuda";
const VULKAN_PACKAGE: &str = "gpuhal-vulkan";
/// The Vulkan crate's device tests (backend-vulkan/tests/vulkan.rs), run on NVIDIA's driver.
const VULKAN_DEVICE_TESTS: &str = "vulkan";
/// Libraries the Vulkan run needs that GPU hosts often lack, and what each is.
const VULKAN_SHIPPED: [(&str, &str); 1] = [("libvulkan.so.1", "the Vulkan loader")];
/// The allocation trace the repository ships (a GPT-2 training run).
const TRACE: &str = "traces/gpt2_train.jsonl.gz";

const CAPI_PACKAGE: &str = "gpuhal-capi";
const CAPI_LIBRARY: &str = "libgpuhal_capi.so";
/// The Python package and its PyTorch workload, shipped as source (they load the library
/// by path, so nothing is installed on the GPU host).
const PYTHON_SHIPPED: [&str; 2] = ["python/gpuhal", "python/benchmarks"];
/// The facade's examples that run on CUDA (run.sh's `examples` step runs them on the GPU).
const CUDA_EXAMPLES: [&str; 4] = ["cuda_kernel", "graph_batches", "managed_policy", "import_mmap"];

#[derive(Args, Clone, Debug)]
pub struct BundleArgs {
    /// Where to put the bundle (replaced if it exists).
    #[arg(long, default_value = "bundle")]
    out: PathBuf,
}

pub fn gpu_bundle(args: &BundleArgs) -> Result<()> {
    let why = "gpu-bundle";
    require_features(CONFORMANCE_PACKAGE, &["cuda", "vulkan"], why)?;
    require_target(CONFORMANCE_PACKAGE, "bin", CONFORMANCE_BIN, why)?;
    require_features(BENCH_PACKAGE, &["cuda"], why)?;
    require_target(BENCH_PACKAGE, "bin", BENCH_BIN, why)?;

    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    let bin = out.join("bin");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("could not clear {}", out.display()))?;
    }
    fs::create_dir_all(&bin).with_context(|| format!("could not create {}", bin.display()))?;

    let conformance = build_executables(&mut cargo([
        "build",
        "--release",
        "-p",
        CONFORMANCE_PACKAGE,
        "--bin",
        CONFORMANCE_BIN,
        "--no-default-features",
        "--features",
        "cuda,vulkan",
    ]))?;
    copy_one(&conformance, CONFORMANCE_BIN, &bin.join(CONFORMANCE_BIN))?;

    let bench = build_executables(&mut cargo([
        "build",
        "--release",
        "-p",
        BENCH_PACKAGE,
        "--bin",
        BENCH_BIN,
        "--no-default-features",
        "--features",
        "cuda",
    ]))?;
    copy_one(&bench, BENCH_BIN, &bin.join(BENCH_BIN))?;

    let examples = build_executables(&mut cargo([
        "build",
        "--release",
        "-p",
        "gpuhal",
        "--examples",
        "--features",
        "cuda",
    ]))?;
    let examples_dir = out.join("examples");
    fs::create_dir_all(&examples_dir).with_context(|| format!("could not create {}", examples_dir.display()))?;
    for example in CUDA_EXAMPLES {
        copy_one(&examples, example, &examples_dir.join(example))?;
    }

    // Every test binary of the CUDA crate: its unit tests and each file under tests/.
    let cuda_tests: Vec<Artifact> =
        build_executables(&mut cargo(["test", "--release", "-p", CUDA_PACKAGE, "--no-run"]))?
            .into_iter()
            .filter(|artifact| artifact.is_test)
            .collect();
    if cuda_tests.is_empty() {
        bail!("`cargo test -p {CUDA_PACKAGE} --no-run` built no test binary; the bundle would test nothing");
    }
    let mut test_names = Vec::new();
    for artifact in &cuda_tests {
        let name = if artifact.target_kinds.iter().any(|kind| kind == "lib") {
            "gpuhal-cuda-test-unit".to_string()
        } else {
            format!("gpuhal-cuda-test-{}", artifact.target_name)
        };
        copy_executable(&artifact.executable, &bin.join(&name))?;
        test_names.push(name);
    }

    // The Vulkan crate's device tests, so they run on NVIDIA's driver as well as lavapipe.
    let vulkan_tests = build_executables(&mut cargo([
        "test",
        "--release",
        "-p",
        VULKAN_PACKAGE,
        "--test",
        VULKAN_DEVICE_TESTS,
        "--no-run",
    ]))?;
    let vulkan_test_name = format!("gpuhal-vulkan-test-{VULKAN_DEVICE_TESTS}");
    copy_one(&vulkan_tests, VULKAN_DEVICE_TESTS, &bin.join(&vulkan_test_name))?;
    test_names.push(vulkan_test_name);

    // The vendored allocation trace, so the GPU run replays it through the CUDA allocator.
    let trace = workspace_root().join(TRACE);
    if trace.is_file() {
        let traces = out.join("traces");
        fs::create_dir_all(&traces).with_context(|| format!("could not create {}", traces.display()))?;
        let to = traces.join(trace.file_name().unwrap_or_default());
        fs::copy(&trace, &to).with_context(|| format!("could not copy {}", trace.display()))?;
    } else {
        eprintln!("xtask: no {TRACE} in the checkout; the bundle will not replay a trace");
    }

    // GPU hosts (containers especially) often have NVIDIA's Vulkan driver but not the
    // loader; run.sh uses the copy only when the host lacks it.
    for (library, why) in VULKAN_SHIPPED {
        match crate::vulkan::find_library(library) {
            Some(found) => {
                let lib = out.join("lib");
                fs::create_dir_all(&lib).with_context(|| format!("could not create {}", lib.display()))?;
                fs::copy(&found, lib.join(library))
                    .with_context(|| format!("could not copy {library} ({why}) from {}", found.display()))?;
            }
            None => eprintln!(
                "xtask: no {library} ({why}) on this machine to ship; the GPU host will need its own \
                 (Debian/Ubuntu: libvulkan1)"
            ),
        }
    }

    // The C library and the Python package, for the PyTorch workload under each allocator.
    let status = cargo(["build", "--release", "-p", CAPI_PACKAGE])
        .status()
        .context("could not run cargo build for the C library")?;
    if !status.success() {
        bail!("`cargo build --release -p {CAPI_PACKAGE}` failed: {status}");
    }
    let lib = out.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("could not create {}", lib.display()))?;
    let built = workspace_root().join("target/release").join(CAPI_LIBRARY);
    fs::copy(&built, lib.join(CAPI_LIBRARY)).with_context(|| format!("could not copy {}", built.display()))?;
    for dir in PYTHON_SHIPPED {
        copy_tree(&workspace_root().join(dir), &out.join(dir))?;
    }

    let run_sh = out.join("run.sh");
    fs::write(&run_sh, RUN_SH).with_context(|| format!("could not write {}", run_sh.display()))?;
    make_executable(&run_sh)?;
    fs::write(out.join("MANIFEST"), manifest(&test_names))
        .with_context(|| format!("could not write the manifest in {}", out.display()))?;

    eprintln!(
        "\nxtask: bundle ready in {} ({} binaries). On the GPU host:\n    {}/run.sh RESULTS_DIR",
        out.display(),
        2 + test_names.len(),
        args.out.display()
    );
    Ok(())
}

/// Copies the files under `from` to `to`, leaving Python's caches behind.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == "__pycache__" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            fs::copy(&path, to.join(entry.file_name()))
                .with_context(|| format!("could not copy {}", path.display()))?;
        }
    }
    Ok(())
}

fn copy_one(artifacts: &[Artifact], target_name: &str, to: &Path) -> Result<()> {
    let Some(artifact) = artifacts.iter().find(|artifact| artifact.target_name == target_name) else {
        bail!("cargo reported no executable for `{target_name}`");
    };
    copy_executable(&artifact.executable, to)
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("could not copy {} to {}", from.display(), to.display()))?;
    make_executable(to)
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("could not make {} executable", path.display()))
}

fn manifest(test_names: &[String]) -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let mut text = format!(
        "gpuhal GPU bundle\ncommit: {commit}\ntarget: {}-{}\nbinaries:\n  bin/{CONFORMANCE_BIN} (features cuda, vulkan)\n  bin/{BENCH_BIN} (feature cuda)\n",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    for name in test_names {
        text.push_str(&format!("  bin/{name}\n"));
    }
    text
}

/// Runs every check of the bundle on a GPU host. Each step's output is shown and kept in
/// a log; a failing step does not stop the others (a GPU session is worth all its
/// results), but the script exits non-zero if any failed.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs gpuhal's GPU checks from a bundle made by `cargo xtask gpu-bundle`.
# Needs the NVIDIA driver (libcuda.so.1) and, for the Vulkan run, the Vulkan loader
# (libvulkan.so.1) with NVIDIA's ICD. No Rust toolchain.
#
# Usage: run.sh RESULTS_DIR [STEP...]   (GPUHAL_STEP_TIMEOUT: seconds a step may take, default 1200)
# With STEP names (or prefixes: cuda-conformance, vulkan, gpuhal-cuda-test, examples,
# cuda-bench, cuda-replay, cuda-sharing, torch-allocators), only those steps run.
# Writes one log per step, the conformance reports as JSON and the benchmark JSON there.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 RESULTS_DIR [STEP...]" >&2
    exit 2
fi
bundle=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
results=$(cd "$1" && pwd)
shift
selected=("$@")
failed=()
step_timeout=${GPUHAL_STEP_TIMEOUT:-1200}

step() {
    local name=$1
    shift
    if [ ${#selected[@]} -gt 0 ]; then
        local wanted=""
        for prefix in "${selected[@]}"; do
            [[ $name == "$prefix"* ]] && wanted=1
        done
        [ -n "$wanted" ] || return 0
    fi
    echo
    echo "==> $name"
    local started=$SECONDS
    # A hung step must not eat the rest of the GPU session.
    timeout --kill-after=30 "$step_timeout" "$@" 2>&1 | tee "$results/$name.log"
    local status=${PIPESTATUS[0]}
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "<== $name: TIMED OUT after ${step_timeout}s (GPUHAL_STEP_TIMEOUT); see $results/$name.log"
        failed+=("$name")
    elif [ "$status" -eq 0 ]; then
        echo "<== $name: passed in $((SECONDS - started))s"
    else
        echo "<== $name: FAILED (status $status) after $((SECONDS - started))s; see $results/$name.log"
        failed+=("$name")
    fi
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    | tee "$results/gpu.txt"
# The commit the binaries were built at, for `cargo xtask conformance-page --results`.
cp "$bundle/MANIFEST" "$results/MANIFEST" 2>/dev/null

step cuda-conformance "$bundle/bin/gpuhal-conformance" --backend cuda --json "$results/cuda-conformance.json"

# Point the Vulkan loader at NVIDIA's driver, so the run is not on a CPU driver such as
# lavapipe that may also be installed.
nvidia_icd=""
for dir in /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d; do
    for manifest in "$dir"/nvidia_icd*.json; do
        [ -f "$manifest" ] && nvidia_icd=$manifest && break 2
    done
done
vulkan_env=()
# Only what the host lacks goes on the library path (through a folder of links), so the
# host's own copies of the rest still win.
shipped_dir=""
tab=$(printf '\t')
for library in libvulkan.so.1; do
    # ldconfig -p lines start with a tab: "<tab>libvulkan.so.1 (libc6,x86-64) => /path".
    if ! ldconfig -p 2>/dev/null | grep -qF "$tab$library (" && [ -f "$bundle/lib/$library" ]; then
        echo "Vulkan: $library is not installed on this host; using the bundle's copy"
        [ -n "$shipped_dir" ] || shipped_dir=$(mktemp -d)
        ln -s "$bundle/lib/$library" "$shipped_dir/$library"
    fi
done
if [ -n "$shipped_dir" ]; then
    vulkan_env+=(LD_LIBRARY_PATH="$shipped_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
fi
# NVIDIA's manifest usually names libGLX_nvidia.so.0. On a headless container host (an
# H200 with driver 580, no X server) the loader could not get 'vkCreateInstance' from it
# and reported VK_ERROR_INCOMPATIBLE_DRIVER, while the same driver through
# libEGL_nvidia.so.0 worked; so point a manifest of our own at the EGL library.
if [ -n "$nvidia_icd" ] && grep -q 'libGLX_nvidia' "$nvidia_icd" \
    && ldconfig -p 2>/dev/null | grep -qF "${tab}libEGL_nvidia.so.0 ("; then
    api_version=$(sed -n 's/.*"api_version"[^"]*"\([^"]*\)".*/\1/p' "$nvidia_icd" | head -n 1)
    headless_icd="$results/nvidia_icd_headless.json"
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libEGL_nvidia.so.0", "api_version": "%s"}}\n' \
        "${api_version:-1.3.0}" > "$headless_icd"
    echo "Vulkan: $nvidia_icd names the GLX library; using NVIDIA's EGL library instead (works with no X server)"
    nvidia_icd=$headless_icd
fi
if [ -n "$nvidia_icd" ]; then
    echo "Vulkan: using $nvidia_icd"
    vulkan_env+=(VK_DRIVER_FILES="$nvidia_icd" VK_ICD_FILENAMES="$nvidia_icd")
    step vulkan-conformance env "${vulkan_env[@]}" \
        "$bundle/bin/gpuhal-conformance" --backend vulkan --json "$results/vulkan-conformance.json"
else
    echo "Vulkan: no NVIDIA ICD manifest (nvidia_icd.json) found; running on whatever driver the loader picks"
    step vulkan-conformance env "${vulkan_env[@]}" "$bundle/bin/gpuhal-conformance" --backend vulkan \
        --json "$results/vulkan-conformance.json"
fi

for test_binary in "$bundle"/bin/gpuhal-vulkan-test-*; do
    [ -x "$test_binary" ] || continue
    step "$(basename "$test_binary")" env "${vulkan_env[@]}" GPUHAL_REQUIRE_VULKAN=1 "$test_binary" --test-threads=1
done

# One thread: GPU tests share one device and its memory.
for test_binary in "$bundle"/bin/gpuhal-cuda-test-*; do
    [ -x "$test_binary" ] || continue
    # Ignored tests are known driver hangs (see the test), kept out of the unattended run.
    step "$(basename "$test_binary")" env GPUHAL_REQUIRE_GPU=1 "$test_binary" --test-threads=1
done

# The facade's examples, on the GPU (each checks its results; GPUHAL_REQUIRE_GPU=1 makes
# a missing driver a failure instead of a fallback to the mock).
if [ -d "$bundle/examples" ]; then
    step examples env GPUHAL_REQUIRE_GPU=1 bash -c \
        'status=0; for example in "$0"/examples/*; do echo "--- $(basename "$example")"; "$example" || status=1; done; exit $status' \
        "$bundle"
fi

mkdir -p "$results/bench"
trace_args=()
for trace in "$bundle"/traces/*.jsonl*; do
    [ -f "$trace" ] && trace_args=(--trace "$trace") && break
done
step cuda-bench "$bundle/bin/gpuhal-bench" suite --backend cuda --out "$results/bench" "${trace_args[@]}"
# Two processes on one GPU: an exported buffer checked both ways, export/import latency and
# copy bandwidth through the imported buffer beside a local one.
step cuda-sharing "$bundle/bin/gpuhal-bench" sharing --backend cuda --out "$results/bench"
# Every trace, side by side: the stream-ordered pool, growable segments, and growable
# segments with no reserve floor.
step cuda-replay bash -c '
    bench=$0; out=$1; status=0
    for trace in "$(dirname "$bench")"/../traces/*.jsonl*; do
        [ -f "$trace" ] || continue
        for setting in "native" "growable" "growable --reserve-floor 0"; do
            echo "--- $(basename "$trace") $setting"
            # shellcheck disable=SC2086
            "$bench" replay "$trace" --backend cuda --out "$out" --segments $setting || status=1
        done
    done
    exit $status' "$bundle/bin/gpuhal-bench" "$results/bench"

# A real PyTorch workload (GPT-2 training and generation, graph captures) once per
# allocator, each in its own process: PyTorch's three options and gpuhal's two kinds.
if command -v python3 >/dev/null && python3 -c "import torch, transformers" 2>/dev/null; then
    step torch-allocators python3 "$bundle/python/benchmarks/torch_allocators.py" \
        --lib "$bundle/lib/libgpuhal_capi.so" --out "$results/torch-allocators"
else
    echo "torch-allocators: skipped (python3 with torch and transformers not found)"
fi

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "every step passed; results in $results"
else
    echo "FAILED: ${failed[*]}; results in $results"
    exit 1
fi
"#;
