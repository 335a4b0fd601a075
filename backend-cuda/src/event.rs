//! Events: a per-device pool of native events (so steady-state recording creates none),
//! and the [`CudaEvent`] handed out from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gpuhal_hal::event_pool::{EventPool, NativeEvents, PooledEvent};
use gpuhal_hal::{check_device, DeviceId, Error, Result};

use crate::context::Context;
use crate::error::Context as _;
use crate::raw::{self, CUevent};
use crate::sharing::InterprocessEvent;
use crate::stream::CudaStream;
use crate::CudaBackend;

/// A native event handle, owned by the event pool.
#[derive(Debug)]
pub struct RawEvent(CUevent);

// SAFETY: CUDA events may be recorded, queried and waited on from any thread.
unsafe impl Send for RawEvent {}
// SAFETY: as above; shared use only passes the handle to thread-safe driver calls.
unsafe impl Sync for RawEvent {}

impl RawEvent {
    /// The `CUevent`, for frameworks that record or wait on it themselves.
    pub fn raw(&self) -> CUevent {
        self.0
    }
}

/// Creates and destroys native events for a device's [`EventPool`].
pub struct CudaEvents {
    ctx: Arc<Context>,
}

impl CudaEvents {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        CudaEvents { ctx }
    }
}

impl NativeEvents for CudaEvents {
    type Event = RawEvent;

    fn create(&self, timing: bool) -> Result<RawEvent> {
        self.ctx.bind()?;
        let event = raw::event_create(timing).context(|| {
            format!(
                "creating a CUDA event (timing {}) on device {}",
                if timing { "on" } else { "off" },
                self.ctx.ordinal()
            )
        })?;
        Ok(RawEvent(event))
    }

    fn destroy(&self, event: RawEvent) {
        if self.ctx.bind().is_ok() {
            // A failed destroy at teardown leaves nothing to act on.
            let _ = raw::event_destroy(event.0);
        }
    }
}

/// The per-device pool type.
pub(crate) type CudaEventPool = EventPool<CudaEvents>;

/// Where a [`CudaEvent`]'s native event comes from.
enum Native {
    /// The device's pool, where it returns on drop.
    Pooled(PooledEvent<CudaEvents>),
    /// An interprocess event, made here or opened from another process's handle;
    /// destroyed on drop.
    Interprocess(InterprocessEvent),
}

/// An event from the device's pool (returned to it on drop), or an interprocess event
/// ([`Device::shared_event`](gpuhal_hal::Device::shared_event) /
/// [`import_event`](gpuhal_hal::Device::import_event)), destroyed on drop.
pub struct CudaEvent {
    event: Native,
    device: DeviceId,
    /// Whether this loan was recorded; a pooled event may carry an older recording.
    recorded: AtomicBool,
}

impl CudaEvent {
    pub(crate) fn new(event: PooledEvent<CudaEvents>, device: DeviceId) -> Self {
        CudaEvent {
            event: Native::Pooled(event),
            device,
            recorded: AtomicBool::new(false),
        }
    }

    /// An interprocess event. It counts as recorded from the start: another process
    /// may record it at any time, so waits and queries always ask the driver.
    pub(crate) fn interprocess(event: InterprocessEvent, device: DeviceId) -> Self {
        CudaEvent {
            event: Native::Interprocess(event),
            device,
            recorded: AtomicBool::new(true),
        }
    }

    /// The native event.
    pub fn raw(&self) -> CUevent {
        match &self.event {
            Native::Pooled(event) => event.raw(),
            Native::Interprocess(event) => event.raw(),
        }
    }

    /// Whether this is an interprocess event (made by `shared_event` or opened by
    /// `import_event`).
    pub fn is_interprocess(&self) -> bool {
        matches!(self.event, Native::Interprocess(_))
    }

    /// The device the event belongs to.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// Whether the event was recorded since it was taken from the pool.
    pub(crate) fn is_recorded(&self) -> bool {
        self.recorded.load(Ordering::Acquire)
    }

    fn bind(&self) -> Result<()> {
        match &self.event {
            Native::Pooled(event) => event.factory().ctx.bind(),
            Native::Interprocess(event) => event.ctx().bind(),
        }
    }
}

impl std::fmt::Debug for CudaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEvent")
            .field("device", &self.device)
            .field("timing", &gpuhal_hal::Event::has_timing(self))
            .field("interprocess", &self.is_interprocess())
            .field("recorded", &self.is_recorded())
            .finish()
    }
}

impl gpuhal_hal::Event<CudaBackend> for CudaEvent {
    fn record(&self, stream: &CudaStream) -> Result<()> {
        check_device("Event::record", "stream", self.device, stream.device_id_inner())?;
        // No bind: the event and the (never null) stream name their context, and reading
        // the current context cost about half of the event cycle's overhead on an H200
        // host. The GPU test `gpu_events_need_no_current_context` holds the driver to it.
        raw::event_record(self.raw(), stream.raw()).context(|| {
            format!(
                "recording an event on stream {} of device {}",
                stream.id_inner().0,
                self.device
            )
        })?;
        self.recorded.store(true, Ordering::Release);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        if !self.is_recorded() {
            return Ok(());
        }
        // No bind, as in `record`: the event names its context.
        raw::event_synchronize(self.raw()).context(|| format!("waiting for an event on device {}", self.device))
    }

    fn is_complete(&self) -> Result<bool> {
        if !self.is_recorded() {
            return Ok(true);
        }
        // No bind, as in `record`: the event names its context.
        raw::event_query(self.raw()).context(|| format!("querying an event on device {}", self.device))
    }

    fn elapsed(&self, end: &Self) -> Result<Duration> {
        if !self.has_timing() || !end.has_timing() {
            return Err(Error::invalid(
                "Event::elapsed",
                "both events must be created with timing (device.event(true))",
            ));
        }
        check_device("Event::elapsed", "end event", self.device, end.device)?;
        if !self.is_recorded() || !end.is_recorded() {
            return Err(Error::invalid(
                "Event::elapsed",
                "both events must be recorded before their elapsed time can be read",
            ));
        }
        self.bind()?;
        raw::event_synchronize(end.raw()).context(|| format!("waiting for the end event on device {}", self.device))?;
        let ms = raw::event_elapsed_ms(self.raw(), end.raw())
            .context(|| format!("reading the time between two events on device {}", self.device))?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1000.0))
    }

    fn has_timing(&self) -> bool {
        match &self.event {
            Native::Pooled(event) => event.has_timing(),
            Native::Interprocess(_) => false,
        }
    }
}
