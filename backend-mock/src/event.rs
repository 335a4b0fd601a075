//! Events: pooled markers in a stream's work, with host timestamps for timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuhal_hal::event_pool::{NativeEvents, PooledEvent};
use gpuhal_hal::{check_device, Capabilities, DeviceId, Error, Result};
use parking_lot::Mutex;

use crate::clock::VectorClock;
use crate::queue::{Action, Progress, SubmitGuard};
use crate::state::DeviceState;
use crate::stream::MockStream;
use crate::MockBackend;

/// Where the last recording of an event sits in a stream's work.
#[derive(Clone)]
pub(crate) struct Recorded {
    pub(crate) progress: Arc<Progress>,
    pub(crate) seq: u64,
}

impl Recorded {
    pub(crate) fn is_complete(&self) -> bool {
        self.progress.reached(self.seq)
    }
}

#[derive(Default)]
struct SlotState {
    /// Bumped by every recording, so a stale marker action cannot stamp a newer one.
    generation: u64,
    recorded: Option<Recorded>,
    reached_at: Option<Instant>,
    /// The recording stream's vector clock at the recording (race checker).
    clock: VectorClock,
}

/// The native state of a mock event.
#[derive(Default)]
pub(crate) struct EventSlot {
    state: Mutex<SlotState>,
}

impl EventSlot {
    /// Forgets any recording: a fresh event from the pool is complete and unrecorded.
    pub(crate) fn reset(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.recorded = None;
        state.reached_at = None;
        state.clock = VectorClock::default();
    }

    /// Records the event at the end of the work submitted through `guard`, remembering
    /// `clock` as what the recording stream had seen.
    pub(crate) fn record(self: &Arc<Self>, guard: &mut SubmitGuard<'_>, clock: VectorClock) -> Result<()> {
        let mut state = self.state.lock();
        let generation = state.generation + 1;
        let seq = guard.push(Action::Record {
            slot: self.clone(),
            generation,
        })?;
        state.generation = generation;
        state.reached_at = None;
        state.clock = clock;
        state.recorded = Some(Recorded {
            progress: guard.progress().clone(),
            seq,
        });
        Ok(())
    }

    /// Stamps the time a recording was reached (by the stream worker).
    pub(crate) fn reach(&self, generation: u64, at: Instant) {
        let mut state = self.state.lock();
        if state.generation == generation {
            state.reached_at = Some(at);
        }
    }

    /// The last recording, if any.
    pub(crate) fn recorded(&self) -> Option<Recorded> {
        self.state.lock().recorded.clone()
    }

    /// The recording stream's clock at the last recording.
    pub(crate) fn clock(&self) -> VectorClock {
        self.state.lock().clock.clone()
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.recorded().is_none_or(|recorded| recorded.is_complete())
    }

    pub(crate) fn wait(&self) {
        if let Some(recorded) = self.recorded() {
            recorded.progress.wait_for(recorded.seq);
        }
    }

    fn reached_at(&self) -> Option<Instant> {
        self.state.lock().reached_at
    }
}

/// Creates native mock events for the device's [`EventPool`](gpuhal_hal::event_pool::EventPool).
#[derive(Debug, Default)]
pub struct MockEvents;

/// A native mock event (what the pool keeps and reuses).
pub struct MockNativeEvent {
    pub(crate) slot: Arc<EventSlot>,
}

impl NativeEvents for MockEvents {
    type Event = MockNativeEvent;

    fn create(&self, _timing: bool) -> Result<MockNativeEvent> {
        Ok(MockNativeEvent {
            slot: Arc::new(EventSlot::default()),
        })
    }

    fn destroy(&self, _event: MockNativeEvent) {}
}

/// A point in a stream's work the caching pool waits for before reusing a block.
pub struct MockMarker(pub(crate) PooledEvent<MockEvents>);

/// A mock event, on loan from its device's pool, or an interprocess event (made by
/// [`shared_event`](gpuhal_hal::Device::shared_event) or imported), which is not pooled.
pub struct MockEvent {
    slot: Arc<EventSlot>,
    /// The pool's loan; `None` for an interprocess event.
    pooled: Option<PooledEvent<MockEvents>>,
    state: Arc<DeviceState>,
}

impl MockEvent {
    pub(crate) fn new(pooled: PooledEvent<MockEvents>, state: Arc<DeviceState>) -> MockEvent {
        pooled.slot.reset();
        MockEvent {
            slot: pooled.slot.clone(),
            pooled: Some(pooled),
            state,
        }
    }

    /// An interprocess event of `state`'s device over `slot` (shared with the other side).
    pub(crate) fn shared(slot: Arc<EventSlot>, state: Arc<DeviceState>) -> MockEvent {
        MockEvent {
            slot,
            pooled: None,
            state,
        }
    }

    pub(crate) fn slot(&self) -> &Arc<EventSlot> {
        &self.slot
    }

    /// The device the event belongs to.
    pub fn device_id(&self) -> DeviceId {
        self.state.id
    }
}

impl gpuhal_hal::Event<MockBackend> for MockEvent {
    fn record(&self, stream: &MockStream) -> Result<()> {
        check_device("Event::record", "stream", self.state.id, stream.device())?;
        stream.record_event(self.slot())
    }

    fn synchronize(&self) -> Result<()> {
        self.slot().wait();
        self.state.host_joins(&self.slot().clock());
        Ok(())
    }

    fn is_complete(&self) -> Result<bool> {
        let complete = self.slot().is_complete();
        if complete {
            self.state.host_joins(&self.slot().clock());
        }
        Ok(complete)
    }

    fn elapsed(&self, end: &Self) -> Result<Duration> {
        if !self.state.capabilities.contains(Capabilities::TIMING_EVENTS) {
            return Err(Error::Unsupported {
                operation: "Event::elapsed",
                needed: Capabilities::TIMING_EVENTS,
            });
        }
        check_device("Event::elapsed", "end event", self.state.id, end.state.id)?;
        if !self.has_timing() || !end.has_timing() {
            return Err(Error::invalid(
                "Event::elapsed",
                "both events must be created with timing enabled (Device::event(true))",
            ));
        }
        let stamp = |event: &MockEvent, which: &str| -> Result<Instant> {
            let recorded = event
                .slot()
                .recorded()
                .ok_or_else(|| Error::invalid("Event::elapsed", format!("the {which} event was never recorded")))?;
            if !recorded.is_complete() {
                return Err(Error::invalid(
                    "Event::elapsed",
                    format!("the {which} event has not completed yet; synchronize it first"),
                ));
            }
            event
                .slot()
                .reached_at()
                .ok_or_else(|| Error::invalid("Event::elapsed", format!("the {which} event was re-recorded meanwhile")))
        };
        let start = stamp(self, "start")?;
        let finish = stamp(end, "end")?;
        finish.checked_duration_since(start).ok_or_else(|| {
            Error::invalid(
                "Event::elapsed",
                "the end event completed before the start event; pass the earlier event as self",
            )
        })
    }

    fn has_timing(&self) -> bool {
        self.pooled.as_ref().is_some_and(PooledEvent::has_timing)
    }
}

impl std::fmt::Debug for MockEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockEvent")
            .field("device", &self.state.id)
            .field("timing", &gpuhal_hal::Event::has_timing(self))
            .field("complete", &self.slot().is_complete())
            .finish()
    }
}
