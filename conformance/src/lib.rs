//! The gpuhal conformance suite: cases generic over any [`Backend`](gpuhal_hal::Backend),
//! and the runner that executes them on a fresh device each and reports the results by
//! area.
//!
//! ```ignore
//! let report = gpuhal_conformance::run_suite::<MockBackend>(|| MockDevice::open(config.clone()), None);
//! println!("{}", report.render());
//! assert_eq!(report.failed(), 0);
//! ```
//!
//! A case declares the capabilities it needs; on a device without them it is reported
//! as skipped with the missing flags named, never as passed.

#![warn(missing_docs)]

mod case;
pub mod cases;
mod importer;
mod report;
mod runner;

pub use case::{Area, Case, Context, Failure, Openers, ResultExt};
pub use importer::{serve_importer, Role};
pub use report::{AreaTally, CaseResult, Outcome, Report};
pub use runner::{run_cases, run_cases_on, run_suite, run_suite_on, run_suite_with, SuiteOptions};

/// Re-exported so that case code and the runner's callers name one `hal`.
pub use gpuhal_hal as hal;
