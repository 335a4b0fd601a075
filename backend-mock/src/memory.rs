//! The mock's native memory under hal's caching pool.

use std::sync::Arc;

use gpuhal_hal::pool::{Allocator, NativeBlock};
use gpuhal_hal::{DeviceId, MemoryKind, Result, SleepReport, StreamId, WakeReport};

use crate::clock::VectorClock;
use crate::event::MockMarker;
use crate::queue::{Action, MockQueue};
use crate::state::DeviceState;

/// Host memory standing in for device memory, with the checker watching every block
/// the pool hands out and takes back.
pub struct MockMemory {
    pub(crate) state: Arc<DeviceState>,
}

impl Allocator for MockMemory {
    type Stream = Arc<MockQueue>;
    type Marker = MockMarker;

    const CHECKS_LIFETIMES: bool = true;

    fn device(&self) -> DeviceId {
        self.state.id
    }

    fn native_size(&self, rounded: u64, kind: MemoryKind) -> u64 {
        match (&self.state.segments, kind) {
            (Some(segments), MemoryKind::Device) => rounded.next_multiple_of(segments.granularity()),
            _ => rounded,
        }
    }

    fn can_sleep(&self) -> bool {
        self.state.segments.is_some()
    }

    fn sleep(&self, keep: &[(u64, u64)]) -> Result<SleepReport> {
        self.state.sleep(keep)
    }

    fn wake(&self) -> Result<WakeReport> {
        self.state.wake()
    }

    fn asleep_bytes(&self) -> u64 {
        self.state.asleep_bytes()
    }

    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&Arc<MockQueue>>) -> Result<NativeBlock> {
        self.state.allocate_native(size, kind, stream.is_none())
    }

    fn free(&self, block: NativeBlock, stream: Option<&Arc<MockQueue>>) -> Result<()> {
        self.state.free_native(&block, stream)
    }

    fn record_marker(&self, stream: &Arc<MockQueue>) -> Result<MockMarker> {
        let pooled = self.state.events.acquire(false)?;
        pooled.slot.reset();
        let mut guard = stream.lock();
        // The marker carries what the stream had done (its uses of the block): the pool
        // hands the memory out again only once the marker is passed, and the race
        // checker must see that order, since the next buffer there inherits those uses.
        let seen = if self.state.check_races {
            self.state.checker.lock().clock(guard.agent())
        } else {
            VectorClock::default()
        };
        pooled.slot.record(&mut guard, seen)?;
        Ok(MockMarker(pooled))
    }

    fn is_marker_complete(&self, marker: &MockMarker) -> Result<bool> {
        let complete = marker.0.slot.is_complete();
        if complete && self.state.check_races {
            // The host saw the other stream pass its last use: whatever it enqueues from
            // now on (the block's next hand-out included) is ordered after that use.
            self.state.host_joins(&marker.0.slot.clock());
        }
        Ok(complete)
    }

    fn wait_marker(&self, stream: &Arc<MockQueue>, marker: &MockMarker) -> Result<()> {
        if let Some(recorded) = marker.0.slot.recorded() {
            let mut guard = stream.lock();
            if self.state.check_races {
                self.state.checker.lock().join(guard.agent(), &marker.0.slot.clock());
            }
            guard.push(Action::WaitFor {
                progress: recorded.progress,
                seq: recorded.seq,
            })?;
        }
        Ok(())
    }

    fn on_handed_out(&self, block: &NativeBlock, len: u64, stream: StreamId) {
        self.state.lifetimes.handed_out(block, len, stream);
    }

    fn on_returned(&self, block: &NativeBlock, stream: StreamId) {
        self.state.lifetimes.returned(block, stream);
    }
}

impl std::fmt::Debug for MockMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockMemory")
            .field("device", &self.state.id)
            .field("used", &self.state.used_bytes())
            .field("capacity", &self.state.capacity)
            .finish()
    }
}
