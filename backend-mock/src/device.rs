//! The mock device: opening one, and the hal `Device` implementation.

use std::sync::Arc;

use gpuhal_hal::{
    check_device, Advice, AsRegion, Buffer, CachingAllocator, Capabilities, DeviceInfo, Error, EventStats, HostImport,
    ImportPolicy, ImportStats, Location, ManagedPolicy, ManagedRangeInfo, Result, SegmentStrategy, SharedEvent,
    SharedImport, SharedMemory, StreamId,
};

use crate::segments::MappingStats;

use crate::checker::HOST;
use crate::config::MockConfig;
use crate::event::MockEvent;
use crate::fence::MockFence;
use crate::machine::Machine;
use crate::memory::MockMemory;
use crate::profile::Profile;
use crate::queue::MockQueue;
use crate::state::DeviceState;
use crate::stream::MockStream;
use crate::MockBackend;

/// A mock device: host memory with a GPU's semantics.
///
/// ```
/// use gpuhal_hal::{Device, MemoryKind, Stream};
/// use gpuhal_mock::{MockDevice, Profile};
///
/// let device = MockDevice::with_profile(Profile::Discrete)?;
/// let stream = device.create_stream()?;
/// let buffer = device.allocate(1024, MemoryKind::Device, &stream)?;
/// stream.fill(&buffer, 0, 1024, 7)?;
/// let mut host = [0u8; 4];
/// stream.read(&buffer, 1020, &mut host)?;
/// assert_eq!(host, [7; 4]);
/// # Ok::<(), gpuhal_hal::Error>(())
/// ```
pub struct MockDevice {
    state: Arc<DeviceState>,
    allocator: CachingAllocator<MockMemory>,
    info: DeviceInfo,
}

impl MockDevice {
    /// Opens a mock device configured by `config`, alone on its mock machine.
    pub fn open(config: MockConfig) -> Result<MockDevice> {
        let machine = Arc::new(Machine::new(config.check_races));
        Self::open_on(config, machine, false)
    }

    /// Opens several mock devices together, as the GPUs of one machine in one process:
    /// they can be given access to each other's memory
    /// ([`enable_peer_access`](gpuhal_hal::Device::enable_peer_access); every profile but
    /// `minimal` can), import each other's exports, and wait on each other's events. One
    /// checker watches them all, so an unsynchronised use of a buffer by streams of two
    /// devices is a [`Error::Race`] as it is for two streams of one device. Races are
    /// checked if the first configuration asks for it.
    ///
    /// ```
    /// use gpuhal_hal::{Device, Error, MemoryKind, Stream};
    /// use gpuhal_mock::{MockConfig, MockDevice};
    ///
    /// let devices = MockDevice::open_machine(&[MockConfig::default(), MockConfig { ordinal: 1, ..Default::default() }])?;
    /// let (a, b) = (&devices[0], &devices[1]);
    /// let (on_a, on_b) = (a.create_stream()?, b.create_stream()?);
    /// let source = b.allocate(256, MemoryKind::Device, &on_b)?;
    /// let target = a.allocate(256, MemoryKind::Device, &on_a)?;
    /// on_b.fill(&source, 0, 256, 3)?;
    /// on_b.synchronize()?;
    /// assert!(matches!(on_a.copy(&source, 0, &target, 0, 256), Err(Error::PeerAccess { .. })));
    /// a.enable_peer_access(b)?;
    /// on_a.copy(&source, 0, &target, 0, 256)?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn open_machine(configs: &[MockConfig]) -> Result<Vec<MockDevice>> {
        let check_races = configs.first().is_none_or(|config| config.check_races);
        let machine = Arc::new(Machine::new(check_races));
        let with_peers = configs.iter().filter(|config| config.profile.can_be_peer()).count() >= 2;
        configs
            .iter()
            .map(|config| Self::open_on(config.clone(), machine.clone(), with_peers))
            .collect()
    }

    fn open_on(config: MockConfig, machine: Arc<Machine>, with_peers: bool) -> Result<MockDevice> {
        if config.pool.segments == SegmentStrategy::Growable
            && !config.profile.capabilities().contains(Capabilities::GROWABLE_SEGMENTS)
        {
            return Err(Error::Unsupported {
                operation: "open with growable segments",
                needed: Capabilities::GROWABLE_SEGMENTS,
            });
        }
        if config.sharing && !config.profile.capabilities().contains(Capabilities::IPC) {
            return Err(Error::Unsupported {
                operation: "open with sharing enabled",
                needed: Capabilities::IPC,
            });
        }
        let state = Arc::new(DeviceState::new(&config, machine.clone(), with_peers));
        machine.join(state.id, config.profile.can_be_peer());
        let allocator = CachingAllocator::with_config(MockMemory { state: state.clone() }, config.pool);
        let info = DeviceInfo {
            id: state.id,
            backend: "mock",
            ordinal: config.ordinal,
            name: format!("mock ({})", config.profile.name()),
            total_memory: config.capacity,
        };
        Ok(MockDevice { state, allocator, info })
    }

    /// Opens a mock device of `profile` with the default configuration.
    pub fn with_profile(profile: Profile) -> Result<MockDevice> {
        Self::open(MockConfig {
            profile,
            ..MockConfig::default()
        })
    }

    /// The profile the device imitates.
    pub fn profile(&self) -> Profile {
        self.state.profile
    }

    /// Makes the `nth` native allocation from now fail (1 = the next one) with
    /// [`Error::Injected`].
    pub fn inject_native_failure(&self, nth: u64) {
        self.state.inject_failure(nth);
    }

    /// What growable segments have mapped, when the device was opened with them.
    pub fn mapping_stats(&self) -> Option<MappingStats> {
        self.state.segments.as_ref().map(|s| s.stats())
    }

    /// Native allocation calls made so far, failed ones included.
    pub fn native_allocation_calls(&self) -> u64 {
        self.state.native_allocation_calls()
    }

    /// Native bytes of device (and managed) memory allocated now.
    pub fn native_bytes_in_use(&self) -> u64 {
        self.state.used_bytes()
    }

    /// Where a coherent host import was prefetched to (`None` if it was not, or if
    /// `import` is not a live coherent or registered import of this device).
    pub fn import_prefetch(&self, import: &dyn AsRegion) -> Option<Location> {
        let region = import.region();
        self.state.checker.lock().import(region.native)?.prefetched
    }

    pub(crate) fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }
}

impl gpuhal_hal::Device<MockBackend> for MockDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn capabilities(&self) -> Capabilities {
        self.state.capabilities
    }

    fn allocator(&self) -> &CachingAllocator<MockMemory> {
        &self.allocator
    }

    fn create_stream(&self) -> Result<MockStream> {
        let id = StreamId::fresh();
        let agent = self.state.checker.lock().add_agent();
        let queue = MockQueue::start(id, agent, self.state.stream_delay)?;
        self.state.register_stream(&queue);
        let cache = self.allocator.stream_cache(queue.clone(), id);
        Ok(MockStream::new(queue, self.state.clone(), cache))
    }

    fn event(&self, timing: bool) -> Result<MockEvent> {
        if timing && !self.state.capabilities.contains(Capabilities::TIMING_EVENTS) {
            return Err(Error::Unsupported {
                operation: "event",
                needed: Capabilities::TIMING_EVENTS,
            });
        }
        let pooled = self.state.events.acquire(timing)?;
        Ok(MockEvent::new(pooled, self.state.clone()))
    }

    fn event_stats(&self) -> EventStats {
        self.state.events.stats()
    }

    fn create_fence(&self, initial: u64) -> Result<MockFence> {
        if !self.state.capabilities.contains(Capabilities::TIMELINE_FENCE) {
            return Err(Error::Unsupported {
                operation: "create_fence",
                needed: Capabilities::TIMELINE_FENCE,
            });
        }
        Ok(MockFence::new(self.state.clone(), initial))
    }

    fn managed_policy(&self) -> ManagedPolicy {
        *self.state.managed_policy.lock()
    }

    fn set_managed_policy(&self, policy: ManagedPolicy) {
        *self.state.managed_policy.lock() = policy;
    }

    fn advise(&self, region: &dyn AsRegion, advice: Advice) -> Result<()> {
        self.state.advise(region, advice)
    }

    fn prefetch(&self, region: &dyn AsRegion, to: Location, stream: &MockStream) -> Result<()> {
        self.state.prefetch(region, to, stream)
    }

    fn managed_range_info(&self, region: &dyn AsRegion) -> Result<ManagedRangeInfo> {
        self.state.managed_range_info(region)
    }

    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &MockStream) -> Result<HostImport<'a>> {
        check_device("import_host", "stream", self.state.id, stream.device())?;
        crate::import::import_host(self, host, policy, stream)
    }

    fn import_stats(&self) -> ImportStats {
        self.state.import_stats.lock().clone()
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        let capacity = self.state.capacity;
        Ok((capacity.saturating_sub(self.state.used_bytes()), capacity))
    }

    fn can_access_peer(&self, peer: &MockDevice) -> bool {
        self.state.machine.can_be_peers(self.state.id, peer.state.id)
    }

    fn enable_peer_access(&self, peer: &MockDevice) -> Result<()> {
        if !self.state.capabilities.contains(Capabilities::PEER_ACCESS) {
            return Err(Error::Unsupported {
                operation: "enable_peer_access",
                needed: Capabilities::PEER_ACCESS,
            });
        }
        self.state.machine.enable_peer_access(self.state.id, peer.state.id)
    }

    fn export(&self, buffer: &Buffer<MockBackend>) -> Result<SharedMemory> {
        crate::sharing::export(&self.state, buffer)
    }

    fn import_shared(&self, handle: &SharedMemory) -> Result<SharedImport> {
        crate::sharing::import(&self.state, handle)
    }

    fn shared_event(&self) -> Result<(MockEvent, SharedEvent)> {
        crate::sharing::shared_event(&self.state)
    }

    fn import_event(&self, handle: &SharedEvent) -> Result<MockEvent> {
        crate::sharing::import_event(&self.state, handle)
    }

    fn synchronize(&self) -> Result<()> {
        for queue in self.state.live_queues() {
            let seen = self.state.checker.lock().clock(queue.agent);
            queue.drain();
            self.state.checker.lock().join(HOST, &seen);
        }
        Ok(())
    }
}

impl std::fmt::Debug for MockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDevice")
            .field("id", &self.state.id)
            .field("profile", &self.state.profile)
            .field("capacity", &self.state.capacity)
            .finish()
    }
}
