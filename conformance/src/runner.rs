//! Runs cases, each on a freshly opened device, isolating panics and hangs.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gpuhal_hal::{Backend, Capabilities, Device};

use crate::case::{Case, Context, Failure, Openers};
use crate::report::{CaseResult, Outcome, Report};

/// How a suite is run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Run only cases whose `area/name` path contains this substring.
    pub filter: Option<String>,
    /// A case still running after this long is reported as failed (it may be deadlocked)
    /// and left behind on its thread so the rest of the suite can run. Closing the case's
    /// device, after it reports, gets the same allowance again.
    pub case_timeout: Duration,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            filter: None,
            case_timeout: Duration::from_secs(60),
        }
    }
}

/// Runs every case of the suite (those whose `area/name` contains `filter`, if given),
/// each on a device freshly opened by `open`.
pub fn run_suite<B, F>(open: F, filter: Option<&str>) -> Report
where
    B: Backend,
    F: Fn() -> gpuhal_hal::Result<B::Device> + Send + Sync + 'static,
{
    let options = SuiteOptions {
        filter: filter.map(str::to_string),
        ..SuiteOptions::default()
    };
    run_suite_with::<B, F>(open, &options)
}

/// [`run_suite`] with explicit options.
pub fn run_suite_with<B, F>(open: F, options: &SuiteOptions) -> Report
where
    B: Backend,
    F: Fn() -> gpuhal_hal::Result<B::Device> + Send + Sync + 'static,
{
    run_cases::<B, F>(&crate::cases::all::<B>(), open, options)
}

/// Runs the given cases (filtered by `options`), each on a device freshly opened by `open`.
pub fn run_cases<B, F>(cases: &[Case<B>], open: F, options: &SuiteOptions) -> Report
where
    B: Backend,
    F: Fn() -> gpuhal_hal::Result<B::Device> + Send + Sync + 'static,
{
    run_cases_on(cases, Openers::new(open), options)
}

/// Runs every case of the suite with the devices `openers` opens.
pub fn run_suite_on<B: Backend>(openers: Openers<B>, options: &SuiteOptions) -> Report {
    run_cases_on(&crate::cases::all::<B>(), openers, options)
}

/// Runs the given cases (filtered by `options`) with the devices `openers` opens.
pub fn run_cases_on<B: Backend>(cases: &[Case<B>], openers: Openers<B>, options: &SuiteOptions) -> Report {
    let mut target: Option<String> = None;
    let mut results = Vec::new();
    for case in cases {
        if let Some(filter) = &options.filter {
            if !case.path().contains(filter.as_str()) {
                continue;
            }
        }
        let started = Instant::now();
        let (device_name, outcome) = run_one(*case, openers.clone(), options.case_timeout);
        if target.is_none() {
            target = device_name.map(|name| describe_target(B::NAME, &name));
        }
        results.push(CaseResult {
            name: case.name.to_string(),
            area: case.area,
            outcome,
            duration: started.elapsed(),
        });
    }
    Report {
        target: target.unwrap_or_else(|| B::NAME.to_string()),
        results,
    }
}

/// Runs one case on its own thread, so a hang becomes a failure instead of stopping the
/// suite. Returns the device's name (when it opened) and the outcome.
///
/// The case counts as finished only once its thread has closed every device it opened and
/// ended. Otherwise the next case would open a device while the last one is still closing,
/// and after the last case the process would exit while a driver is still tearing one down;
/// NVIDIA's Vulkan driver crashes with SIGSEGV when that happens.
fn run_one<B: Backend>(case: Case<B>, openers: Openers<B>, timeout: Duration) -> (Option<String>, Outcome) {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("case {}", case.name))
        .spawn(move || run_on_device(case, openers, &sender));
    let thread = match spawned {
        Ok(thread) => thread,
        Err(err) => {
            return (
                None,
                Outcome::Failed(format!("could not start a thread for the case: {err}")),
            )
        }
    };
    let (device_name, outcome) = match receiver.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return (
                None,
                Outcome::Failed(format!("did not finish within {timeout:?} (deadlock or hang)")),
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => (
            None,
            Outcome::Failed("the case's thread ended without a result (panic while opening the device?)".into()),
        ),
    };
    let teardown = wait_for_teardown(thread, timeout);
    let outcome = match (outcome, teardown) {
        (outcome, Ok(())) => outcome,
        (Outcome::Failed(message), Err(problem)) => Outcome::Failed(format!("{message}; then {problem}")),
        (Outcome::Passed, Err(problem)) => Outcome::Failed(format!("the case passed, but {problem}")),
        (Outcome::Skipped(reason), Err(problem)) => {
            Outcome::Failed(format!("the case skipped ({reason}), but {problem}"))
        }
    };
    (device_name, outcome)
}

/// The body of a case's thread: opens the device, runs the case, sends the result, then
/// closes the device (on every path, when this function returns).
fn run_on_device<B: Backend>(case: Case<B>, openers: Openers<B>, sender: &mpsc::Sender<(Option<String>, Outcome)>) {
    let device = match (openers.one)() {
        Ok(device) => device,
        Err(err) => {
            let _ = sender.send((None, Outcome::Failed(format!("could not open the device: {err}"))));
            return;
        }
    };
    let device_name = Some(device.info().name.clone());
    let missing = case.needs - device.capabilities();
    if !missing.is_empty() {
        let reason = format!("needs {}, which the device lacks", flag_names(missing));
        let _ = sender.send((device_name, Outcome::Skipped(reason)));
        return;
    }
    let context = Context::new(device, openers);
    let outcome = match catch_unwind(AssertUnwindSafe(|| (case.run)(&context))) {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(Failure::Failed(message))) => Outcome::Failed(message),
        Ok(Err(Failure::Skipped(reason))) if reason.trim().is_empty() => {
            Outcome::Failed("the case skipped itself without giving a reason".to_string())
        }
        Ok(Err(Failure::Skipped(reason))) => Outcome::Skipped(reason),
        Err(payload) => Outcome::Failed(format!("panicked: {}", panic_message(payload.as_ref()))),
    };
    // Closing the device may itself panic or hang in a broken backend; report the case
    // first so its result is not lost.
    let _ = sender.send((device_name, outcome));
}

/// Waits up to `timeout` for a case's thread to end: its devices closed and its
/// thread-locals (the driver's among them) destroyed. A thread still running then is left
/// behind, as a hung case is.
fn wait_for_teardown(thread: std::thread::JoinHandle<()>, timeout: Duration) -> Result<(), String> {
    // `JoinHandle::is_finished` turns true before thread-local destructors run, and no
    // join takes a timeout, so a second thread does the blocking join.
    let (ended, wait) = mpsc::channel();
    std::thread::Builder::new()
        .name("case teardown".to_string())
        .spawn(move || {
            let _ = ended.send(thread.join());
        })
        .map_err(|err| format!("could not start a thread to wait for its device to close: {err}"))?;
    match wait.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(payload)) => Err(format!(
            "closing its device panicked: {}",
            panic_message(payload.as_ref())
        )),
        Err(_) => Err(format!(
            "closing its device did not finish within {timeout:?} (deadlock or hang in teardown)"
        )),
    }
}

/// The report header: the backend and the device, without repeating the backend name
/// when the device's name already starts with it.
fn describe_target(backend: &str, device: &str) -> String {
    if device.starts_with(backend) {
        device.to_string()
    } else {
        format!("{backend} ({device})")
    }
}

/// `A | B` for the named flags in `flags`.
pub(crate) fn flag_names(flags: Capabilities) -> String {
    let names: Vec<&str> = flags.iter_names().map(|(name, _)| name).collect();
    if names.is_empty() {
        format!("{flags:?}")
    } else {
        names.join(" | ")
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(a non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_the_backend_once() {
        assert_eq!(describe_target("mock", "mock (coherent)"), "mock (coherent)");
        assert_eq!(describe_target("cuda", "NVIDIA H100"), "cuda (NVIDIA H100)");
    }

    #[test]
    fn flag_names_lists_each_missing_capability() {
        assert_eq!(
            flag_names(Capabilities::MANAGED | Capabilities::GRAPHS),
            "MANAGED | GRAPHS"
        );
    }

    #[test]
    fn panic_messages_are_recovered_from_both_payload_kinds() {
        let literal = catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "literal");
        let formatted = catch_unwind(|| panic!("value {}", 7)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "value 7");
    }
}
