//! Runs the gpuhal conformance suite on a backend and prints the report by area.
//!
//! ```text
//! gpuhal-conformance [--backend mock|cuda|vulkan] [--profile discrete|coherent|minimal|all]
//!                    [--segments native|growable] [--ordinal N] [--filter SUBSTRING] [--list]
//!                    [--devices 1|2] [--json PATH]
//!
//! `--devices` (mock only, default 2) is how many mock devices of one machine the
//! `multi device` cases get; with 1 they are skipped, saying so.
//! `--segments growable` opens every device with growable virtual-memory segments, so the
//! whole suite runs over them (mock profiles without the capability are left out).
//!
//! On CUDA the importer side of each `sharing` case runs in a child process: the runner
//! starts itself again with `--sharing-importer ROLE --socket PATH` (an internal mode).
//! ```
//!
//! Exit status: 0 when every selected case passed or was skipped, 1 when any failed, 2 on
//! a usage error.

use std::process::ExitCode;

#[cfg(any(feature = "mock", feature = "cuda", feature = "vulkan"))]
use gpuhal_conformance::Openers;
use gpuhal_conformance::{cases, hal::Backend, Report, SuiteOptions};

const USAGE: &str = "usage: gpuhal-conformance [--backend mock|cuda|vulkan] \
[--profile discrete|coherent|minimal|all] [--segments native|growable] [--ordinal N] [--devices 1|2] \
[--filter SUBSTRING] [--list] [--json PATH]";

#[derive(Debug)]
struct Args {
    backend: String,
    profile: String,
    segments: gpuhal_conformance::hal::SegmentStrategy,
    ordinal: u32,
    devices: u32,
    filter: Option<String>,
    list: bool,
    json: Option<String>,
    /// The importer role to serve, and the exporter's socket (a child process's mode).
    importer: Option<(String, String)>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        backend: "mock".to_string(),
        profile: "all".to_string(),
        segments: gpuhal_conformance::hal::SegmentStrategy::Native,
        ordinal: 0,
        devices: 2,
        filter: None,
        list: false,
        json: None,
        importer: None,
    };
    let mut role: Option<String> = None;
    let mut socket: Option<String> = None;
    let mut profile_given = false;
    let mut devices_given = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--backend" => parsed.backend = value("--backend")?,
            "--profile" => {
                parsed.profile = value("--profile")?;
                profile_given = true;
            }
            "--segments" => {
                let text = value("--segments")?;
                parsed.segments = gpuhal_conformance::hal::SegmentStrategy::parse(&text)
                    .ok_or_else(|| format!("--segments expects native or growable, got {text:?}"))?;
            }
            "--ordinal" => {
                let text = value("--ordinal")?;
                parsed.ordinal = text
                    .parse()
                    .map_err(|_| format!("--ordinal expects a device number, got {text:?}"))?;
            }
            "--devices" => {
                let text = value("--devices")?;
                parsed.devices = match text.as_str() {
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(format!("--devices expects 1 or 2, got {text:?}")),
                };
                devices_given = true;
            }
            "--filter" => parsed.filter = Some(value("--filter")?),
            "--json" => parsed.json = Some(value("--json")?),
            "--list" => parsed.list = true,
            "--sharing-importer" => role = Some(value("--sharing-importer")?),
            "--socket" => socket = Some(value("--socket")?),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if profile_given && parsed.backend != "mock" {
        return Err("--profile applies to the mock backend only".to_string());
    }
    if devices_given && parsed.backend != "mock" {
        return Err("--devices applies to the mock backend only; other backends use the devices they find".to_string());
    }
    parsed.importer = match (role, socket) {
        (Some(role), Some(socket)) => Some((role, socket)),
        (None, None) => None,
        _ => return Err("--sharing-importer and --socket go together".to_string()),
    };
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("gpuhal-conformance: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let options = SuiteOptions {
        filter: args.filter.clone(),
        ..SuiteOptions::default()
    };
    let reports = match args.backend.as_str() {
        "mock" => run_mock(&args, &options),
        "cuda" => run_cuda(&args, &options),
        "vulkan" => run_vulkan(&args, &options),
        other => Err(format!("unknown backend {other:?} (expected mock, cuda or vulkan)")),
    };
    let reports = match reports {
        Ok(Some(reports)) => reports,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("gpuhal-conformance: {message}");
            return ExitCode::from(2);
        }
    };
    for report in &reports {
        println!("{}", report.render());
    }
    if let Some(path) = &args.json {
        let json = serde_json::Value::Array(reports.iter().map(Report::to_json).collect());
        let text = match serde_json::to_string_pretty(&json) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("gpuhal-conformance: could not encode the JSON report: {err}");
                return ExitCode::from(2);
            }
        };
        if let Err(err) = std::fs::write(path, text + "\n") {
            eprintln!("gpuhal-conformance: could not write {path}: {err}");
            return ExitCode::from(2);
        }
    }
    if reports.iter().all(Report::is_success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints every case (filtered) with the capabilities it needs.
#[cfg_attr(not(any(feature = "mock", feature = "cuda", feature = "vulkan")), allow(dead_code))]
fn list<B: Backend>(filter: Option<&str>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for case in cases::all::<B>() {
        let path = case.path();
        if filter.is_some_and(|f| !path.contains(f)) {
            continue;
        }
        let line = if case.needs.is_empty() {
            writeln!(out, "{path}")
        } else {
            let needs: Vec<&str> = case.needs.iter_names().map(|(name, _)| name).collect();
            writeln!(out, "{path}  (needs {})", needs.join(" | "))
        };
        // A closed pipe (`| head`) ends the listing quietly.
        if line.is_err() {
            return;
        }
    }
}

type Outcome = Result<Option<Vec<Report>>, String>;

#[cfg(feature = "mock")]
fn run_mock(args: &Args, options: &SuiteOptions) -> Outcome {
    use gpuhal_mock::{MockBackend, MockConfig, MockDevice, Profile};
    if args.importer.is_some() {
        return Err("the mock's importers run in the exporting process: --sharing-importer is for CUDA".to_string());
    }
    if args.list {
        list::<MockBackend>(options.filter.as_deref());
        return Ok(None);
    }
    let profiles: Vec<Profile> = if args.profile == "all" {
        Profile::ALL.to_vec()
    } else {
        vec![Profile::from_name(&args.profile).ok_or_else(|| {
            format!(
                "unknown profile {:?} (expected discrete, coherent, minimal or all)",
                args.profile
            )
        })?]
    };
    let ordinal = args.ordinal;
    let devices = args.devices;
    let segments = args.segments;
    let pool = gpuhal_conformance::hal::PoolConfig {
        segments,
        ..Default::default()
    };
    let reports = profiles
        .into_iter()
        .filter(|profile| {
            segments == gpuhal_conformance::hal::SegmentStrategy::Native
                || profile
                    .capabilities()
                    .contains(gpuhal_conformance::hal::Capabilities::GROWABLE_SEGMENTS)
        })
        .map(|profile| {
            let config = MockConfig {
                profile,
                ordinal,
                pool,
                ..MockConfig::default()
            };
            let one = config.clone();
            let mut openers = Openers::<MockBackend>::new(move || MockDevice::open(one.clone()));
            if profile
                .capabilities()
                .contains(gpuhal_conformance::hal::Capabilities::IPC)
            {
                let shared = MockConfig {
                    sharing: true,
                    ..config.clone()
                };
                openers = openers.with_sharing(move || MockDevice::open(shared.clone()));
            } else {
                openers = openers.without_sharing(format!("the mock's {profile} profile has no IPC"));
            }
            openers = if devices == 2 {
                let second = MockConfig {
                    ordinal: ordinal + 1,
                    ..config.clone()
                };
                let pair = [config, second];
                openers.with_pair(move || {
                    let mut opened = MockDevice::open_machine(&pair)?.into_iter();
                    match (opened.next(), opened.next()) {
                        (Some(a), Some(b)) => Ok((a, b)),
                        _ => Err(gpuhal_conformance::hal::Error::invalid(
                            "open_machine",
                            "two devices asked, fewer opened",
                        )),
                    }
                })
            } else {
                openers.without_pair("the mock was asked for one device (--devices 1)")
            };
            gpuhal_conformance::run_suite_on::<MockBackend>(openers, options)
        })
        .collect();
    Ok(Some(reports))
}

#[cfg(not(feature = "mock"))]
fn run_mock(_: &Args, _: &SuiteOptions) -> Outcome {
    Err("this build has no mock backend (enable the `mock` feature)".to_string())
}

#[cfg(feature = "cuda")]
fn run_cuda(args: &Args, options: &SuiteOptions) -> Outcome {
    use gpuhal_cuda::{CudaBackend, CudaDevice};
    if args.list {
        list::<CudaBackend>(options.filter.as_deref());
        return Ok(None);
    }
    use gpuhal_conformance::hal::{Device as _, PoolConfig, SegmentStrategy};
    let ordinal = args.ordinal;
    let config = PoolConfig {
        segments: args.segments,
        ..Default::default()
    };
    if let Some((role, socket)) = &args.importer {
        let status = gpuhal_conformance::serve_importer::<CudaBackend>(
            || CudaDevice::open_shared(ordinal, PoolConfig::default()),
            role,
            std::path::Path::new(socket),
        );
        std::process::exit(status);
    }
    let mut openers = Openers::<CudaBackend>::new(move || CudaDevice::open_with(ordinal, config));
    openers = match (CudaDevice::open(ordinal), CudaDevice::open(ordinal + 1)) {
        (Ok(first), Ok(second)) if first.can_access_peer(&second) => openers.with_pair(move || {
            Ok((
                CudaDevice::open_with(ordinal, config)?,
                CudaDevice::open_with(ordinal + 1, config)?,
            ))
        }),
        (Ok(_), Ok(_)) => openers.without_pair(format!("CUDA devices {ordinal} and {} cannot be peers", ordinal + 1)),
        (_, Err(err)) => openers.without_pair(format!(
            "one CUDA device: the multi device cases need a second (device {} could not be opened: {err})",
            ordinal + 1
        )),
        (Err(err), _) => openers.without_pair(format!("CUDA device {ordinal} could not be opened: {err}")),
    };
    openers = if args.segments == SegmentStrategy::Growable {
        openers.without_sharing("memory of growable segments is not exportable (sharing needs native segments)")
    } else {
        match std::env::current_exe() {
            Ok(program) => openers
                .with_sharing(move || CudaDevice::open_shared(ordinal, PoolConfig::default()))
                .with_importer_process(
                    program,
                    vec![
                        "--backend".into(),
                        "cuda".into(),
                        "--ordinal".into(),
                        ordinal.to_string(),
                    ],
                ),
            Err(err) => openers.without_sharing(format!(
                "the runner cannot find its own program to start the importer process: {err}"
            )),
        }
    };
    let report = gpuhal_conformance::run_suite_on::<CudaBackend>(openers, options);
    Ok(Some(vec![report]))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args, _: &SuiteOptions) -> Outcome {
    Err("this build has no CUDA backend (rebuild with `--features cuda`)".to_string())
}

#[cfg(feature = "vulkan")]
fn run_vulkan(args: &Args, options: &SuiteOptions) -> Outcome {
    use gpuhal_vulkan::{VulkanBackend, VulkanDevice};
    if args.list {
        list::<VulkanBackend>(options.filter.as_deref());
        return Ok(None);
    }
    if args.segments != gpuhal_conformance::hal::SegmentStrategy::Native {
        return Err("the Vulkan backend has no growable segments".to_string());
    }
    let ordinal = args.ordinal;
    let openers = Openers::<VulkanBackend>::new(move || VulkanDevice::open(ordinal))
        .without_pair("the Vulkan backend has no peer access or cross-device work yet")
        .without_sharing("the Vulkan backend has no external memory yet");
    let report = gpuhal_conformance::run_suite_on::<VulkanBackend>(openers, options);
    Ok(Some(vec![report]))
}

#[cfg(not(feature = "vulkan"))]
fn run_vulkan(_: &Args, _: &SuiteOptions) -> Outcome {
    Err("this build has no Vulkan backend (rebuild with `--features vulkan`)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_run_every_mock_profile() {
        let args = parse(&[]).unwrap().unwrap();
        assert_eq!((args.backend.as_str(), args.profile.as_str()), ("mock", "all"));
        assert!(!args.list && args.filter.is_none() && args.json.is_none());
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let args = parse(&[
            "--profile",
            "coherent",
            "--filter=fences/",
            "--json",
            "out.json",
            "--list",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.profile, "coherent");
        assert_eq!(args.filter.as_deref(), Some("fences/"));
        assert_eq!(args.json.as_deref(), Some("out.json"));
        assert!(args.list);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--filter"]).is_err());
        assert!(parse(&["--ordinal", "x"]).is_err());
        assert!(parse(&["--backend", "cuda", "--profile", "minimal"]).is_err());
        assert!(parse(&["--devices", "3"]).is_err());
        assert!(parse(&["--backend", "cuda", "--devices", "2"]).is_err());
        assert_eq!(parse(&["--devices=1"]).unwrap().unwrap().devices, 1);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--sharing-importer", "round_trip"]).is_err());
        let child = parse(&[
            "--backend",
            "cuda",
            "--sharing-importer",
            "round_trip",
            "--socket",
            "/s",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(child.importer, Some(("round_trip".to_string(), "/s".to_string())));
    }
}
