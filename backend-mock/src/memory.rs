//! The mock's native memory under hal's caching pool.

use std::sync::Arc;

use gpuhal_hal::pool::{NativeBlock, NativeMemory};
use gpuhal_hal::{DeviceId, MemoryKind, Result, StreamId};

use crate::event::MockMarker;
use crate::queue::{Action, MockQueue};
use crate::state::DeviceState;

/// Host memory standing in for device memory, with the checker watching every block
/// the pool hands out and takes back.
pub struct MockMemory {
    pub(crate) state: Arc<DeviceState>,
}

impl NativeMemory for MockMemory {
    type Stream = Arc<MockQueue>;
    type Marker = MockMarker;

    const CHECKS_LIFETIMES: bool = true;

    fn device(&self) -> DeviceId {
        self.state.id
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
        pooled.slot.record(&mut guard, Default::default())?;
        Ok(MockMarker(pooled))
    }

    fn is_marker_complete(&self, marker: &MockMarker) -> Result<bool> {
        Ok(marker.0.slot.is_complete())
    }

    fn wait_marker(&self, stream: &Arc<MockQueue>, marker: &MockMarker) -> Result<()> {
        if let Some(recorded) = marker.0.slot.recorded() {
            stream.push(Action::WaitFor {
                progress: recorded.progress,
                seq: recorded.seq,
            })?;
        }
        Ok(())
    }

    fn on_handed_out(&self, block: &NativeBlock, len: u64, _stream: StreamId) {
        self.state.lifetimes.handed_out(block, len);
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
