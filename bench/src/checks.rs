//! The targets, checked side by side against the rows of one run.

use crate::report::{number, Report, Verdict};
use crate::suite::{LOCKS_BIASED_NOTE, THREAD_COUNTS};

/// Targets, as numbers, so BENCHMARKS.md and the checks cannot drift apart.
pub mod target {
    /// Cache-hit allocate + drop, ns per pair.
    pub const HIT_NS: f64 = 50.0;
    /// Churn, ns per op.
    pub const CHURN_NS: f64 = 150.0;
    /// Thread scaling, fraction of linear.
    pub const SCALING: f64 = 0.8;
    /// Event acquire + record + release over the bare record, ns.
    pub const EVENT_OVERHEAD_NS: f64 = 30.0;
    /// A CPU fence wait may use at most this share of one core, percent.
    pub const WAIT_CPU_PERCENT: f64 = 10.0;
    /// Eager submission CPU time over graph replay CPU time.
    pub const GRAPH_SPEEDUP: f64 = 10.0;
    /// Shared graph pool over the largest capture.
    pub const GRAPH_SHARED: f64 = 1.05;
    /// gpuhal Device copy bandwidth over raw cuMemAlloc buffers.
    pub const DEVICE_BANDWIDTH: f64 = 0.97;
    /// Trace replay: reserved over peak live.
    pub const RESERVED_OVER_LIVE: f64 = 1.02;
    /// Hand-off: cache hit rate under the default policy, percent.
    pub const HANDOFF_HIT_PERCENT: f64 = 95.0;
    /// Hand-off: throughput of the default policy over never releasing.
    pub const HANDOFF_THROUGHPUT: f64 = 0.9;
    /// The memory report of [`REPORT_LIVE`](crate::suite::REPORT_LIVE) live blocks, ms.
    pub const REPORT_MS: f64 = 5.0;
    /// A cache-hit pair with a filtered tracing subscriber over none, ns.
    pub const TRACED_HIT_NS: f64 = 2.0;
}

/// Adds a check per target to `report`, from its rows. `native` names what the native
/// baselines are ("CUDA driver") or is `None` when the backend has none.
pub fn evaluate(report: &mut Report) {
    cache_hit(report);
    churn(report);
    handoff(report);
    threads(report);
    events(report);
    fences(report);
    graphs(report);
    bandwidth(report);
    trace(report);
    memory_report(report);
    traced_hit(report);
}

fn times(slow: Option<f64>, fast: f64) -> String {
    match slow {
        Some(slow) => format!("{}x", number(slow / fast)),
        None => "n/a".into(),
    }
}

fn cache_hit(report: &mut Report) {
    let target = format!(
        "cache-hit allocate + drop ≤ {} ns per pair (512 B and 1 MiB)",
        target::HIT_NS
    );
    let (Some(small), Some(large)) = (report.median("hit.gpuhal.512"), report.median("hit.gpuhal.1m")) else {
        report.check("cache-hit", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let worst = small.max(large);
    let biased = report
        .rows
        .iter()
        .any(|row| row.id == "hit.pool.512" && row.note.as_deref() == Some(LOCKS_BIASED_NOTE));
    let floor = if biased {
        "which its biased locks skip"
    } else {
        "which it pays: locks not biased in this process"
    };
    let measured = format!(
        "512 B {} ns, 1 MiB {} ns; pool alone {} / {} ns (two spin-lock round trips, {floor}: {} ns); cuMemAllocAsync pair {} / {} slower; cuMemAlloc pair {} / {} slower",
        number(small),
        number(large),
        report.median("hit.pool.512").map_or("n/a".into(), number),
        report.median("hit.pool.1m").map_or("n/a".into(), number),
        report.median("hit.floor.locks").map_or("n/a".into(), number),
        times(report.median("hit.native.async.512"), small),
        times(report.median("hit.native.async.1m"), large),
        times(report.median("hit.native.sync.512"), small),
        times(report.median("hit.native.sync.1m"), large),
    );
    report.check(
        "cache-hit",
        target,
        measured,
        Verdict::from_bool(worst <= target::HIT_NS),
    );
}

fn handoff(report: &mut Report) {
    let target = format!(
        "hand-off (8 threads, lagging consumer): default policy hit rate ≥ {}% and ≥ {} × the throughput of never releasing",
        target::HANDOFF_HIT_PERCENT,
        target::HANDOFF_THROUGHPUT
    );
    let (Some(hit), Some(default), Some(never)) = (
        report.median("handoff.hit_rate.default"),
        report.median("handoff.gpuhal.default"),
        report.median("handoff.gpuhal.never"),
    ) else {
        report.check("handoff", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let ratio = default / never;
    let measured = format!(
        "hit rate {}%, {} × never releasing ({} vs {} k hand-offs/s); 1% slack without the floor: hit rate {}%, {} k/s",
        number(hit),
        number(ratio),
        number(default),
        number(never),
        report.median("handoff.hit_rate.slack1").map_or("n/a".into(), number),
        report.median("handoff.gpuhal.slack1").map_or("n/a".into(), number),
    );
    report.check(
        "handoff",
        target,
        measured,
        Verdict::from_bool(hit >= target::HANDOFF_HIT_PERCENT && ratio >= target::HANDOFF_THROUGHPUT),
    );
}

fn churn(report: &mut Report) {
    let target = format!(
        "churn (random sizes 512 B–16 MiB, 256 live) ≤ {} ns per op (op = one allocate or one free)",
        target::CHURN_NS
    );
    let Some(random) = report.median("churn.gpuhal.random") else {
        report.check("churn", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let measured = format!(
        "random {} ns/op (pool alone {}); recurring sizes {} ns/op (pool alone {}); native async churn {} slower",
        number(random),
        report.median("churn.pool.random").map_or("n/a".into(), number),
        report.median("churn.gpuhal.recurring").map_or("n/a".into(), number),
        report.median("churn.pool.recurring").map_or("n/a".into(), number),
        times(report.median("churn.native.async.random"), random),
    );
    report.check(
        "churn",
        target,
        measured,
        Verdict::from_bool(random <= target::CHURN_NS),
    );
}

fn threads(report: &mut Report) {
    let cores = report.machine.cores;
    let Some(one) = report.median("threads.gpuhal.1") else {
        report.check("threads", "thread scaling", "not measured".into(), Verdict::NotMeasured);
        return;
    };
    for threads in THREAD_COUNTS.into_iter().filter(|&n| n > 1) {
        let target = format!(
            "{threads} threads, own stream each: aggregate ≥ {} × {threads} × one-thread rate",
            target::SCALING
        );
        let Some(rate) = report.median(&format!("threads.gpuhal.{threads}")) else {
            report.check("threads", target, "not measured".into(), Verdict::NotMeasured);
            continue;
        };
        let scaling = rate / (threads as f64 * one);
        let pool = match (
            report.median("threads.pool.1"),
            report.median(&format!("threads.pool.{threads}")),
        ) {
            (Some(pool_one), Some(pool_rate)) => format!(
                " (pool alone: {} vs {}, scaling {})",
                number(pool_rate),
                number(pool_one),
                number(pool_rate / (threads as f64 * pool_one))
            ),
            _ => String::new(),
        };
        let mut measured = format!(
            "{} M pairs/s vs {} on one thread: scaling {}{pool}",
            number(rate),
            number(one),
            number(scaling)
        );
        let verdict = if threads > cores {
            let per_core = rate / (cores as f64 * one);
            measured.push_str(&format!(
                "; only {cores} cores here, so at most {cores}x is possible: {} of {cores}-core linear",
                number(per_core)
            ));
            Verdict::NotMeasured
        } else {
            Verdict::from_bool(scaling >= target::SCALING)
        };
        report.check("threads", target, measured, verdict);
    }
}

fn events(report: &mut Report) {
    let target = format!(
        "event acquire + record + release ≤ {} ns over the bare record; 0 native creations after warm-up",
        target::EVENT_OVERHEAD_NS
    );
    let Some(cycle) = report.median("event.gpuhal.cycle") else {
        report.check("events", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let created = report.median("event.gpuhal.created").unwrap_or(f64::NAN);
    let (bare, bare_words) = match report.median("event.native.record") {
        Some(native) => (native, "bare cuEventRecord"),
        None => (
            report.median("event.gpuhal.record").unwrap_or(f64::NAN),
            "gpuhal record of a held event (no native record on this backend)",
        ),
    };
    // The paired difference (same stream, batch by batch) where the backend measures it;
    // otherwise the difference of the two medians, taken at different moments.
    let (overhead, overhead_words) = match report.median("event.paired.overhead") {
        Some(paired) => (paired, "paired overhead (batch by batch, same stream)"),
        None => (cycle - bare, "overhead (difference of medians)"),
    };
    let measured = format!(
        "cycle {} ns, {bare_words} {} ns: {overhead_words} {} ns; {} native creations; cuEventCreate+Destroy {}",
        number(cycle),
        number(bare),
        number(overhead),
        created,
        report
            .median("event.native.create_destroy")
            .map_or("n/a".into(), |ns| format!("{} ns", number(ns))),
    );
    let verdict = Verdict::from_bool(overhead <= target::EVENT_OVERHEAD_NS && created == 0.0);
    report.check("events", target, measured, verdict);
}

fn fences(report: &mut Report) {
    let target = format!(
        "fence signal-to-wake latency reported; a long CPU wait uses ≤ {}% of a core (process CPU time)",
        target::WAIT_CPU_PERCENT
    );
    let Some(share) = report.median("fence.wait_cpu") else {
        report.check("fence", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let us = |id: &str| report.median(id).map_or("n/a".into(), |v| format!("{} µs", number(v)));
    let measured = format!(
        "GPU→CPU {}, CPU→stream→CPU {}, stream→stream→CPU {}; long wait: process {}%, waiting thread {}% of a core",
        us("fence.gpu_to_cpu"),
        us("fence.cpu_stream_cpu"),
        us("fence.stream_stream_cpu"),
        number(share),
        report.median("fence.wait_cpu_thread").map_or("n/a".into(), number),
    );
    report.check(
        "fence",
        target,
        measured,
        Verdict::from_bool(share <= target::WAIT_CPU_PERCENT),
    );
}

fn graphs(report: &mut Report) {
    let target = format!(
        "replay of 100 captured small ops: CPU time per iteration ≥ {}x lower than eager",
        target::GRAPH_SPEEDUP
    );
    match (report.median("graph.eager.cpu"), report.median("graph.replay.cpu")) {
        (Some(eager), Some(replay)) => {
            let speedup = eager / replay;
            let native = match (
                report.median("graph.native.eager"),
                report.median("graph.native.replay"),
            ) {
                (Some(e), Some(r)) => format!(
                    "; raw driver: eager {} µs, replay {} µs ({}x)",
                    number(e),
                    number(r),
                    number(e / r)
                ),
                _ => String::new(),
            };
            let measured = format!(
                "eager {} µs, replay {} µs: {}x{native}",
                number(eager),
                number(replay),
                number(speedup)
            );
            report.check(
                "graph",
                target,
                measured,
                Verdict::from_bool(speedup >= target::GRAPH_SPEEDUP),
            );
        }
        _ => report.check("graph", target, "not measured".into(), Verdict::NotMeasured),
    }

    let target = format!(
        "graph memory: 8 captures sharing a pool ≤ {} × the largest capture",
        target::GRAPH_SHARED
    );
    match (
        report.median("graphmem.shared"),
        report.median("graphmem.largest"),
        report.median("graphmem.separate"),
    ) {
        (Some(shared), Some(largest), Some(separate)) if largest > 0.0 => {
            let measured = format!(
                "shared {} MiB, largest alone {} MiB ({}x), separate pools {} MiB ({}x)",
                number(shared),
                number(largest),
                number(shared / largest),
                number(separate),
                number(separate / largest)
            );
            report.check(
                "graph-memory",
                target,
                measured,
                Verdict::from_bool(shared <= target::GRAPH_SHARED * largest),
            );
        }
        _ => report.check("graph-memory", target, "not measured".into(), Verdict::NotMeasured),
    }
}

fn bandwidth(report: &mut Report) {
    let target = format!(
        "Device copy bandwidth within {:.0}% of raw cuMemAlloc buffers",
        (1.0 - target::DEVICE_BANDWIDTH) * 100.0
    );
    let device = report.median("bw.gpuhal.device");
    let pointers = report.median("bw.native.gpuhal_ptrs");
    let managed = |key: &str| report.median(&format!("bw.gpuhal.managed.{key}.first"));
    let managed_words = match (device, managed("nopolicy"), managed("policy")) {
        (Some(device), Some(bare), Some(policy)) => format!(
            "; managed first touch: no policy {} GB/s ({}x slower than Device), policy {} GB/s ({}x)",
            number(bare),
            number(device / bare),
            number(policy),
            number(device / policy)
        ),
        _ => String::new(),
    };
    match (report.median("bw.native.raw"), device) {
        (Some(raw), Some(device)) => {
            let worst = device.min(pointers.unwrap_or(device));
            let measured = format!(
                "raw {} GB/s, gpuhal buffers via cuMemcpyDtoDAsync {} GB/s, gpuhal stream.copy {} GB/s: {}% of raw{managed_words}",
                number(raw),
                pointers.map_or("n/a".into(), number),
                number(device),
                number(100.0 * worst / raw)
            );
            report.check(
                "bandwidth",
                target,
                measured,
                Verdict::from_bool(worst >= target::DEVICE_BANDWIDTH * raw),
            );
        }
        (None, Some(device)) => {
            let measured = format!(
                "gpuhal stream.copy {} GB/s; no raw baseline on this backend{managed_words}",
                number(device)
            );
            report.check("bandwidth", target, measured, Verdict::NotMeasured);
        }
        _ => report.check("bandwidth", target, "not measured".into(), Verdict::NotMeasured),
    }
}

fn trace(report: &mut Report) {
    let target = format!(
        "gpt2_train replay completes under a memory limit of {} × peak live (PyTorch reserves 1.054 ×); without a limit, reserved ÷ peak live and hit rate reported",
        target::RESERVED_OVER_LIVE
    );
    let Some(limited) = report.median("trace.reserved_over_live.limited") else {
        report.check(
            "trace",
            target,
            "not measured (trace not found; pass --trace)".into(),
            Verdict::NotMeasured,
        );
        return;
    };
    let measured = format!(
        "completed under the limit ({limited:.4}); without a limit {} reserved ÷ peak live, {} ns per event",
        report
            .median("trace.reserved_over_live")
            .map_or("n/a".into(), |r| format!("{r:.4}")),
        report.median("trace.ns_per_event").map_or("n/a".into(), number)
    );
    report.check(
        "trace",
        target,
        measured,
        Verdict::from_bool(limited <= target::RESERVED_OVER_LIVE),
    );
}

fn memory_report(report: &mut Report) {
    let target = format!(
        "memory report of {} live blocks ≤ {} ms",
        crate::suite::REPORT_LIVE,
        target::REPORT_MS
    );
    let Some(us) = report.median("report.pool.10k") else {
        report.check("report", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let ms = us / 1e3;
    report.check(
        "report",
        target,
        format!("{} ms", number(ms)),
        Verdict::from_bool(ms <= target::REPORT_MS),
    );
}

fn traced_hit(report: &mut Report) {
    let target = format!(
        "cache-hit pair with a tracing subscriber installed (gpuhal filtered out) ≤ {} ns over none",
        target::TRACED_HIT_NS
    );
    let Some(difference) = report.median("hit.pool.512.traced_minus_untraced") else {
        report.check("tracing", target, "not measured".into(), Verdict::NotMeasured);
        return;
    };
    let measured = format!(
        "{} ns ({} ns with, {} ns without; median of paired batches)",
        number(difference),
        report.median("hit.pool.512.traced").map_or("n/a".into(), number),
        report.median("hit.pool.512.untraced").map_or("n/a".into(), number),
    );
    report.check(
        "tracing",
        target,
        measured,
        Verdict::from_bool(difference <= target::TRACED_HIT_NS),
    );
}
