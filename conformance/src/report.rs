//! The outcome of a suite run, as a table by area for people and as JSON for tools.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::case::Area;

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A check failed, the case returned an error or panicked; the message says how.
    Failed(String),
    /// The case did not run; the reason names the missing capability or limitation.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// Area it belongs to.
    pub area: Area,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time, opening the device included.
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
}

impl CaseResult {
    /// `area/name`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.area.name().replace(' ', "_"), self.name)
    }
}

fn as_millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1e3)
}

/// Passed, failed and skipped counts of one area (or of the whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AreaTally {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases skipped.
    pub skipped: usize,
}

impl AreaTally {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }

    /// Cases counted.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped
    }
}

/// The results of one suite run on one backend (and profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What ran: the backend name and the device (for the mock, its profile).
    pub target: String,
    /// Every case that was selected, in run order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// An empty report for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Report {
            target: target.into(),
            results: Vec::new(),
        }
    }

    /// Counts for one area.
    pub fn tally(&self, area: Area) -> AreaTally {
        let mut tally = AreaTally::default();
        for result in self.results.iter().filter(|r| r.area == area) {
            tally.add(&result.outcome);
        }
        tally
    }

    /// Counts over every area.
    pub fn total(&self) -> AreaTally {
        let mut tally = AreaTally::default();
        for result in &self.results {
            tally.add(&result.outcome);
        }
        tally
    }

    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.total().passed
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.total().failed
    }

    /// Cases skipped.
    pub fn skipped(&self) -> usize {
        self.total().skipped
    }

    /// True when no case failed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    /// The failed cases with their messages.
    pub fn failures(&self) -> impl Iterator<Item = (&CaseResult, &str)> {
        self.results.iter().filter_map(|r| match &r.outcome {
            Outcome::Failed(message) => Some((r, message.as_str())),
            _ => None,
        })
    }

    /// The skipped cases with their reasons.
    pub fn skips(&self) -> impl Iterator<Item = (&CaseResult, &str)> {
        self.results.iter().filter_map(|r| match &r.outcome {
            Outcome::Skipped(reason) => Some((r, reason.as_str())),
            _ => None,
        })
    }

    /// The report as text: a table by area, the failures, the skips and a summary line.
    /// Contains no timings, so that it is stable enough to snapshot.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "gpuhal conformance: {}", self.target);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<12} {:>7} {:>7} {:>8}", "area", "passed", "failed", "skipped");
        for area in Area::ALL {
            let t = self.tally(area);
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>7} {:>8}",
                area.name(),
                t.passed,
                t.failed,
                t.skipped
            );
        }
        let total = self.total();
        let _ = writeln!(
            out,
            "{:<12} {:>7} {:>7} {:>8}",
            "total", total.passed, total.failed, total.skipped
        );
        let failures: Vec<_> = self.failures().collect();
        if !failures.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "failures:");
            for (result, message) in failures {
                let _ = writeln!(out, "  {}: {}", result.path(), message);
            }
        }
        let skips: Vec<_> = self.skips().collect();
        if !skips.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "skipped:");
            for (result, reason) in skips {
                let _ = writeln!(out, "  {}: {}", result.path(), reason);
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}: {} cases, {} passed, {} failed, {} skipped",
            if total.failed == 0 { "ok" } else { "FAILED" },
            total.total(),
            total.passed,
            total.failed,
            total.skipped
        );
        out
    }

    /// The report as JSON: target, per-area tallies, totals and every case.
    pub fn to_json(&self) -> serde_json::Value {
        let areas: serde_json::Map<String, serde_json::Value> = Area::ALL
            .iter()
            .map(|area| (area.name().to_string(), serde_json::json!(self.tally(*area))))
            .collect();
        serde_json::json!({
            "target": self.target,
            "success": self.is_success(),
            "total": self.total(),
            "areas": areas,
            "cases": self.results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, area: Area, outcome: Outcome) -> CaseResult {
        CaseResult {
            name: name.to_string(),
            area,
            outcome,
            duration: Duration::from_millis(3),
        }
    }

    fn synthetic() -> Report {
        Report {
            target: "mock (discrete)".to_string(),
            results: vec![
                result("zero_size_allocation", Area::Memory, Outcome::Passed),
                result(
                    "same_stream_reuse",
                    Area::Memory,
                    Outcome::Failed("address of the second allocation: expected 0x1000, got 0x2000".into()),
                ),
                result(
                    "advice_read_back",
                    Area::Managed,
                    Outcome::Skipped("needs MANAGED | MANAGED_ADVICE, which the device lacks".into()),
                ),
                result("cpu_signal_and_wait", Area::Fences, Outcome::Passed),
                result("replay_after_input_change", Area::Graphs, Outcome::Passed),
                result(
                    "out_of_bounds_write",
                    Area::BadInput,
                    Outcome::Failed("panicked: index out of range".into()),
                ),
            ],
        }
    }

    #[test]
    fn rendered_report_format() {
        insta::assert_snapshot!(synthetic().render());
    }

    #[test]
    fn tallies_count_each_outcome_once() {
        let report = synthetic();
        assert_eq!(
            report.tally(Area::Memory),
            AreaTally {
                passed: 1,
                failed: 1,
                skipped: 0
            }
        );
        assert_eq!(report.total().total(), report.results.len());
        assert_eq!((report.passed(), report.failed(), report.skipped()), (3, 2, 1));
        assert!(!report.is_success());
    }

    #[test]
    fn json_report_carries_outcomes_and_tallies() {
        let json = synthetic().to_json();
        assert_eq!(json["success"], false);
        assert_eq!(json["total"]["failed"], 2);
        assert_eq!(json["areas"]["managed"]["skipped"], 1);
        assert_eq!(json["cases"][2]["outcome"], "skipped");
        assert_eq!(json["cases"][1]["area"], "memory");
        assert!(json["cases"][1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("0x2000")));
    }
}
