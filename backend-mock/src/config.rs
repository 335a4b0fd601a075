//! How a mock device is opened: its profile, size and injected faults.

use std::time::Duration;

use gpuhal_hal::PoolConfig;

use crate::profile::Profile;

/// Configuration of a [`MockDevice`](crate::MockDevice).
///
/// ```
/// use gpuhal_mock::{MockConfig, MockDevice, Profile};
/// let device = MockDevice::open(MockConfig { profile: Profile::Coherent, ..Default::default() }).unwrap();
/// # drop(device);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// The machine the device imitates.
    pub profile: Profile,
    /// Total device memory in bytes. Native allocations of device (and managed) memory
    /// beyond it fail as out of memory. Pages are committed lazily, so a large capacity
    /// costs nothing until written.
    pub capacity: u64,
    /// Fail the Nth native allocation (1-based) with [`Error::Injected`](gpuhal_hal::Error::Injected).
    pub fail_native_allocation: Option<u64>,
    /// Slow streams: every operation sleeps this long before it runs.
    pub stream_delay: Option<Duration>,
    /// Ordinal reported in [`DeviceInfo`](gpuhal_hal::DeviceInfo).
    pub ordinal: u32,
    /// Configuration of the caching allocator.
    pub pool: PoolConfig,
    /// Check for unsynchronised cross-stream use of buffers (vector clocks on every
    /// operation). Use-after-free, double-free and foreign-handle checks always run,
    /// since they keep the mock itself memory-safe.
    pub check_races: bool,
    /// The granularity growable segments map device memory in, when `pool.segments` is
    /// [`SegmentStrategy::Growable`](gpuhal_hal::SegmentStrategy::Growable) (2 MiB, as on
    /// CUDA devices).
    pub mapping_granularity: u64,
    /// Serve device allocations from an exportable pool, so buffers can be exported
    /// ([`Device::export`](gpuhal_hal::Device::export)).
    pub sharing: bool,
}

impl MockConfig {
    /// The default capacity: 16 GiB.
    pub const DEFAULT_CAPACITY: u64 = 16 << 30;
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            profile: Profile::default(),
            capacity: Self::DEFAULT_CAPACITY,
            fail_native_allocation: None,
            stream_delay: None,
            ordinal: 0,
            pool: PoolConfig::default(),
            check_races: true,
            mapping_granularity: 2 << 20,
            sharing: false,
        }
    }
}
