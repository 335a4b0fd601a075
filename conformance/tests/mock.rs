//! The whole suite on every mock profile, and the runner's handling of cases that
//! panic, skip or need what the device lacks.
#![cfg(feature = "mock")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gpuhal_conformance::hal::Capabilities;
use gpuhal_conformance::{run_cases, run_suite, Area, Case, Failure, Outcome, Report, SuiteOptions};
use gpuhal_mock::{MockBackend, MockConfig, MockDevice, Profile};

fn opener(profile: Profile) -> impl Fn() -> gpuhal_conformance::hal::Result<MockDevice> + Send + Sync + 'static {
    move || {
        MockDevice::open(MockConfig {
            profile,
            ..MockConfig::default()
        })
    }
}

fn check_report(profile: Profile, report: &Report) {
    println!("{}", report.render());
    assert!(
        report.results.len() >= 60,
        "{}: only {} cases ran",
        profile.name(),
        report.results.len()
    );
    assert_eq!(report.failed(), 0, "{}: failures\n{}", profile.name(), report.render());
    for (result, reason) in report.skips() {
        assert!(!reason.trim().is_empty(), "{} skipped without a reason", result.path());
    }
    assert!(
        report.target.contains(profile.name()),
        "the report header {:?} does not name the profile",
        report.target
    );
}

#[test]
fn suite_passes_on_the_discrete_profile() {
    check_report(
        Profile::Discrete,
        &run_suite::<MockBackend, _>(opener(Profile::Discrete), None),
    );
}

#[test]
fn suite_passes_on_the_coherent_profile() {
    check_report(
        Profile::Coherent,
        &run_suite::<MockBackend, _>(opener(Profile::Coherent), None),
    );
}

#[test]
fn suite_passes_on_the_minimal_profile() {
    let report = run_suite::<MockBackend, _>(opener(Profile::Minimal), None);
    check_report(Profile::Minimal, &report);
    // The minimal profile has no graphs: graph cases must be skipped, never passed.
    let graphs = report.tally(Area::Graphs);
    assert_eq!(graphs.passed, 0, "graph cases passed on a device without graphs");
    assert!(graphs.skipped > 0);
    for (result, reason) in report.skips().filter(|(r, _)| r.area == Area::Graphs) {
        assert!(
            reason.contains("GRAPHS"),
            "{}: reason {reason:?} does not name GRAPHS",
            result.path()
        );
    }
}

#[test]
fn filter_selects_by_area_and_name() {
    let report = run_suite::<MockBackend, _>(opener(Profile::Discrete), Some("fences/"));
    assert!(!report.results.is_empty());
    assert!(report.results.iter().all(|r| r.area == Area::Fences));
    let one = run_suite::<MockBackend, _>(opener(Profile::Discrete), Some("zero_size_allocation"));
    assert_eq!(one.results.len(), 1);
}

#[test]
fn case_names_are_unique() {
    let cases = gpuhal_conformance::cases::all::<MockBackend>();
    let mut paths: Vec<String> = cases.iter().map(Case::path).collect();
    paths.sort();
    let before = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), before, "duplicate case paths");
}

fn panics(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    panic!("deliberate panic in a case")
}

fn skips_with_reason(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    Err(Failure::skip("too little free memory"))
}

fn skips_without_reason(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    Err(Failure::skip(" "))
}

fn fails(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    Err(Failure::mismatch("streams", 2, 0))
}

fn hangs(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

#[test]
fn runner_reports_panics_skips_and_missing_capabilities() {
    let all = Capabilities::all();
    let cases = [
        Case::new("panics", Area::Memory, Capabilities::empty(), panics as _),
        Case::new(
            "skips_with_reason",
            Area::Memory,
            Capabilities::empty(),
            skips_with_reason as _,
        ),
        Case::new(
            "skips_without_reason",
            Area::Memory,
            Capabilities::empty(),
            skips_without_reason as _,
        ),
        Case::new("needs_everything", Area::Graphs, all, fails as _),
        Case::new("fails", Area::Events, Capabilities::empty(), fails as _),
        Case::new("hangs", Area::Fences, Capabilities::empty(), hangs as _),
    ];
    let options = SuiteOptions {
        filter: None,
        // Generous: a panic message with a resolved backtrace takes a while under load.
        case_timeout: Duration::from_secs(5),
    };
    let report = run_cases(&cases, opener(Profile::Minimal), &options);
    let outcome = |name: &str| {
        report
            .results
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.outcome.clone())
            .unwrap()
    };
    assert!(matches!(outcome("panics"), Outcome::Failed(m) if m.contains("deliberate panic")));
    assert_eq!(
        outcome("skips_with_reason"),
        Outcome::Skipped("too little free memory".into())
    );
    assert!(matches!(outcome("skips_without_reason"), Outcome::Failed(_)));
    match outcome("needs_everything") {
        Outcome::Skipped(reason) => {
            assert!(reason.contains("MANAGED") && reason.contains("GRAPHS"), "{reason}");
            assert!(
                !reason.contains("TIMELINE_FENCE"),
                "names a flag the device has: {reason}"
            );
        }
        other => panic!("a case needing every capability was {other:?} on the minimal profile"),
    }
    assert!(matches!(outcome("fails"), Outcome::Failed(m) if m == "streams: expected 2, got 0"));
    assert!(matches!(outcome("hangs"), Outcome::Failed(m) if m.contains("did not finish")));
    assert_eq!((report.passed(), report.failed(), report.skipped()), (0, 4, 2));
}

/// Set by [`SlowTeardown`]'s drop, after a pause: proof that the case's thread ended.
static SLOW_TEARDOWN_DONE: AtomicBool = AtomicBool::new(false);

/// Stands for a device whose close takes a while: dropped when the case's thread ends.
struct SlowTeardown(Duration);

impl Drop for SlowTeardown {
    fn drop(&mut self) {
        std::thread::sleep(self.0);
        SLOW_TEARDOWN_DONE.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static TEARDOWN: std::cell::RefCell<Option<SlowTeardown>> = const { std::cell::RefCell::new(None) };
}

fn closes_slowly(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    TEARDOWN.with(|slot| *slot.borrow_mut() = Some(SlowTeardown(Duration::from_millis(300))));
    Ok(())
}

fn never_closes(_: &gpuhal_conformance::Context<MockBackend>) -> Result<(), Failure> {
    TEARDOWN.with(|slot| *slot.borrow_mut() = Some(SlowTeardown(Duration::from_secs(120))));
    Ok(())
}

/// A case ends when its thread has closed everything, not when it reports: otherwise the
/// process may exit (or the next case open a device) while a driver is still closing one.
#[test]
fn runner_waits_for_a_case_to_close_its_device() {
    let cases = [Case::new(
        "closes_slowly",
        Area::Memory,
        Capabilities::empty(),
        closes_slowly as _,
    )];
    let report = run_cases(&cases, opener(Profile::Discrete), &SuiteOptions::default());
    assert_eq!(report.results[0].outcome, Outcome::Passed);
    assert!(
        SLOW_TEARDOWN_DONE.load(Ordering::SeqCst),
        "run_cases returned while the case's thread was still closing"
    );
    assert!(report.results[0].duration >= Duration::from_millis(300));
}

#[test]
fn runner_fails_a_case_whose_teardown_hangs() {
    let cases = [Case::new(
        "never_closes",
        Area::Memory,
        Capabilities::empty(),
        never_closes as _,
    )];
    let options = SuiteOptions {
        filter: None,
        case_timeout: Duration::from_millis(500),
    };
    let report = run_cases(&cases, opener(Profile::Discrete), &options);
    match &report.results[0].outcome {
        Outcome::Failed(message) => assert!(
            message.starts_with("the case passed, but closing its device did not finish"),
            "{message}"
        ),
        other => panic!("a case whose teardown hangs was reported as {other:?}"),
    }
}

fn machine_openers(profile: Profile) -> gpuhal_conformance::Openers<MockBackend> {
    let config = MockConfig {
        profile,
        ..MockConfig::default()
    };
    let shared = MockConfig {
        sharing: true,
        ..config.clone()
    };
    let pair = [config.clone(), config.clone()];
    gpuhal_conformance::Openers::new(move || MockDevice::open(config.clone()))
        .with_sharing(move || MockDevice::open(shared.clone()))
        .with_pair(move || {
            let mut devices = MockDevice::open_machine(&pair)?;
            let second = devices.pop();
            match (devices.pop(), second) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => Err(gpuhal_conformance::hal::Error::invalid(
                    "open_machine",
                    "fewer than two devices",
                )),
            }
        })
}

#[test]
fn multi_device_and_sharing_areas_pass_with_two_mock_devices() {
    let report = gpuhal_conformance::run_suite_on(machine_openers(Profile::Discrete), &SuiteOptions::default());
    println!("{}", report.render());
    assert_eq!(report.failed(), 0, "{}", report.render());
    for area in [Area::MultiDevice, Area::Sharing] {
        let tally = report.tally(area);
        assert!(tally.passed >= 4, "{area}: only {} passed", tally.passed);
        assert_eq!(tally.skipped, 0, "{area}: skipped on the discrete profile");
    }
}

#[test]
fn multi_device_and_sharing_areas_skip_with_the_reason_without_the_devices() {
    let report = run_suite::<MockBackend, _>(opener(Profile::Discrete), Some("multi_device/"));
    assert!(!report.results.is_empty());
    for (result, reason) in report.skips() {
        assert!(reason.contains("two devices"), "{}: {reason}", result.path());
    }
    assert_eq!(report.skips().count(), report.results.len());
    let report = run_suite::<MockBackend, _>(opener(Profile::Discrete), Some("sharing/"));
    assert!(!report.results.is_empty());
    assert_eq!(report.skips().count(), report.results.len());
    for (result, reason) in report.skips() {
        assert!(reason.contains("sharing enabled"), "{}: {reason}", result.path());
    }
}
