//! The mock backend: gpuhal over host memory. It has no native calls to compare with, so
//! every native row says so.

use anyhow::{Context as _, Result};
use gpuhal_mock::{MockBackend, MockConfig, MockDevice, Profile};

use crate::harness::Settings;
use crate::report::Report;
use crate::suite::{native_rows_missing, SuiteOptions};
use crate::Baselines;

/// Sizes for the mock: host memcpy stands in for device copies, so a 1 GiB copy would
/// measure only this machine's RAM, slowly.
pub const OPTIONS: SuiteOptions = SuiteOptions {
    device_copy_bytes: 64 << 20,
    handoff_consumer_bytes: 1 << 20,
    managed_copy_bytes: 32 << 20,
};

/// Opens a mock device imitating `profile`. The race checker (vector clocks on every
/// operation) is off unless `check_races`: it is a debugging aid whose cost would swamp
/// what is measured, and with it on the suite measures that cost instead.
pub fn open(profile: Profile, check_races: bool) -> Result<MockDevice> {
    MockDevice::open(MockConfig {
        profile,
        check_races,
        ..Default::default()
    })
    .with_context(|| format!("opening a mock device ({profile:?})"))
}

/// The mock's baselines: none.
pub struct NoBaselines;

impl Baselines<MockBackend> for NoBaselines {
    fn run(
        &self,
        _device: &MockDevice,
        _settings: &Settings,
        options: &SuiteOptions,
        report: &mut Report,
    ) -> Result<()> {
        native_rows_missing(report, options);
        Ok(())
    }
}
