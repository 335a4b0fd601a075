//! Timeline fences: a counter that only grows, signalled and awaited by streams and the
//! host. A stream's wait really blocks its worker until the value is reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuhal_hal::{DeviceId, Error, Result};
use parking_lot::{Condvar, Mutex};

use crate::clock::VectorClock;
use crate::state::DeviceState;
use crate::MockBackend;

/// Signals remembered for the race checker; older ones are forgotten past this.
const REMEMBERED_SIGNALS: usize = 4096;

struct FenceValues {
    /// The value reached.
    value: u64,
    /// The highest value signalled or enqueued for signalling.
    highest: u64,
}

/// The shared state of a fence.
pub(crate) struct FenceState {
    values: Mutex<FenceValues>,
    reached: Condvar,
    /// (value, clock of the signaller) of recent signals, in signalling order (race checker).
    signals: Mutex<Vec<(u64, VectorClock)>>,
}

impl FenceState {
    pub(crate) fn new(initial: u64) -> FenceState {
        FenceState {
            values: Mutex::new(FenceValues {
                value: initial,
                highest: initial,
            }),
            reached: Condvar::new(),
            signals: Mutex::new(Vec::new()),
        }
    }

    /// Claims `value` as the next signal: lower than one already claimed is a regression;
    /// the same value again is accepted and changes nothing.
    pub(crate) fn claim(&self, value: u64) -> Result<()> {
        let mut values = self.values.lock();
        if value < values.highest {
            return Err(Error::FenceRegressed {
                requested: value,
                current: values.highest,
            });
        }
        values.highest = value;
        Ok(())
    }

    /// Moves the value up to `value` and wakes waiters.
    pub(crate) fn reach(&self, value: u64) {
        let mut values = self.values.lock();
        if value > values.value {
            values.value = value;
            self.reached.notify_all();
        }
    }

    /// Blocks until the value is at least `value`.
    pub(crate) fn block_until(&self, value: u64) {
        let mut values = self.values.lock();
        while values.value < value {
            self.reached.wait(&mut values);
        }
    }

    fn value(&self) -> u64 {
        self.values.lock().value
    }

    /// Whether the value is already at least `value` (the initial value, say).
    pub(crate) fn has_reached(&self, value: u64) -> bool {
        self.value() >= value
    }

    /// Remembers who signalled `value` (race checker).
    pub(crate) fn note_signal(&self, value: u64, clock: VectorClock) {
        let mut signals = self.signals.lock();
        if signals.len() >= REMEMBERED_SIGNALS {
            signals.drain(..REMEMBERED_SIGNALS / 2);
        }
        signals.push((value, clock));
    }

    /// The clock of the first signal that reached `value`, if it was signalled yet.
    pub(crate) fn signal_clock(&self, value: u64) -> Option<VectorClock> {
        // Signals are noted in claim order, and claims never go down: sorted by value.
        let signals = self.signals.lock();
        let first = signals.partition_point(|(signalled, _)| *signalled < value);
        signals.get(first).map(|(_, clock)| clock.clone())
    }
}

/// A mock timeline fence.
pub struct MockFence {
    pub(crate) fence: Arc<FenceState>,
    state: Arc<DeviceState>,
}

impl MockFence {
    pub(crate) fn new(state: Arc<DeviceState>, initial: u64) -> MockFence {
        MockFence {
            fence: Arc::new(FenceState::new(initial)),
            state,
        }
    }

    /// The device the fence belongs to.
    pub fn device_id(&self) -> DeviceId {
        self.state.id
    }
}

impl gpuhal_hal::Fence<MockBackend> for MockFence {
    fn value(&self) -> Result<u64> {
        Ok(self.fence.value())
    }

    fn signal(&self, value: u64) -> Result<()> {
        self.state.host_signals(&self.fence, value)?;
        self.fence.reach(value);
        Ok(())
    }

    fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        let mut values = self.fence.values.lock();
        while values.value < value {
            let timed_out = match deadline {
                Some(deadline) => self.fence.reached.wait_until(&mut values, deadline).timed_out(),
                None => {
                    self.fence.reached.wait(&mut values);
                    false
                }
            };
            if timed_out && values.value < value {
                return Err(Error::Timeout {
                    operation: "Fence::wait",
                    waited: started.elapsed(),
                    target: value,
                    reached: values.value,
                });
            }
        }
        drop(values);
        if let Some(clock) = self.fence.signal_clock(value) {
            self.state.host_joins(&clock);
        }
        Ok(())
    }
}

impl std::fmt::Debug for MockFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockFence")
            .field("device", &self.state.id)
            .field("value", &self.fence.value())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gpuhal_hal::{Device, Fence, Stream};

    use crate::{MockDevice, Profile};

    /// The fence round trips of the benchmark, many times over: what the race checker
    /// keeps per fence wait must stay bounded, or every later operation slows down.
    #[test]
    fn fence_round_trips_leave_no_pending_waits_behind() {
        let device = MockDevice::with_profile(Profile::Discrete).unwrap();
        let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
        let (f, g) = (device.create_fence(0).unwrap(), device.create_fence(0).unwrap());
        let timeout = Duration::from_secs(10);
        let (mut value, mut value_g) = (0, 0);
        for round in 0..500 {
            value += 1;
            a.signal(&f, value).unwrap();
            f.wait(value, timeout).unwrap();
            // The stream waits before anyone signalled: the signal is unknown at enqueue.
            value += 1;
            value_g += 1;
            b.wait(&f, value).unwrap();
            b.signal(&g, value_g).unwrap();
            if round % 2 == 0 {
                f.signal(value).unwrap();
            } else {
                a.signal(&f, value).unwrap();
            }
            g.wait(value_g, timeout).unwrap();
            let pending = device.state().checker.lock().pending_waits();
            assert!(
                pending <= 2,
                "round {round}: {pending} fence waits still unresolved in the checker's clocks"
            );
        }
        device.synchronize().unwrap();
        assert!(device.state().checker.lock().pending_waits() <= 1);
    }
}
