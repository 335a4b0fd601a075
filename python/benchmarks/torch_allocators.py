#!/usr/bin/env python3
"""PyTorch's CUDA allocators against gpuhal's on one training-and-generation workload.

The driver runs one child process per allocator (an allocator is chosen once per process), each
on the same seeded workload:

- a transformers GPT-2 built from a GPT2Config (random init, fixed seed; nothing is downloaded),
  trained with AdamW under bf16 autocast on batches whose sequence length follows a fixed
  seeded schedule, so every step asks the allocator for new shapes;
- greedy ``generate`` with several prompt lengths and batch sizes;
- a one-token forward captured with ``torch.cuda.graph`` for several batch sizes, replayed and
  checked against the eager result.

Per allocator it reports the median train step, the generation time, the peak device memory the
process took (``torch.cuda.mem_get_info`` sampled after every forward, backward, step and
generation, minus a baseline taken after CUDA init and before the model exists; the two
in-step samples cost microseconds, the same for every allocator), the peak live bytes (the allocator's
own peak of bytes handed out), their ratio, the final loss and token checksum (equal across
allocators when the run is deterministic), and the graph memory (``mem_get_info`` delta) or the
error a capture raised.

    python3 python/benchmarks/torch_allocators.py --out bench-out --lib path/to/libgpuhal_capi.so
    python3 python/benchmarks/torch_allocators.py --quick --cpu      # logic check without a GPU

``--cpu`` runs the workload on the CPU and skips everything CUDA-only (memory figures, graphs);
gpuhal's allocators are then configured on its mock backend, so only the plumbing is exercised.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ALLOCATORS = {
    # name: (PYTORCH_CUDA_ALLOC_CONF or None, gpuhal memory kind or None)
    "native": (None, None),
    "cudaMallocAsync": ("backend:cudaMallocAsync", None),
    "expandable": ("expandable_segments:True", None),
    "gpuhal-device": (None, "device"),
    "gpuhal-managed": (None, "managed"),
    # The reserve floor off: idle blocks released down to 1% over peak live, the least memory.
    "gpuhal-device-nofloor": (None, "device"),
    # Growable virtual-memory segments (GPUHAL_SEGMENTS=growable): device memory is what gpuhal maps.
    "gpuhal-device-growable": (None, "device"),
    "gpuhal-device-growable-nofloor": (None, "device"),
}

FULL = {
    "model": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "steps": 60,
    "batch": 8,
    "seq_range": (128, 1024),
    # (batch, prompt length)
    "generate": [(1, 32), (4, 200), (8, 64), (2, 700), (8, 384)],
    "max_new_tokens": 32,
    "graph_batches": [1, 2, 4, 8],
    "timeout_s": 150,
}

QUICK = {
    "model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 512, "n_positions": 128},
    "steps": 6,
    "batch": 2,
    "seq_range": (16, 96),
    "generate": [(1, 8), (2, 24)],
    "max_new_tokens": 4,
    "graph_batches": [1, 2],
    "timeout_s": 90,
}

MiB = float(1 << 20)
SEED = 1234
CORPUS_VOCAB = 1000  # the training text draws from this many token ids: a learnable unigram


# ----------------------------------------------------------------------------------------------
# Child: one allocator, one process.


class Child:
    def __init__(self, allocator: str, config: dict, cpu: bool, result_path: Path):
        self.allocator = allocator
        self.result_path = result_path
        self.config = config
        self.cpu = cpu
        self.result = {"allocator": allocator, "ok": False, "phase": "setup", "error": None}
        self.samples = []  # device bytes used minus the baseline, one per sample

    def run(self) -> dict:
        try:
            self._save()
            self._run()
            self.result["ok"] = True
        except BaseException as error:  # noqa: BLE001 - the report must say what failed, whatever it is
            traceback.print_exc()
            self.result["error"] = f"{type(error).__name__}: {error}"
            self.result["traceback"] = traceback.format_exc()
        self._save()
        return self.result

    def _save(self):
        self.result_path.write_text(json.dumps(self.result, indent=1))

    def _enter(self, phase: str):
        """Starts a phase, saving what is measured so far: a killed child still reports it."""
        self.result["phase"] = phase
        self._save()

    # -- phases -----------------------------------------------------------------------------------

    def _run(self):
        kind = ALLOCATORS[self.allocator][1]
        if kind is not None:
            # Before torch touches CUDA: the pluggable allocator must be in place first.
            import gpuhal.torch

            if self.cpu:  # nothing to route on the CPU: configure the library only, on the mock
                installed = gpuhal.torch.enable(kind=kind, backend="mock:coherent", install_allocator=False)
            else:
                installed = gpuhal.torch.enable(kind=kind)
            self.result["gpuhal_library"] = gpuhal.library_path()
            if not self.cpu and not installed:
                raise RuntimeError("gpuhal.torch.enable did not install the allocator (torch without CUDA?)")

        import torch

        self.torch = torch
        torch.manual_seed(SEED)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        self.result["torch"] = torch.__version__
        if self.cpu:
            self.device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise RuntimeError("CUDA is not available (use --cpu for a dry run)")
            self.device = torch.device("cuda", 0)
            torch.cuda.init()
            torch.cuda.set_device(self.device)
            self.result["gpu"] = torch.cuda.get_device_name(self.device)
            self.baseline_used = self._device_used()
            self.result["baseline_used_mib"] = self.baseline_used / MiB

        import transformers

        self.result["transformers"] = transformers.__version__
        self._enter("build")
        model = self._build_model(transformers)
        self._enter("train")
        self._train(model)
        self._enter("generate")
        self._generate(model)
        self._record_peaks()
        self._enter("graphs")
        self._graphs(model)
        self.result["phase"] = "done"

    def _build_model(self, transformers):
        torch = self.torch
        model_config = dict(self.config["model"])
        config = transformers.GPT2Config(
            **model_config,
            bos_token_id=model_config["vocab_size"] - 1,
            eos_token_id=model_config["vocab_size"] - 1,
        )
        torch.manual_seed(SEED)
        model = transformers.GPT2LMHeadModel(config)  # built on the CPU: identical weights everywhere
        self.result["parameters"] = sum(p.numel() for p in model.parameters())
        self.result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
        return model.to(self.device)

    def _batches(self):
        """The training batches: a seeded schedule of sequence lengths over a seeded corpus."""
        torch = self.torch
        generator = torch.Generator().manual_seed(SEED)
        low, high = self.config["seq_range"]
        vocab = min(CORPUS_VOCAB, self.config["model"]["vocab_size"])
        corpus = torch.randint(0, vocab, (1 << 18,), generator=generator)
        batch = self.config["batch"]
        for _ in range(self.config["steps"]):
            length = int(torch.randint(low, high + 1, (1,), generator=generator))
            starts = torch.randint(0, corpus.numel() - length, (batch,), generator=generator)
            yield torch.stack([corpus[s : s + length] for s in starts.tolist()])

    def _autocast(self, **kwargs):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, **kwargs)

    def _train(self, model):
        torch = self.torch
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
        step_seconds, losses, lengths = [], [], []
        for inputs in self._batches():
            inputs = inputs.to(self.device)
            self._synchronize()
            start = time.perf_counter()
            with self._autocast():
                loss = model(input_ids=inputs, labels=inputs).loss
            self._sample()  # activations are at their high-water mark here
            loss.backward()
            self._sample()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self._synchronize()
            step_seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach().float().item()))
            lengths.append(inputs.shape[1])
            self._sample()
        del optimizer
        self.result["step_ms"] = [s * 1e3 for s in step_seconds]
        self.result["median_step_ms"] = statistics.median(step_seconds) * 1e3
        self.result["train_s"] = sum(step_seconds)
        self.result["losses"] = losses
        self.result["final_loss"] = losses[-1]
        self.result["seq_lengths"] = lengths

    def _generate(self, model):
        torch = self.torch
        model.eval()
        generator = torch.Generator().manual_seed(SEED + 1)
        vocab = min(CORPUS_VOCAB, self.config["model"]["vocab_size"])
        tokens = hashlib.sha256()
        runs = []
        new_tokens = self.config["max_new_tokens"]
        for batch, length in self.config["generate"]:
            prompt = torch.randint(0, vocab, (batch, length), generator=generator).to(self.device)
            self._synchronize()
            start = time.perf_counter()
            with torch.no_grad(), self._autocast():
                output = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=model.config.eos_token_id,
                )
            self._synchronize()
            seconds = time.perf_counter() - start
            tokens.update(output.cpu().numpy().tobytes())
            runs.append({"batch": batch, "prompt": length, "s": seconds, "shape": list(output.shape)})
            self._sample()
        self.result["generate_runs"] = runs
        self.result["generate_s"] = sum(run["s"] for run in runs)
        self.result["generated_sha256"] = tokens.hexdigest()[:16]

    def _graphs(self, model):
        if self.cpu:
            self.result["graphs"] = {"skipped": "--cpu"}
            return
        graphs, keep = {}, []
        # One pool for every batch size, largest first, as vLLM captures: the smaller
        # captures then reuse the largest one's memory, so the total tracks the largest.
        pool = self.torch.cuda.graph_pool_handle()
        for batch in sorted(self.config["graph_batches"], reverse=True):
            try:
                graphs[str(batch)] = self._capture(model, batch, keep, pool)
            except Exception as error:  # noqa: BLE001 - a refused capture is a result, not a crash
                traceback.print_exc()
                graphs[str(batch)] = {"error": f"{type(error).__name__}: {error}".strip()}
                # A failed capture can leave the stream unusable; the later sizes would only echo it.
                break
        self.result["graphs"] = graphs
        ok = [g for g in graphs.values() if "mib" in g]
        if ok and len(ok) == len(graphs):
            self.result["graphs_mib"] = sum(g["mib"] for g in ok)

    def _capture(self, model, batch, keep, pool) -> dict:
        """Captures a one-token forward for ``batch`` sequences; memory is the mem_get_info delta."""
        torch = self.torch
        vocab = min(CORPUS_VOCAB, self.config["model"]["vocab_size"])
        static_input = torch.randint(0, vocab, (batch, 1), device=self.device)

        def forward():
            # Autocast's weight cache would hold casts made outside the graph's pool.
            with torch.no_grad(), self._autocast(cache_enabled=False):
                return model(input_ids=static_input, use_cache=False).logits

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        used_before = self._device_used()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            static_output = forward()
        torch.cuda.synchronize()
        used_after = self._device_used()
        static_input.copy_(torch.randint(0, vocab, (batch, 1), device=self.device))
        graph.replay()
        torch.cuda.synchronize()
        expected = forward()
        difference = float((static_output.float() - expected.float()).abs().max())
        matches = bool(torch.allclose(static_output.float(), expected.float(), rtol=1e-2, atol=1e-2))
        keep.append((graph, static_input, static_output))  # graphs stay alive: their memory counts
        self._sample()
        return {
            "mib": (used_after - used_before) / MiB,
            "replay_matches_eager": matches,
            "replay_max_abs_diff": difference,
        }

    # -- measurement ------------------------------------------------------------------------------

    def _synchronize(self):
        if not self.cpu:
            self.torch.cuda.synchronize()

    def _device_used(self) -> int:
        free, total = self.torch.cuda.mem_get_info(self.device)
        return total - free

    def _sample(self):
        if not self.cpu:
            self.samples.append(self._device_used() - self.baseline_used)

    def _record_peaks(self):
        """Peaks over training and generation (graphs are reported separately)."""
        torch = self.torch
        if self.samples:
            self.result["peak_device_mib"] = max(self.samples) / MiB
        try:
            if ALLOCATORS[self.allocator][1] is not None:
                import gpuhal.torch

                stats = gpuhal.torch.memory_stats()
                self.result["allocator_stats"] = stats
                live_peak = stats["allocated_bytes.all.peak"]
            elif self.cpu:
                return
            else:
                stats = torch.cuda.memory_stats(self.device)
                keep = ("num_alloc_retries", "num_ooms", "num_device_alloc", "num_device_free")
                self.result["allocator_stats"] = {k: stats[k] for k in keep if k in stats}
                self.result["allocator_stats"]["reserved_bytes.all.peak"] = torch.cuda.max_memory_reserved(self.device)
                live_peak = torch.cuda.max_memory_allocated(self.device)
        except Exception as error:  # noqa: BLE001 - a backend without stats still has its timings
            traceback.print_exc()
            self.result["stats_error"] = f"{type(error).__name__}: {error}"
            return
        self.result["peak_live_mib"] = live_peak / MiB
        if self.samples and live_peak:
            self.result["device_over_live"] = max(self.samples) / live_peak


def child_main(args) -> int:
    config = QUICK if args.quick else FULL
    result = Child(args.child, config, args.cpu, Path(args.result)).run()
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------------------------
# Driver: every allocator in its own process, then the table.


def child_environment(name: str, lib: str | None, cpu: bool) -> dict:
    env = dict(os.environ)
    alloc_conf = ALLOCATORS[name][0]
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if alloc_conf is not None:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    if lib is not None:
        env["GPUHAL_LIBRARY"] = str(Path(lib).resolve())
    for variable in ("GPUHAL_BACKEND", "GPUHAL_MEMORY_KIND", "GPUHAL_RESERVE_FLOOR", "GPUHAL_SEGMENTS"):
        env.pop(variable, None)  # the child's enable() decides these
    if "-nofloor" in name:
        env["GPUHAL_RESERVE_FLOOR"] = "0"
    if "-growable" in name:
        env["GPUHAL_SEGMENTS"] = "growable"  # virtual-memory segments gpuhal maps itself
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS, for comparable losses
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    if importlib.util.find_spec("gpuhal") is None:
        # Not installed: the children import it from the source tree (and need --lib).
        source_tree = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), source_tree) if p)
    return env


def run_child(name: str, args, out: Path, timeout_s: float) -> dict:
    result_file = out / f"{name}.json"
    log_file = out / f"{name}.log"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result_file)]
    command += ["--quick"] if args.quick else []
    command += ["--cpu"] if args.cpu else []
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            command,
            env=child_environment(name, args.lib, args.cpu),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout ends all it started
        )
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    wall_s = time.perf_counter() - start
    if result_file.exists():
        result = json.loads(result_file.read_text())
    else:
        result = {"allocator": name, "ok": False}
    result["wall_s"] = wall_s
    result["log"] = log_file.name
    if returncode is None:
        result["ok"] = False
        result["error"] = f"timed out after {timeout_s:.0f} s (killed) in phase {result.get('phase', '?')}"
    elif returncode != 0 and not result.get("error"):
        result["ok"] = False
        result["error"] = (
            f"exited with status {returncode} (signal {-returncode})"
            if returncode < 0
            else f"exited with status {returncode}"
        )
    if not result["ok"]:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        result["log_tail"] = tail
    return result


def _number(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def graph_cell(result: dict) -> str:
    graphs = result.get("graphs")
    if not graphs:
        return "—"
    if "skipped" in graphs:
        return f"skipped ({graphs['skipped']})"
    cells = []
    for batch, graph in graphs.items():
        if "error" in graph:
            first_line = graph["error"].splitlines()[0][:140]
            cells.append(f"b{batch}: {first_line}")
        else:
            mismatch = "" if graph["replay_matches_eager"] else " (replay≠eager)"
            cells.append(f"b{batch} {graph['mib']:.1f}{mismatch}")
    return "; ".join(cells)


def markdown(results: list, meta: dict) -> str:
    header = [
        "allocator",
        "median step ms",
        "generation s",
        "peak device MiB",
        "peak live MiB",
        "device÷live",
        "final loss",
        "graphs (MiB or error)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        if not r.get("ok") and r.get("median_step_ms") is None:
            cells = [r["allocator"], f"FAILED in {r.get('phase', '?')}: {str(r.get('error'))[:160]}"]
            cells += [""] * (len(header) - 2)
        else:
            loss = r.get("final_loss")
            cells = [
                r["allocator"] + ("" if r.get("ok") else " (failed: " + str(r.get("error"))[:80] + ")"),
                _number(r.get("median_step_ms"), 1),
                _number(r.get("generate_s"), 2),
                _number(r.get("peak_device_mib"), 0),
                _number(r.get("peak_live_mib"), 0),
                _number(r.get("device_over_live"), 2),
                "—" if loss is None else f"{loss:.6f}",
                graph_cell(r),
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    lines.append(agreement(results))
    lines.append("")
    lines.append(
        f"{meta['workload']}. Device memory: peak of cudaMemGetInfo used bytes (sampled after each forward, "
        "backward, step and generation; memory taken and returned between samples is not seen) minus the "
        "baseline after CUDA init (so it includes what CUDA libraries load and keep, alike for every "
        "allocator); live: the allocator's peak of bytes handed out "
        "(torch.cuda.max_memory_allocated, or gpuhal's allocated_bytes.all.peak). Graphs: one-token forward "
        "captured per batch size, cudaMemGetInfo delta across the capture."
    )
    return "\n".join(lines) + "\n"


def agreement(results: list) -> str:
    done = [r for r in results if r.get("losses")]
    if len(done) < 2:
        return "Loss agreement: fewer than two allocators finished training."
    reference = done[0]
    parts = []
    for r in done[1:]:
        same_losses = r["losses"] == reference["losses"]
        max_diff = max(abs(a - b) for a, b in zip(r["losses"], reference["losses"]))
        same_tokens = r.get("generated_sha256") == reference.get("generated_sha256")
        parts.append(
            f"{r['allocator']}: losses {'identical' if same_losses else f'differ (max |Δ| {max_diff:.2e})'}, "
            f"generated tokens {'identical' if same_tokens else 'differ'}"
        )
    return f"Against {reference['allocator']}: " + "; ".join(parts) + "."


def driver_main(args) -> int:
    config = QUICK if args.quick else FULL
    names = list(ALLOCATORS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in ALLOCATORS]
        if unknown:
            print(f"unknown allocator(s) {unknown}; known: {names}", file=sys.stderr)
            return 2
        names = wanted
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="torch-allocators-"))
    out.mkdir(parents=True, exist_ok=True)
    timeout_s = args.timeout or config["timeout_s"]
    m = config["model"]
    meta = {
        "workload": (
            f"GPT-2 (n_layer {m['n_layer']}, n_embd {m['n_embd']}, vocab {m['vocab_size']}), AdamW, bf16 autocast, "
            f"{config['steps']} steps of batch {config['batch']} with seq len "
            f"{config['seq_range'][0]}..{config['seq_range'][1]} "
            f"(seeded); generate greedy {config['max_new_tokens']} new tokens for (batch, prompt) {config['generate']}"
            + ("; on the CPU (dry run)" if args.cpu else "")
        ),
        "quick": args.quick,
        "cpu": args.cpu,
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results = []

    def write_results():
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (out / "results.md").write_text(markdown(results, meta))

    for name in names:
        print(f"== {name} ...", flush=True)
        result = run_child(name, args, out, timeout_s)
        results.append(result)
        status = "ok" if result["ok"] else f"FAILED: {result.get('error')}"
        print(
            f"   {status}; median step {_number(result.get('median_step_ms'))} ms, generation "
            f"{_number(result.get('generate_s'), 2)} s, peak device {_number(result.get('peak_device_mib'), 0)} MiB, "
            f"wall {result['wall_s']:.0f} s (log {out / result['log']})",
            flush=True,
        )
        if not result["ok"]:
            print("   " + "\n   ".join(result.get("log_tail", [])), flush=True)
        write_results()  # after every allocator: a run cut short keeps what finished
    print()
    print(markdown(results, meta))
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")
    return 0 if all(r["ok"] for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="directory for results.json, results.md and one log per allocator")
    parser.add_argument(
        "--lib", help="gpuhal's libgpuhal_capi.so (default: GPUHAL_LIBRARY, else the installed package's)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps: a smoke check")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU, skipping CUDA-only measurements")
    parser.add_argument("--only", help="comma-separated allocators: " + ", ".join(ALLOCATORS))
    parser.add_argument("--timeout", type=float, help="seconds per allocator before its process is killed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
