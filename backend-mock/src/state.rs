//! What a mock device shares between its handles: memory accounting, fault injection,
//! the checker, the event pool, policies and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use gpuhal_hal::event_pool::EventPool;
use gpuhal_hal::pool::NativeBlock;
use gpuhal_hal::{
    Capabilities, DeviceId, Error, ImportStats, ManagedPolicy, MemoryKind, NativeError, Result, SegmentStrategy,
};
use parking_lot::Mutex;

use crate::checker::{Checker, HOST};
use crate::clock::VectorClock;
use crate::config::MockConfig;
use crate::event::MockEvents;
use crate::fence::FenceState;
use crate::lifetimes::Lifetimes;
use crate::profile::Profile;
use crate::queue::{Action, MockQueue};
use crate::raw::NativeAllocation;
use crate::segments::MockSegments;

/// The symbolic name of the mock's out-of-memory native error.
pub const OUT_OF_MEMORY: &str = "MOCK_ERROR_OUT_OF_MEMORY";

pub(crate) struct DeviceState {
    pub(crate) id: DeviceId,
    pub(crate) profile: Profile,
    pub(crate) capabilities: Capabilities,
    pub(crate) capacity: u64,
    pub(crate) stream_delay: Option<Duration>,
    /// Native bytes of device and managed memory held (pinned host memory is not device memory).
    used: AtomicU64,
    native_allocations: AtomicU64,
    /// The native allocation call number (1-based, since open) that fails.
    fail_at: Mutex<Option<u64>>,
    /// The machine's checker (shared by the devices opened together).
    pub(crate) checker: Arc<Mutex<Checker>>,
    /// What the devices opened together share.
    pub(crate) machine: Arc<crate::machine::Machine>,
    /// Device allocations come from an exportable pool.
    pub(crate) sharing: bool,
    /// Whether the checker compares accesses (the lifetime checks are always on).
    pub(crate) check_races: bool,
    /// Live native allocations and hand-outs, sharded (the checker reads them too).
    pub(crate) lifetimes: Arc<Lifetimes>,
    pub(crate) events: EventPool<MockEvents>,
    pub(crate) managed_policy: Mutex<ManagedPolicy>,
    pub(crate) import_stats: Mutex<ImportStats>,
    streams: Mutex<Vec<Weak<MockQueue>>>,
    /// Set when the device was opened with growable segments.
    pub(crate) segments: Option<Arc<MockSegments>>,
}

impl DeviceState {
    /// A device of `machine`; `with_peers` when the machine has another device it can
    /// be a peer of.
    pub(crate) fn new(config: &MockConfig, machine: Arc<crate::machine::Machine>, with_peers: bool) -> DeviceState {
        let lifetimes = machine.lifetimes.clone();
        let mut capabilities = config.profile.capabilities();
        if with_peers && config.profile.can_be_peer() {
            capabilities |= Capabilities::PEER_ACCESS;
        }
        DeviceState {
            id: DeviceId::fresh(),
            profile: config.profile,
            capabilities,
            capacity: config.capacity,
            stream_delay: config.stream_delay,
            used: AtomicU64::new(0),
            native_allocations: AtomicU64::new(0),
            fail_at: Mutex::new(config.fail_native_allocation),
            checker: machine.checker.clone(),
            machine,
            sharing: config.sharing,
            check_races: config.check_races,
            lifetimes,
            events: EventPool::new(MockEvents),
            managed_policy: Mutex::new(ManagedPolicy::default()),
            import_stats: Mutex::new(ImportStats::default()),
            streams: Mutex::new(Vec::new()),
            segments: (config.pool.segments == SegmentStrategy::Growable)
                .then(|| Arc::new(MockSegments::new(config.mapping_granularity))),
        }
    }

    /// Sleep gave `size` bytes of device memory back (or wake took them again).
    pub(crate) fn note_sleep(&self, size: u64, asleep: bool) {
        if asleep {
            self.used.fetch_sub(size, Ordering::Relaxed);
        } else {
            self.used.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Native bytes of device memory in use.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Makes the `nth` native allocation from now (1 = the next one) fail.
    pub(crate) fn inject_failure(&self, nth: u64) {
        let made = self.native_allocations.load(Ordering::Relaxed);
        *self.fail_at.lock() = Some(made + nth.max(1));
    }

    fn out_of_memory(&self, call: &'static str, context: String) -> Error {
        Error::native(
            context,
            NativeError {
                call,
                code: 2,
                name: OUT_OF_MEMORY.into(),
            },
        )
    }

    /// A native allocation of `size` bytes of `kind`. `graph_segment` marks memory made
    /// for a graph pool.
    pub(crate) fn allocate_native(&self, size: u64, kind: MemoryKind, graph_segment: bool) -> Result<NativeBlock> {
        let needed = kind.required_capability();
        if !self.capabilities.contains(needed) {
            return Err(Error::Unsupported {
                operation: "native allocate",
                needed,
            });
        }
        if size == 0 {
            return Err(Error::invalid("native allocate", "zero-size native allocation"));
        }
        let segments = self
            .segments
            .as_ref()
            .filter(|_| kind == MemoryKind::Device && !graph_segment);
        if let Some(segments) = segments {
            // Checked before anything is counted: a request the driver would refuse.
            segments.check(size)?;
        }
        let call = self.native_allocations.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut fail_at = self.fail_at.lock();
            if *fail_at == Some(call) {
                *fail_at = None;
                return Err(Error::Injected(format!(
                    "native allocation #{call} ({size} bytes of {kind:?} memory) failed as configured"
                )));
            }
        }
        let policy = *self.managed_policy.lock();
        let counted = kind != MemoryKind::HostPinned;
        if counted {
            let oversubscribe = kind == MemoryKind::Managed && policy.allow_oversubscription;
            self.reserve(size, kind, oversubscribe)?;
        }
        // Native ids are unique in the process: devices of one machine share lifetimes.
        static NEXT_NATIVE_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_NATIVE_ID.fetch_add(1, Ordering::Relaxed);
        let Some(mut allocation) = NativeAllocation::new(id, self.id, size, kind, graph_segment) else {
            if counted {
                self.used.fetch_sub(size, Ordering::Relaxed);
            }
            return Err(self.out_of_memory(
                "mock allocate",
                format!("the host could not provide {size} bytes for the mock device"),
            ));
        };
        allocation.exportable = self.sharing && kind == MemoryKind::Device && !graph_segment;
        if let Some(segments) = segments {
            segments.map(size);
            allocation.mapping = Some(segments.clone());
        }
        if kind == MemoryKind::Managed {
            let mut managed = allocation.managed.lock();
            if self.capabilities.contains(Capabilities::MANAGED_ADVICE) {
                managed.advice = policy.advice;
            }
            if policy.should_prefetch(size) {
                managed.last_prefetch = Some(gpuhal_hal::Location::Device);
            }
        }
        let block = NativeBlock {
            address: allocation.address(),
            size,
            kind,
            native: id,
            native_offset: 0,
        };
        self.lifetimes.native_allocated(Arc::new(allocation));
        Ok(block)
    }

    /// Counts `size` bytes against the capacity, or says why they do not fit.
    fn reserve(&self, size: u64, kind: MemoryKind, oversubscribe: bool) -> Result<()> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let free = self.capacity.saturating_sub(used);
            if size > free && !oversubscribe {
                let context = if kind == MemoryKind::Managed {
                    format!(
                        "managed allocation of {size} bytes exceeds the {free} bytes of free device memory, \
                         and the managed policy does not allow oversubscription"
                    )
                } else {
                    format!(
                        "allocating {size} bytes of {kind:?} memory with {free} of {} bytes free",
                        self.capacity
                    )
                };
                return Err(self.out_of_memory("mock allocate", context));
            }
            match self
                .used
                .compare_exchange_weak(used, used.saturating_add(size), Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Frees a native block, ordered on `stream` when given: the memory goes once the
    /// stream has run everything enqueued before the free.
    pub(crate) fn free_native(&self, block: &NativeBlock, stream: Option<&Arc<MockQueue>>) -> Result<()> {
        let allocation = self.lifetimes.native_freed(block)?;
        // A sleeping block holds no device memory (sleep gave it back).
        if allocation.kind != MemoryKind::HostPinned && allocation.asleep.lock().is_none() {
            self.used.fetch_sub(allocation.size, Ordering::Relaxed);
        }
        if let Some(queue) = stream {
            // If the worker is gone nothing can still use the memory: dropping it here is the free.
            let _ = queue.push(Action::Free {
                _allocation: allocation,
            });
        }
        Ok(())
    }

    /// Native allocation calls made so far (failed ones included).
    pub(crate) fn native_allocation_calls(&self) -> u64 {
        self.native_allocations.load(Ordering::Relaxed)
    }

    pub(crate) fn register_stream(&self, queue: &Arc<MockQueue>) {
        let mut streams = self.streams.lock();
        streams.retain(|q| q.strong_count() > 0);
        streams.push(Arc::downgrade(queue));
    }

    pub(crate) fn live_queues(&self) -> Vec<Arc<MockQueue>> {
        self.streams.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// The host has now seen everything `seen` covers (it waited for it).
    pub(crate) fn host_joins(&self, seen: &VectorClock) {
        self.checker.lock().join(HOST, seen);
    }

    /// A signal of `fence` to `value` from the host: checks regression and remembers the
    /// host's clock for stream waits.
    pub(crate) fn host_signals(&self, fence: &FenceState, value: u64) -> Result<()> {
        let checker = self.checker.lock();
        fence.claim(value)?;
        fence.note_signal(value, checker.clock(HOST));
        Ok(())
    }
}
