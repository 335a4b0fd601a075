//! `cargo xtask conformance-page`: docs/conformance.md, the conformance matrix by backend,
//! written from real runs' JSON reports (`gpuhal-conformance --json`).
//!
//! The mock (every profile) and, where a Vulkan driver is installed, Vulkan run here;
//! GPU runs come from the results folders `bundle/run.sh` leaves (`cuda-conformance.json`,
//! `vulkan-conformance.json`, with `gpu.txt` and `MANIFEST` saying on what and at which
//! commit), given with `--results DIR`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::cargo::workspace_root;
use crate::{Backend, ConformanceArgs, Profile};

#[derive(Args, Clone, Debug)]
pub struct PageArgs {
    /// A results folder from `bundle/run.sh` (repeatable): its *-conformance.json reports
    /// go on the page, described by its gpu.txt and MANIFEST.
    #[arg(long = "results", value_name = "DIR")]
    results: Vec<PathBuf>,
    /// Leaves out the Vulkan run on this machine even when a driver is installed.
    #[arg(long)]
    no_local_vulkan: bool,
    /// Where to write the page.
    #[arg(long, default_value = "docs/conformance.md")]
    out: PathBuf,
}

/// One backend's report and where it came from.
struct Run {
    /// The report (`target`, `total`, `areas`, `cases`).
    report: Value,
    /// On what and where it ran.
    machine: String,
    /// The commit it ran at.
    commit: String,
}

pub fn conformance_page(args: &PageArgs) -> Result<()> {
    let scratch = workspace_root().join("target/conformance-page");
    fs::create_dir_all(&scratch).with_context(|| format!("could not create {}", scratch.display()))?;
    let here = local_commit();
    let mut runs = Vec::new();

    let mock_json = scratch.join("mock.json");
    crate::conformance(&ConformanceArgs {
        backend: Backend::Mock,
        profile: Some(Profile::All),
        filter: None,
        list: false,
        json: Some(mock_json.clone()),
        release: false,
    })?;
    for report in reports(&mock_json)? {
        runs.push(Run {
            report,
            machine: "host memory; runs anywhere".into(),
            commit: here.clone(),
        });
    }

    if !args.no_local_vulkan {
        match crate::vulkan::detect() {
            Ok(_) => {
                let vulkan_json = scratch.join("vulkan.json");
                crate::conformance(&ConformanceArgs {
                    backend: Backend::Vulkan,
                    profile: None,
                    filter: None,
                    list: false,
                    json: Some(vulkan_json.clone()),
                    release: false,
                })?;
                for report in reports(&vulkan_json)? {
                    runs.push(Run {
                        report,
                        machine: "the build machine".into(),
                        commit: here.clone(),
                    });
                }
            }
            Err(reason) => eprintln!("xtask: no Vulkan run on this machine: {reason}"),
        }
    }

    for dir in &args.results {
        let (machine, commit) = provenance(dir);
        let mut found = false;
        for name in ["cuda-conformance.json", "vulkan-conformance.json"] {
            let path = dir.join(name);
            if path.is_file() {
                found = true;
                for report in reports(&path)? {
                    runs.push(Run {
                        report,
                        machine: machine.clone(),
                        commit: commit.clone(),
                    });
                }
            }
        }
        if !found {
            bail!(
                "{} holds no cuda-conformance.json or vulkan-conformance.json",
                dir.display()
            );
        }
    }

    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    }
    fs::write(&out, render(&runs)).with_context(|| format!("could not write {}", out.display()))?;
    eprintln!("xtask: wrote {} ({} runs)", out.display(), runs.len());
    Ok(())
}

fn reports(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let parsed: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a conformance report", path.display()))?;
    match parsed {
        Value::Array(reports) if reports.iter().all(|r| r["cases"].is_array()) => Ok(reports),
        _ => bail!(
            "{} is not a list of conformance reports (gpuhal-conformance --json)",
            path.display()
        ),
    }
}

/// The GPU (`gpu.txt`: nvidia-smi's name, driver, memory) and commit (`MANIFEST`) of a
/// results folder, or what is missing.
fn provenance(dir: &Path) -> (String, String) {
    let machine = fs::read_to_string(dir.join("gpu.txt"))
        .ok()
        .and_then(|text| text.lines().nth(1).map(str::trim).map(str::to_string))
        .map(|gpu| {
            let parts: Vec<&str> = gpu.split(", ").collect();
            match parts.as_slice() {
                [name, driver, memory] => format!("{name}, driver {driver}, {memory}"),
                _ => gpu,
            }
        })
        .unwrap_or_else(|| "GPU host (no gpu.txt in the results)".into());
    let commit = fs::read_to_string(dir.join("MANIFEST"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("commit: "))
                .map(|commit| commit.chars().take(7).collect())
        })
        .unwrap_or_else(|| "unknown (no MANIFEST in the results)".into());
    (machine, commit)
}

fn local_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=7", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{commit} + local changes"),
        _ => commit,
    }
}

/// How one case ended in one run, as a table cell.
fn cell(case: Option<&Value>, reasons: &mut Vec<String>) -> String {
    let Some(case) = case else {
        return "not in this run".into();
    };
    let detail = case["detail"].as_str().unwrap_or_default().to_string();
    match case["outcome"].as_str() {
        Some("passed") => "✓".into(),
        Some(outcome @ ("skipped" | "failed")) => {
            let number = match reasons.iter().position(|reason| *reason == detail) {
                Some(index) => index + 1,
                None => {
                    reasons.push(detail);
                    reasons.len()
                }
            };
            let mark = if outcome == "failed" { "✗ failed" } else { "skipped" };
            format!("{mark} [{number}]")
        }
        _ => "?".into(),
    }
}

fn count(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

fn render(runs: &[Run]) -> String {
    let mut page = String::new();
    let _ = writeln!(page, "# Conformance by backend\n");
    let _ = writeln!(
        page,
        "Generated by `cargo xtask conformance-page` from real runs' reports (`gpuhal-conformance --json`); do not \
         edit by hand. The mock and, where a Vulkan driver is installed, Vulkan run on the machine that generates \
         the page; GPU runs come from the results of `bundle/run.sh` on a GPU host (`--results DIR`). Regenerate \
         with:\n\n```sh\ncargo xtask conformance-page --results RESULTS_DIR   # RESULTS_DIR from bundle/run.sh\n```\n\n\
         A case needing a capability the device lacks is skipped with the reason, never counted as passed. \
         What each case checks is in its source, `conformance/src/cases/<area>.rs`.\n"
    );

    let _ = writeln!(page, "## Runs\n");
    let _ = writeln!(page, "| run | passed | failed | skipped | on | commit |");
    let _ = writeln!(page, "| --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let total = &run.report["total"];
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} | {} | {} |",
            run.report["target"].as_str().unwrap_or("?"),
            count(total, "passed"),
            count(total, "failed"),
            count(total, "skipped"),
            run.machine,
            run.commit
        );
    }

    let headers: Vec<&str> = runs
        .iter()
        .map(|run| run.report["target"].as_str().unwrap_or("?"))
        .collect();
    let header_row = |first: &str| {
        let mut row = format!("| {first} |");
        for header in &headers {
            let _ = write!(row, " {header} |");
        }
        row.push('\n');
        row.push_str(&"| --- ".repeat(headers.len() + 1));
        row.push_str("|\n");
        row
    };

    let _ = writeln!(page, "\n## By area (passed / failed / skipped)\n");
    page.push_str(&header_row("area"));
    // Areas in the order the runner runs them (the JSON's area map is sorted by name).
    let mut areas: Vec<String> = Vec::new();
    for run in runs {
        for case in run.report["cases"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let area = case["area"].as_str().unwrap_or("?").replace('_', " ");
            if !areas.contains(&area) {
                areas.push(area);
            }
        }
    }
    for area in &areas {
        let _ = write!(page, "| {area} |");
        for run in runs {
            let tally = &run.report["areas"][area.as_str()];
            if tally.is_null() {
                page.push_str(" – |");
            } else {
                let _ = write!(
                    page,
                    " {} / {} / {} |",
                    count(tally, "passed"),
                    count(tally, "failed"),
                    count(tally, "skipped")
                );
            }
        }
        page.push('\n');
    }

    // Every case in the order the runner runs them; cases a run predates say so.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by_run: Vec<BTreeMap<(String, String), &Value>> = Vec::new();
    for run in runs {
        let mut cases = BTreeMap::new();
        for case in run.report["cases"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let key = (
                case["area"].as_str().unwrap_or("?").to_string(),
                case["name"].as_str().unwrap_or("?").to_string(),
            );
            if !order.contains(&key) {
                order.push(key.clone());
            }
            cases.insert(key, case);
        }
        by_run.push(cases);
    }
    let mut reasons = Vec::new();
    let _ = writeln!(page, "\n## Every case\n");
    page.push_str(&header_row("case"));
    for key in &order {
        let _ = write!(page, "| `{}/{}` |", key.0, key.1);
        for cases in &by_run {
            let _ = write!(page, " {} |", cell(cases.get(key).copied(), &mut reasons));
        }
        page.push('\n');
    }
    if !reasons.is_empty() {
        let _ = writeln!(page, "\nReasons given by the runs:\n");
        for (index, reason) in reasons.iter().enumerate() {
            let _ = writeln!(page, "{}. {}", index + 1, reason.replace('\n', " "));
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, cases: Value) -> Run {
        Run {
            report: serde_json::json!({
                "target": target,
                "total": {"passed": 1, "failed": 0, "skipped": 1},
                "areas": {"memory": {"passed": 1, "failed": 0, "skipped": 1}},
                "cases": cases,
            }),
            machine: "here".into(),
            commit: "abc1234".into(),
        }
    }

    #[test]
    fn page_marks_skips_with_their_reason_and_cases_a_run_lacks() {
        let older = run(
            "cuda (GPU)",
            serde_json::json!([
                {"area": "memory", "name": "a", "outcome": "passed"},
                {"area": "memory", "name": "b", "outcome": "skipped", "detail": "needs MANAGED"},
            ]),
        );
        let newer = run(
            "mock (minimal)",
            serde_json::json!([
                {"area": "memory", "name": "b", "outcome": "skipped", "detail": "needs MANAGED"},
                {"area": "memory", "name": "c", "outcome": "failed", "detail": "wrong bytes"},
            ]),
        );
        let page = render(&[older, newer]);
        assert!(page.contains("| `memory/a` | ✓ | not in this run |"), "{page}");
        assert!(page.contains("| `memory/b` | skipped [1] | skipped [1] |"), "{page}");
        assert!(
            page.contains("| `memory/c` | not in this run | ✗ failed [2] |"),
            "{page}"
        );
        assert!(page.contains("1. needs MANAGED\n2. wrong bytes"), "{page}");
        assert!(page.contains("| cuda (GPU) | 1 | 0 | 1 | here | abc1234 |"), "{page}");
    }
}
