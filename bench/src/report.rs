//! What one run measured: rows of medians (with min and max), the targets checked against
//! them, and the machine they came from; printed as Markdown tables and written as JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::harness::Summary;

/// What a row says when the backend has no such thing to measure.
pub const NOT_ON_BACKEND: &str = "n/a on this backend";

/// One measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable key, used by checks and by anyone diffing two runs' JSON.
    pub id: String,
    /// Which benchmark it belongs to.
    pub group: &'static str,
    /// What was measured, in words.
    pub label: String,
    /// Unit of `summary`.
    pub unit: &'static str,
    /// Median, min and max; `None` when it could not be measured here.
    pub summary: Option<Summary>,
    /// Why it was not measured, or what else to know about it.
    pub note: Option<String>,
}

/// Met, missed, or not measured on this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The target holds.
    Met,
    /// The target does not hold.
    Missed,
    /// This run could not measure it (backend, machine or build lacks something).
    #[serde(rename = "n/a")]
    NotMeasured,
}

impl Verdict {
    /// `Met` when `ok`, `Missed` otherwise.
    pub fn from_bool(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// A target checked against this run's rows.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The benchmark.
    pub benchmark: &'static str,
    /// The target, in words.
    pub target: String,
    /// What this run measured, with side-by-side ratios.
    pub measured: String,
    /// Met or missed.
    pub verdict: Verdict,
}

/// The machine a run came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model, from the OS.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Operating system and architecture.
    pub os: String,
}

impl Machine {
    /// Describes the machine this process runs on.
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, name)| name.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// The device a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    /// Backend name.
    pub backend: &'static str,
    /// Device name (GPU model, or the mock's profile).
    pub name: String,
    /// Total memory in bytes, as the device reports it.
    pub total_memory: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "suite" or "replay".
    pub kind: &'static str,
    /// "full" or "smoke" (smoke figures prove the code runs; they are not results).
    pub mode: &'static str,
    /// Seconds since the Unix epoch when the run finished.
    pub unix_time: u64,
    /// Where it ran.
    pub machine: Machine,
    /// What it measured.
    pub device: Option<DeviceSummary>,
    /// Measured rows, in run order.
    pub rows: Vec<Row>,
    /// Targets checked.
    pub checks: Vec<Check>,
    /// The trace replay, when one ran.
    pub replay: Option<gpuhal_hal::trace::ReplayReport>,
}

impl Report {
    /// An empty report.
    pub fn new(kind: &'static str, smoke: bool) -> Report {
        Report {
            kind,
            mode: if smoke { "smoke" } else { "full" },
            unix_time: 0,
            machine: Machine::detect(),
            device: None,
            rows: Vec::new(),
            checks: Vec::new(),
            replay: None,
        }
    }

    /// Adds a measured row.
    pub fn measured(&mut self, id: &str, group: &'static str, label: &str, unit: &'static str, summary: Summary) {
        self.rows.push(Row {
            id: id.into(),
            group,
            label: label.into(),
            unit,
            summary: Some(summary),
            note: None,
        });
    }

    /// Adds a measured row with a note.
    pub fn measured_with_note(
        &mut self,
        id: &str,
        group: &'static str,
        label: &str,
        unit: &'static str,
        summary: Summary,
        note: String,
    ) {
        self.measured(id, group, label, unit, summary);
        if let Some(row) = self.rows.last_mut() {
            row.note = Some(note);
        }
    }

    /// Adds a row that could not be measured, saying why.
    pub fn missing(&mut self, id: &str, group: &'static str, label: &str, unit: &'static str, why: impl Into<String>) {
        self.rows.push(Row {
            id: id.into(),
            group,
            label: label.into(),
            unit,
            summary: None,
            note: Some(why.into()),
        });
    }

    /// The median of row `id`, if it was measured.
    pub fn median(&self, id: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|row| row.id == id)
            .and_then(|row| row.summary)
            .map(|s| s.median)
    }

    /// Adds a check.
    pub fn check(&mut self, benchmark: &'static str, target: impl Into<String>, measured: String, verdict: Verdict) {
        self.checks.push(Check {
            benchmark,
            target: target.into(),
            measured,
            verdict,
        });
    }

    /// The report as Markdown: a header, the rows, and the checks.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(out, "### gpuhal-bench {} ({} mode)\n", self.kind, self.mode);
        let _ = writeln!(
            out,
            "- machine: {} ({} logical CPUs, {})",
            machine.cpu, machine.cores, machine.os
        );
        if let Some(device) = &self.device {
            let _ = writeln!(
                out,
                "- device: {} backend, {} ({:.1} GiB)",
                device.backend,
                device.name,
                device.total_memory as f64 / (1u64 << 30) as f64
            );
        }
        if self.mode == "smoke" {
            let _ = writeln!(out, "- smoke run: a handful of iterations each; these are not results");
        }
        if let Some(replay) = &self.replay {
            let _ = writeln!(out, "- replay: {replay}");
        }
        if !self.rows.is_empty() {
            let _ = writeln!(out, "\n| benchmark | measured | median | min | max | unit | note |");
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- | --- |");
            for row in &self.rows {
                let (median, min, max) = match row.summary {
                    Some(s) => (number(s.median), number(s.min), number(s.max)),
                    None => ("n/a".into(), "".into(), "".into()),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    row.group,
                    row.label,
                    median,
                    min,
                    max,
                    row.unit,
                    row.note.as_deref().unwrap_or("")
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n| benchmark | target | measured | verdict |");
            let _ = writeln!(out, "| --- | --- | --- | --- |");
            for check in &self.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    check.benchmark,
                    check.target,
                    check.measured,
                    check.verdict.word()
                );
            }
        }
        out
    }

    /// Writes `NAME.json` and `NAME.md` under `dir`; returns the JSON path.
    pub fn write(&mut self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        use anyhow::Context as _;
        self.unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = dir.join(format!("{name}.json"));
        let json = serde_json::to_string_pretty(self).context("serialising the report")?;
        std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
        let md_path = dir.join(format!("{name}.md"));
        std::fs::write(&md_path, self.to_markdown()).with_context(|| format!("writing {}", md_path.display()))?;
        Ok(json_path)
    }
}

/// Three significant figures, without scientific notation.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_rows_and_checks() {
        let mut report = Report::new("suite", true);
        report.measured("a", "cache-hit", "alloc+drop 512 B", "ns/pair", Summary::single(12.345));
        report.missing("b", "cache-hit", "cuMemAllocAsync pair", "ns/pair", NOT_ON_BACKEND);
        report.check("cache-hit", "≤ 50 ns", "12.3 ns".into(), Verdict::Met);
        let md = report.to_markdown();
        assert!(md.contains("| cache-hit | alloc+drop 512 B | 12.3 | 12.3 | 12.3 | ns/pair |  |"));
        assert!(md.contains("| n/a |  |  | ns/pair | n/a on this backend |"));
        assert!(md.contains("| ≤ 50 ns | 12.3 ns | met |"));
    }
}
