//! Running cargo from xtask: commands echoed before they run, exit statuses turned into
//! errors that say what failed, and the workspace metadata that tells whether a crate
//! has the feature or binary a task needs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A child process that exited unsuccessfully. `main` exits with the same code, so
/// `cargo xtask conformance` fails exactly as the conformance runner did.
#[derive(Debug)]
pub struct ChildFailed {
    /// The command line, as echoed.
    pub command: String,
    /// Its exit code (`None` when a signal ended it).
    pub code: Option<i32>,
}

impl std::fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` exited with status {code}", self.command),
            None => write!(f, "`{}` was ended by a signal", self.command),
        }
    }
}

impl std::error::Error for ChildFailed {}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs us (so `cargo +toolchain xtask` keeps its toolchain).
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// A `cargo` command run from the workspace root.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(cargo_program());
    command.args(args).current_dir(workspace_root());
    command
}

/// How a command looks on a terminal, for echoing and error messages.
pub fn display(command: &Command) -> String {
    let program = command.get_program();
    // The full path of the toolchain's cargo is noise; "cargo" is what a user would type.
    let mut shown = if program == cargo_program().as_str() {
        "cargo".to_string()
    } else {
        program.to_string_lossy().into_owned()
    };
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            shown.push_str(&format!(" '{arg}'"));
        } else {
            shown.push(' ');
            shown.push_str(&arg);
        }
    }
    shown
}

/// Runs `command` with inherited stdio; an unsuccessful exit is a [`ChildFailed`].
pub fn run(command: &mut Command) -> Result<()> {
    let shown = display(command);
    eprintln!("$ {shown}");
    let status = command.status().with_context(|| format!("could not start `{shown}`"))?;
    check_status(shown, status)
}

fn check_status(command: String, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(ChildFailed {
            command,
            code: status.code(),
        }
        .into())
    }
}

/// An artifact cargo built, from `--message-format=json`.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The target's name (`gpuhal_cuda`, `gpuhal-bench`, a test file's stem).
    pub target_name: String,
    /// The target's kinds (`lib`, `bin`, `test`, `bench` …).
    pub target_kinds: Vec<String>,
    /// Whether it was built as a test harness.
    pub is_test: bool,
    /// The executable built.
    pub executable: PathBuf,
}

/// Runs a cargo build-like command with `--message-format=json-render-diagnostics` and
/// returns the executables it produced. Diagnostics still reach the terminal.
pub fn build_executables(command: &mut Command) -> Result<Vec<Artifact>> {
    command
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = display(command);
    eprintln!("$ {shown}");
    let output = command.output().with_context(|| format!("could not start `{shown}`"))?;
    check_status(shown, output.status)?;
    let mut artifacts = Vec::new();
    for line in output.stdout.split(|&byte| byte == b'\n') {
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let target = &message["target"];
        artifacts.push(Artifact {
            target_name: target["name"].as_str().unwrap_or_default().to_string(),
            target_kinds: target["kind"]
                .as_array()
                .map(|kinds| kinds.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            is_test: message["profile"]["test"].as_bool().unwrap_or(false),
            executable: PathBuf::from(executable),
        });
    }
    Ok(artifacts)
}

fn metadata() -> Result<&'static Value> {
    static METADATA: OnceLock<Value> = OnceLock::new();
    if let Some(metadata) = METADATA.get() {
        return Ok(metadata);
    }
    let mut command = cargo(["metadata", "--no-deps", "--format-version", "1"]);
    let shown = display(&command);
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    check_status(shown, output.status)?;
    let parsed = serde_json::from_slice(&output.stdout).context("cargo metadata printed something that is not JSON")?;
    Ok(METADATA.get_or_init(|| parsed))
}

fn package(name: &str) -> Result<&'static Value> {
    let packages = metadata()?["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match packages.iter().find(|package| package["name"] == name) {
        Some(package) => Ok(package),
        None => bail!("the workspace has no package `{name}`"),
    }
}

/// Fails with a clear message unless `package` declares every one of `features`, so a
/// task never silently runs without a backend it was asked for.
pub fn require_features(package_name: &str, features: &[&str], why: &str) -> Result<()> {
    let declared = &package(package_name)?["features"];
    let missing: Vec<&str> = features
        .iter()
        .copied()
        .filter(|feature| declared.get(feature).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{why} needs the feature(s) {} of `{package_name}`, which its Cargo.toml does not declare (yet)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Fails with a clear message unless `package` has a target named `name` of `kind`.
pub fn require_target(package_name: &str, kind: &str, name: &str, why: &str) -> Result<()> {
    if target_names(package_name, kind)?.iter().any(|target| target == name) {
        Ok(())
    } else {
        bail!("{why} needs the {kind} target `{name}` of `{package_name}`, which does not exist (yet)")
    }
}

/// Names of `package`'s targets of `kind` (`bin`, `bench`, `test` …).
pub fn target_names(package_name: &str, kind: &str) -> Result<Vec<String>> {
    let targets = package(package_name)?["targets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(targets
        .iter()
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        })
        .filter_map(|target| target["name"].as_str().map(str::to_string))
        .collect())
}
