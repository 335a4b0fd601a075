//! Fences: timeline semaphores (Vulkan 1.2 core) that streams and the CPU signal and
//! wait on.

use std::sync::Arc;
use std::time::Duration;

use gpuhal_hal::{DeviceId, Error, Result};
use parking_lot::Mutex;

use crate::device::DeviceShared;
use crate::queue::{pump, StreamNative, Timeline, Work};
use crate::VulkanBackend;

/// A timeline fence.
///
/// Every signal, from a stream or the CPU, is ordered after the previous highest one
/// (a signal submission waits for the previous value first), so the semaphore never
/// moves backwards on the device and Vulkan's rule that a signal must exceed every
/// pending one holds.
pub struct VulkanFence {
    shared: Arc<DeviceShared>,
    timeline: Arc<Timeline>,
    /// Queue for CPU signals that must wait behind pending stream signals.
    host_signals: Arc<StreamNative>,
    /// Highest value signalled or enqueued.
    highest: Mutex<u64>,
}

impl std::fmt::Debug for VulkanFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanFence")
            .field("highest", &*self.highest.lock())
            .finish()
    }
}

impl VulkanFence {
    pub(crate) fn new(
        shared: &Arc<DeviceShared>,
        host_signals: Arc<StreamNative>,
        initial: u64,
    ) -> Result<VulkanFence> {
        Ok(VulkanFence {
            shared: shared.clone(),
            timeline: Timeline::new(shared, Some(initial))?,
            host_signals,
            highest: Mutex::new(initial),
        })
    }

    pub(crate) fn device(&self) -> DeviceId {
        self.shared.id
    }

    pub(crate) fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    /// The raw timeline semaphore, for frameworks that submit their own work.
    pub fn raw_semaphore(&self) -> ash::vk::Semaphore {
        self.timeline.semaphore
    }

    /// Checks `value` against the highest one; `Ok(None)` when it changes nothing.
    fn advance(highest: &u64, value: u64) -> Result<Option<u64>> {
        match value.cmp(highest) {
            std::cmp::Ordering::Less => Err(Error::FenceRegressed {
                requested: value,
                current: *highest,
            }),
            std::cmp::Ordering::Equal => Ok(None),
            std::cmp::Ordering::Greater => Ok(Some(*highest)),
        }
    }

    /// Enqueues a signal of `value` on `stream`, after the previous highest signal.
    pub(crate) fn signal_on(&self, stream: &Arc<StreamNative>, value: u64) -> Result<()> {
        let mut highest = self.highest.lock();
        let Some(previous) = Self::advance(&highest, value)? else {
            return Ok(());
        };
        let timeline = self.timeline.clone();
        stream.submit(|_| {
            Ok(Work {
                waits: vec![(timeline.clone(), previous)],
                signals: vec![(timeline, value)],
                ..Work::default()
            })
        })?;
        *highest = value;
        Ok(())
    }
}

impl gpuhal_hal::Fence<VulkanBackend> for VulkanFence {
    fn value(&self) -> Result<u64> {
        self.timeline.value()
    }

    fn signal(&self, value: u64) -> Result<()> {
        let mut highest = self.highest.lock();
        let Some(previous) = Self::advance(&highest, value)? else {
            return Ok(());
        };
        if self.timeline.reached(previous)? {
            // No signal is pending: set the value now.
            self.timeline.signal_from_host(value)?;
            *highest = value;
            drop(highest);
            pump(&self.shared);
            Ok(())
        } else {
            // A stream's signal of a lower value is still pending: queue this one after it.
            drop(highest);
            self.signal_on(&self.host_signals, value)
        }
    }

    fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        if self.timeline.wait(value, Some(timeout))? {
            Ok(())
        } else {
            Err(Error::Timeout {
                operation: "fence wait",
                waited: timeout,
                target: value,
                reached: self.timeline.value()?,
            })
        }
    }
}
