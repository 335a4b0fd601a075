//! Events: points (timeline semaphore, value) in a stream's work, with a timestamp
//! query for timing events. The query pools come from the device's event pool, so a
//! steady record/wait loop creates no native objects.

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use gpuhal_hal::event_pool::{NativeEvents, PooledEvent};
use gpuhal_hal::{DeviceId, Error, Result};
use parking_lot::Mutex;

use crate::device::DeviceShared;
use crate::error::VkResultExt;
use crate::queue::{Timeline, Work};
use crate::stream::VulkanStream;
use crate::VulkanBackend;

/// Creates the native side of events: a one-query timestamp pool for timing events,
/// nothing for the others (their point is a timeline value).
pub struct EventFactory {
    pub(crate) shared: Arc<DeviceShared>,
}

/// The pooled native side of an event.
#[derive(Debug)]
pub struct NativeEvent {
    query_pool: Option<vk::QueryPool>,
}

impl NativeEvents for EventFactory {
    type Event = NativeEvent;

    fn create(&self, timing: bool) -> Result<NativeEvent> {
        if !timing {
            return Ok(NativeEvent { query_pool: None });
        }
        let info = vk::QueryPoolCreateInfo::default()
            .query_type(vk::QueryType::TIMESTAMP)
            .query_count(1);
        // SAFETY: valid create info; destroyed by `destroy`.
        let pool = unsafe { self.shared.device.create_query_pool(&info, None) }.vk("vkCreateQueryPool", || {
            "creating a timestamp query for a timing event".into()
        })?;
        Ok(NativeEvent { query_pool: Some(pool) })
    }

    fn destroy(&self, event: NativeEvent) {
        if let Some(pool) = event.query_pool {
            // A query may still be written by queued work: wait for the queue first.
            let queue = self.shared.queue.lock();
            // SAFETY: the queue is externally synchronised by its mutex.
            let _ = unsafe { self.shared.device.queue_wait_idle(*queue) };
            drop(queue);
            // SAFETY: the queue is idle, so no command uses the pool.
            unsafe { self.shared.device.destroy_query_pool(pool, None) };
        }
    }
}

/// An event: the point in a stream's work where it was last recorded.
pub struct VulkanEvent {
    device: DeviceId,
    native: PooledEvent<EventFactory>,
    point: Mutex<Option<(Arc<Timeline>, u64)>>,
}

impl std::fmt::Debug for VulkanEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanEvent")
            .field("timing", &self.native.has_timing())
            .field("point", &self.point.lock().as_ref().map(|p| p.1))
            .finish()
    }
}

impl VulkanEvent {
    pub(crate) fn new(device: DeviceId, native: PooledEvent<EventFactory>) -> VulkanEvent {
        VulkanEvent {
            device,
            native,
            point: Mutex::new(None),
        }
    }

    pub(crate) fn device(&self) -> DeviceId {
        self.device
    }

    /// The recorded point, if any.
    pub(crate) fn point(&self) -> Option<(Arc<Timeline>, u64)> {
        self.point.lock().clone()
    }

    fn timestamp(&self, shared: &DeviceShared) -> Result<u64> {
        let Some(pool) = self.native.query_pool else {
            return Err(Error::invalid("elapsed", "event was made without timing"));
        };
        let mut data = [0u64; 1];
        // SAFETY: the query was reset and written by a batch that has completed.
        unsafe {
            shared
                .device
                .get_query_pool_results(pool, 0, &mut data, vk::QueryResultFlags::TYPE_64)
        }
        .vk("vkGetQueryPoolResults", || "reading an event timestamp".into())?;
        Ok(data[0])
    }
}

impl gpuhal_hal::Event<VulkanBackend> for VulkanEvent {
    fn record(&self, stream: &VulkanStream) -> Result<()> {
        gpuhal_hal::check_device("record", "stream", self.device, stream.device_id_raw())?;
        stream.refuse_in_capture("event record")?;
        let native = stream.native();
        let point = match self.native.query_pool {
            None => native.flushed_point()?,
            Some(pool) => {
                let shared = native.shared.clone();
                let value = native.submit(|state| {
                    let cmd = state.record(&shared, |device, cmd| {
                        // SAFETY: `cmd` is recording; the pool has one query, reset before it is written.
                        unsafe {
                            device.cmd_reset_query_pool(cmd, pool, 0, 1);
                            device.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, pool, 0);
                        }
                    })?;
                    Ok(Work {
                        own_cmd: Some(cmd),
                        ..Work::default()
                    })
                })?;
                (native.timeline.clone(), value)
            }
        };
        *self.point.lock() = Some(point);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        if let Some((timeline, value)) = self.point() {
            timeline.wait(value, None)?;
        }
        Ok(())
    }

    fn is_complete(&self) -> Result<bool> {
        match self.point() {
            Some((timeline, value)) => timeline.reached(value),
            None => Ok(true),
        }
    }

    fn elapsed(&self, end: &Self) -> Result<Duration> {
        if !self.has_timing() || !end.has_timing() {
            return Err(Error::invalid("elapsed", "both events need timing"));
        }
        let (Some((start_timeline, _)), Some(_)) = (self.point(), end.point()) else {
            return Err(Error::invalid("elapsed", "both events must have been recorded"));
        };
        self.synchronize()?;
        end.synchronize()?;
        let shared = &start_timeline.shared;
        let Some(timestamps) = shared.timestamps else {
            return Err(Error::invalid("elapsed", "the queue has no timestamps"));
        };
        let start = self.timestamp(shared)? & timestamps.mask;
        let stop = end.timestamp(shared)? & timestamps.mask;
        // Counters narrower than 64 bits wrap; a full-width one going backwards means the
        // end was recorded first, reported as zero.
        let ticks = if stop >= start {
            stop - start
        } else if timestamps.mask != u64::MAX {
            stop.wrapping_sub(start) & timestamps.mask
        } else {
            0
        };
        Ok(Duration::from_nanos((ticks as f64 * timestamps.period_ns) as u64))
    }

    fn has_timing(&self) -> bool {
        self.native.has_timing()
    }
}
