//! The queue and the stream timelines.
//!
//! A device has one `VkQueue`, shared by all its streams (submissions serialised by a
//! mutex). Each stream owns a timeline semaphore whose value counts the batches
//! submitted on it; every batch waits for the stream's previous value and signals the
//! next, so a stream is in order.
//!
//! A batch that waits on a timeline value whose signal has not been submitted yet (a
//! fence the CPU will signal later, an event recorded behind such a wait) is *held* on
//! the host, with everything after it on its stream, and submitted once its waits can
//! be satisfied by work already on the queue. The queue then never stalls on a wait
//! that only later host calls can release, so one stream blocked on a fence does not
//! block the others, even on a device with a single queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ash::vk;
use gpuhal_hal::{Error, Result, StreamId};
use parking_lot::Mutex;

use crate::device::DeviceShared;
use crate::error::{vk_error, VkResultExt};
use crate::memory::{Placement, RawBuffer};

/// A timeline semaphore, with the highest value whose signal is on the queue.
pub struct Timeline {
    pub(crate) shared: Arc<DeviceShared>,
    pub(crate) semaphore: vk::Semaphore,
    /// Highest value whose signal has been submitted to the queue or set by the CPU:
    /// a wait for a value up to this one is sure to be released by work already queued.
    pub(crate) submitted: AtomicU64,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("submitted", &self.submitted.load(Ordering::Relaxed))
            .finish()
    }
}

impl Timeline {
    /// A timeline semaphore at `initial`, or (with `None`) at whatever value a recycled
    /// semaphore has reached: read it from [`Timeline::submitted`].
    ///
    /// Semaphores are recycled, never destroyed before the device: a driver may still
    /// touch a semaphore that a completed batch waited on after the batch's own signal
    /// is visible (Mesa's queue releases wait points after signalling), so destroying
    /// it on completion would race with the driver.
    pub(crate) fn new(shared: &Arc<DeviceShared>, initial: Option<u64>) -> Result<Arc<Timeline>> {
        let recycled = shared.retired_semaphores.lock().pop();
        if let Some(semaphore) = recycled {
            // SAFETY: a retired semaphore is live and no pending batch signals it.
            match unsafe { shared.device.get_semaphore_counter_value(semaphore) } {
                Ok(current) if initial.is_none_or(|v| v >= current) => {
                    let timeline = Arc::new(Timeline {
                        shared: shared.clone(),
                        semaphore,
                        submitted: AtomicU64::new(current),
                    });
                    if let Some(value) = initial.filter(|&v| v > current) {
                        timeline.signal_from_host(value)?;
                    }
                    return Ok(timeline);
                }
                _ => shared.retired_semaphores.lock().push(semaphore),
            }
        }
        let start = initial.unwrap_or(0);
        let mut kind = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(start);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
        // SAFETY: valid create info chain; the semaphore is retired in `Drop` and destroyed with the device.
        let semaphore = unsafe { shared.device.create_semaphore(&info, None) }
            .vk("vkCreateSemaphore", || "creating a timeline semaphore".into())?;
        Ok(Arc::new(Timeline {
            shared: shared.clone(),
            semaphore,
            submitted: AtomicU64::new(start),
        }))
    }

    /// The value the device (or CPU) has reached.
    pub(crate) fn value(&self) -> Result<u64> {
        // SAFETY: the semaphore is a live timeline semaphore of this device.
        unsafe { self.shared.device.get_semaphore_counter_value(self.semaphore) }
            .vk("vkGetSemaphoreCounterValue", || "reading a timeline value".into())
    }

    /// Whether `value` has been reached.
    pub(crate) fn reached(&self, value: u64) -> Result<bool> {
        Ok(value == 0 || self.value()? >= value)
    }

    /// Waits on the CPU until `value` is reached; `false` if `timeout` passed first.
    pub(crate) fn wait(&self, value: u64, timeout: Option<Duration>) -> Result<bool> {
        let semaphores = [self.semaphore];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        let nanos = timeout.map_or(u64::MAX, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        // SAFETY: the semaphore is a live timeline semaphore; waiting before a signal is submitted is allowed for timeline semaphores.
        match unsafe { self.shared.device.wait_semaphores(&info, nanos) } {
            Ok(()) => Ok(true),
            Err(vk::Result::TIMEOUT) => Ok(false),
            Err(result) => Err(vk_error(
                format!("waiting for timeline value {value}"),
                "vkWaitSemaphores",
                result,
            )),
        }
    }

    /// Signals `value` from the CPU (it must exceed every value reached or pending).
    pub(crate) fn signal_from_host(&self, value: u64) -> Result<()> {
        let info = vk::SemaphoreSignalInfo::default()
            .semaphore(self.semaphore)
            .value(value);
        // SAFETY: the caller guarantees `value` is above the current value and no lower signal is pending (fences route such signals through the queue).
        unsafe { self.shared.device.signal_semaphore(&info) }.vk("vkSignalSemaphore", || {
            format!("signalling timeline value {value} from the CPU")
        })?;
        self.note_submitted(value);
        Ok(())
    }

    pub(crate) fn note_submitted(&self, value: u64) {
        self.submitted.fetch_max(value, Ordering::AcqRel);
    }

    fn resolvable(&self, value: u64) -> bool {
        self.submitted.load(Ordering::Acquire) >= value
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        let submitted = *self.submitted.get_mut();
        // Every batch that signals or waits on this semaphore keeps it alive until the
        // batch completes, so only this semaphore's own signals can still be pending.
        let _ = self.wait(submitted, None);
        self.shared.retired_semaphores.lock().push(self.semaphore);
    }
}

/// Something a batch keeps alive until it has run.
pub(crate) type Keep = Arc<dyn Send + Sync>;

/// Work for one submission.
#[derive(Default)]
pub(crate) struct Work {
    /// A command buffer of the stream's pool, recorded for this batch.
    pub(crate) own_cmd: Option<vk::CommandBuffer>,
    /// A command buffer owned by something else (a graph exec), kept alive by `keep`.
    pub(crate) foreign_cmd: Option<vk::CommandBuffer>,
    /// Extra timeline values to signal (fences).
    pub(crate) signals: Vec<(Arc<Timeline>, u64)>,
    /// Extra waits, on top of the stream's pending ones.
    pub(crate) waits: Vec<(Arc<Timeline>, u64)>,
    /// Staging buffers used by the batch, reused once it has run.
    pub(crate) staging: Vec<RawBuffer>,
    /// Objects that must outlive the batch (held only for their drop).
    #[allow(dead_code)]
    pub(crate) keep: Vec<Keep>,
}

struct Batch {
    value: u64,
    work: Work,
}

/// A submitted batch, remembered until its value is reached.
struct InFlight {
    value: u64,
    work: Work,
}

struct StreamState {
    /// Highest value handed to a batch (submitted or held).
    last: u64,
    /// Waits added since the last batch; the next batch carries them.
    pending_waits: Vec<(Arc<Timeline>, u64)>,
    held: VecDeque<Batch>,
    registered_held: bool,
    in_flight: VecDeque<InFlight>,
    command_pool: vk::CommandPool,
    free_cmds: Vec<vk::CommandBuffer>,
    free_staging: Vec<RawBuffer>,
    /// A submission of held work failed: reported by the stream's next operation.
    failure: Option<String>,
}

/// Staging buffers are sized in powers of two between these bounds; larger transfers
/// are split into chunks of `MAX_STAGING` bytes.
pub(crate) const MIN_STAGING: u64 = 64 << 10;
/// See [`MIN_STAGING`].
pub(crate) const MAX_STAGING: u64 = 16 << 20;
/// Idle staging buffers kept per stream.
const KEEP_STAGING: usize = 4;

/// The native side of a stream: its timeline, command pool, and submission state.
/// Reference-counted: the caching pool holds it to order frees.
pub struct StreamNative {
    pub(crate) shared: Arc<DeviceShared>,
    pub(crate) timeline: Arc<Timeline>,
    pub(crate) id: StreamId,
    state: Mutex<StreamState>,
}

impl std::fmt::Debug for StreamNative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamNative").field("id", &self.id).finish()
    }
}

impl StreamNative {
    /// A new stream on the device's queue.
    pub(crate) fn new(shared: &Arc<DeviceShared>, id: StreamId) -> Result<Arc<StreamNative>> {
        let timeline = Timeline::new(shared, None)?;
        let start = timeline.submitted.load(Ordering::Acquire);
        let info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(shared.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER | vk::CommandPoolCreateFlags::TRANSIENT);
        // SAFETY: valid create info for this device's queue family; destroyed in `Drop`.
        let command_pool = unsafe { shared.device.create_command_pool(&info, None) }
            .vk("vkCreateCommandPool", || "creating a stream's command pool".into())?;
        let stream = Arc::new(StreamNative {
            shared: shared.clone(),
            timeline,
            id,
            state: Mutex::new(StreamState {
                last: start,
                pending_waits: Vec::new(),
                held: VecDeque::new(),
                registered_held: false,
                in_flight: VecDeque::new(),
                command_pool,
                free_cmds: Vec::new(),
                free_staging: Vec::new(),
                failure: None,
            }),
        });
        shared.streams.lock().push(Arc::downgrade(&stream));
        Ok(stream)
    }

    /// The current end of the stream's work: (timeline, highest value handed out).
    pub(crate) fn point(&self) -> (Arc<Timeline>, u64) {
        (self.timeline.clone(), self.state.lock().last)
    }

    /// Every point that must be reached before memory last used on this stream may be
    /// freed: the end of its work and the waits its next batch will carry.
    pub(crate) fn end_points(&self) -> Vec<(Arc<Timeline>, u64)> {
        let state = self.state.lock();
        let mut points = state.pending_waits.clone();
        points.push((self.timeline.clone(), state.last));
        points
    }

    /// Makes the stream's next batch wait for `timeline` to reach `value`.
    pub(crate) fn add_wait(&self, timeline: Arc<Timeline>, value: u64) {
        if value == 0 {
            return;
        }
        self.state.lock().pending_waits.push((timeline, value));
    }

    /// The end of the stream's work, after flushing pending waits into an empty batch so
    /// that the point includes them.
    pub(crate) fn flushed_point(self: &Arc<Self>) -> Result<(Arc<Timeline>, u64)> {
        let has_waits = !self.state.lock().pending_waits.is_empty();
        if has_waits {
            let value = self.submit(|_| Ok(Work::default()))?;
            return Ok((self.timeline.clone(), value));
        }
        Ok(self.point())
    }

    /// Records `len` bytes of commands with `record` into a command buffer of the stream
    /// and submits it as the next batch. Returns the batch's timeline value.
    pub(crate) fn submit_commands(
        self: &Arc<Self>,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
        mut work: Work,
    ) -> Result<u64> {
        self.submit(move |state| {
            work.own_cmd = Some(state.record(&self.shared, record)?);
            Ok(work)
        })
    }

    /// Submits `work` (built under the stream lock by `build`) as the next batch.
    pub(crate) fn submit(self: &Arc<Self>, build: impl FnOnce(&mut StreamStateRef<'_>) -> Result<Work>) -> Result<u64> {
        let submitted_now;
        let value;
        {
            let mut state = self.state.lock();
            if let Some(failure) = state.failure.take() {
                return Err(Error::invalid("stream", failure));
            }
            self.reclaim(&mut state);
            let mut work = build(&mut StreamStateRef(&mut state))?;
            work.waits.append(&mut state.pending_waits);
            value = state.last + 1;
            let batch = Batch { value, work };
            if state.held.is_empty() && batch.work.waits.iter().all(|(t, v)| t.resolvable(*v)) {
                if let Err(err) = self.submit_batch(&batch) {
                    // Nothing was queued: give the stream's resources back.
                    self.recycle(&mut state, batch.work);
                    return Err(err);
                }
                state.last = value;
                state.in_flight.push_back(InFlight {
                    value,
                    work: batch.work,
                });
                submitted_now = true;
            } else {
                state.last = value;
                state.held.push_back(batch);
                if !state.registered_held {
                    state.registered_held = true;
                    self.shared.held.lock().push(Arc::downgrade(self));
                }
                submitted_now = false;
            }
        }
        if submitted_now {
            pump(&self.shared);
        }
        Ok(value)
    }

    /// Queues one batch: waits (deduplicated, highest value per semaphore) and the
    /// stream's previous value; signals the batch's value and any fences.
    fn submit_batch(&self, batch: &Batch) -> Result<()> {
        let mut waits: Vec<(vk::Semaphore, u64)> = Vec::with_capacity(batch.work.waits.len() + 1);
        let previous = batch.value - 1;
        let own = std::iter::once((self.timeline.semaphore, previous)).filter(|_| previous > 0);
        for (semaphore, value) in own.chain(batch.work.waits.iter().map(|(t, v)| (t.semaphore, *v))) {
            match waits.iter_mut().find(|(s, _)| *s == semaphore) {
                Some(entry) => entry.1 = entry.1.max(value),
                None => waits.push((semaphore, value)),
            }
        }
        let wait_semaphores: Vec<_> = waits.iter().map(|w| w.0).collect();
        let wait_values: Vec<_> = waits.iter().map(|w| w.1).collect();
        let stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; waits.len()];
        let mut signal_semaphores = vec![self.timeline.semaphore];
        let mut signal_values = vec![batch.value];
        for (timeline, value) in &batch.work.signals {
            signal_semaphores.push(timeline.semaphore);
            signal_values.push(*value);
        }
        let commands: Vec<_> = batch.work.own_cmd.into_iter().chain(batch.work.foreign_cmd).collect();
        let mut timeline_info = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let submit = vk::SubmitInfo::default()
            .wait_semaphores(&wait_semaphores)
            .wait_dst_stage_mask(&stages)
            .command_buffers(&commands)
            .signal_semaphores(&signal_semaphores)
            .push_next(&mut timeline_info);
        {
            let queue = self.shared.queue.lock();
            // SAFETY: the queue is externally synchronised by its mutex; every semaphore and command buffer is alive and kept alive by the batch until it has run; each wait is on a value whose signal is already queued (or set), and each signalled value is above the semaphore's pending values (stream values grow by one; fences wait for their previous highest value first).
            unsafe { self.shared.device.queue_submit(*queue, &[submit], vk::Fence::null()) }
                .vk("vkQueueSubmit", || format!("submitting work on {}", self.id))?;
        }
        self.timeline.note_submitted(batch.value);
        for (timeline, value) in &batch.work.signals {
            timeline.note_submitted(*value);
        }
        Ok(())
    }

    /// Submits held batches whose waits can now be satisfied. Returns whether any was.
    fn flush_held(self: &Arc<Self>) -> bool {
        let mut state = self.state.lock();
        let mut progress = false;
        while let Some(batch) = state.held.front() {
            if !batch.work.waits.iter().all(|(t, v)| t.resolvable(*v)) {
                break;
            }
            let Some(batch) = state.held.pop_front() else { break };
            if let Err(err) = self.submit_batch(&batch) {
                // Keep the timeline moving so nothing waits forever on the lost batch;
                // the stream's next operation reports the failure.
                state.failure = Some(format!("held work on {} could not be submitted: {err}", self.id));
                let _ = self.timeline.signal_from_host(batch.value);
                self.recycle(&mut state, batch.work);
            } else {
                state.in_flight.push_back(InFlight {
                    value: batch.value,
                    work: batch.work,
                });
            }
            progress = true;
        }
        if state.held.is_empty() && state.registered_held {
            state.registered_held = false;
            let me = Arc::downgrade(self);
            self.shared.held.lock().retain(|w| !w.ptr_eq(&me));
        }
        progress
    }

    /// Returns the resources of batches that have run to the stream's free lists.
    fn reclaim(&self, state: &mut StreamState) {
        if state.in_flight.is_empty() {
            return;
        }
        let Ok(reached) = self.timeline.value() else { return };
        while state.in_flight.front().is_some_and(|f| f.value <= reached) {
            if let Some(done) = state.in_flight.pop_front() {
                self.recycle(state, done.work);
            }
        }
    }

    fn recycle(&self, state: &mut StreamState, work: Work) {
        if let Some(cmd) = work.own_cmd {
            state.free_cmds.push(cmd);
        }
        for staging in work.staging {
            Self::keep_staging(&self.shared, state, staging);
        }
    }

    fn keep_staging(shared: &DeviceShared, state: &mut StreamState, staging: RawBuffer) {
        if state.free_staging.len() < KEEP_STAGING {
            state.free_staging.push(staging);
        } else {
            shared.destroy_buffer(staging);
        }
    }

    fn begin_commands(shared: &DeviceShared, state: &mut StreamState) -> Result<vk::CommandBuffer> {
        let cmd = match state.free_cmds.pop() {
            Some(cmd) => cmd,
            None => {
                let info = vk::CommandBufferAllocateInfo::default()
                    .command_pool(state.command_pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1);
                // SAFETY: the pool belongs to this stream and is only used under its lock.
                let cmds = unsafe { shared.device.allocate_command_buffers(&info) }
                    .vk("vkAllocateCommandBuffers", || {
                        "allocating a stream command buffer".into()
                    })?;
                cmds.into_iter()
                    .next()
                    .ok_or_else(|| Error::invalid("stream", "vkAllocateCommandBuffers returned no command buffer"))?
            }
        };
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: `cmd` is not pending (fresh, or reclaimed after its batch completed); the pool was created with RESET_COMMAND_BUFFER, so begin resets it.
        if let Err(result) = unsafe { shared.device.begin_command_buffer(cmd, &begin) } {
            state.free_cmds.push(cmd);
            return Err(vk_error("recording stream commands", "vkBeginCommandBuffer", result));
        }
        Ok(cmd)
    }

    /// Gives a staging buffer back once the stream has reached `value`.
    pub(crate) fn return_staging(&self, staging: RawBuffer, value: u64) {
        let mut state = self.state.lock();
        if self.timeline.reached(value).unwrap_or(false) {
            Self::keep_staging(&self.shared, &mut state, staging);
        } else {
            state.in_flight.push_back(InFlight {
                value,
                work: Work {
                    staging: vec![staging],
                    ..Work::default()
                },
            });
        }
    }

    /// Waits on the CPU until the stream has reached `value`.
    pub(crate) fn wait_value(&self, value: u64) -> Result<()> {
        self.timeline.wait(value, None)?;
        Ok(())
    }
}

/// The stream state, as batch builders see it: staging buffers on loan.
pub(crate) struct StreamStateRef<'a>(&'a mut StreamState);

impl StreamStateRef<'_> {
    /// A mapped staging buffer of at least `len` bytes (`len <= MAX_STAGING`).
    pub(crate) fn staging(&mut self, shared: &DeviceShared, len: u64) -> Result<RawBuffer> {
        let state = &mut *self.0;
        if let Some(index) = state.free_staging.iter().position(|s| s.size >= len) {
            return Ok(state.free_staging.swap_remove(index));
        }
        let size = len.next_power_of_two().clamp(MIN_STAGING, MAX_STAGING.max(len));
        shared.create_buffer(size, Placement::HostCoherent, gpuhal_hal::MemoryKind::HostPinned)
    }

    /// Records into a fresh command buffer of the stream.
    pub(crate) fn begin_commands(&mut self, shared: &DeviceShared) -> Result<vk::CommandBuffer> {
        StreamNative::begin_commands(shared, self.0)
    }

    /// A command buffer of the stream with `record`'s commands in it, ready to submit.
    pub(crate) fn record(
        &mut self,
        shared: &DeviceShared,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<vk::CommandBuffer> {
        let cmd = self.begin_commands(shared)?;
        record(&shared.device, cmd);
        // SAFETY: `cmd` is in the recording state (begun above).
        if let Err(result) = unsafe { shared.device.end_command_buffer(cmd) } {
            self.0.free_cmds.push(cmd);
            return Err(vk_error("recording stream commands", "vkEndCommandBuffer", result));
        }
        Ok(cmd)
    }
}

impl Drop for StreamNative {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        // Held batches never reached the queue: nothing to wait for.
        let held: Vec<Batch> = state.held.drain(..).collect();
        let submitted = self.timeline.submitted.load(Ordering::Acquire);
        let _ = self.timeline.wait(submitted, None);
        if state.last > submitted {
            // The held values will never run: move the timeline past them so nothing
            // that waits for them (a deferred free, another stream) waits forever.
            let _ = self.timeline.signal_from_host(state.last);
            pump(&self.shared);
        }
        let in_flight: Vec<InFlight> = state.in_flight.drain(..).collect();
        for work in held
            .into_iter()
            .map(|b| b.work)
            .chain(in_flight.into_iter().map(|f| f.work))
        {
            for staging in work.staging {
                self.shared.destroy_buffer(staging);
            }
        }
        for staging in state.free_staging.drain(..) {
            self.shared.destroy_buffer(staging);
        }
        // SAFETY: every command buffer of the pool has completed (waited above) or was never submitted; destroying the pool frees them.
        unsafe { self.shared.device.destroy_command_pool(state.command_pool, None) };
    }
}

/// Submits every held batch that has become submittable, on every stream, until none
/// is. Called after anything raises a timeline's submitted value.
pub(crate) fn pump(shared: &DeviceShared) {
    loop {
        let streams: Vec<Arc<StreamNative>> = {
            let mut held = shared.held.lock();
            held.retain(|w| w.strong_count() > 0);
            if held.is_empty() {
                return;
            }
            held.iter().filter_map(Weak::upgrade).collect()
        };
        let mut progress = false;
        for stream in &streams {
            progress |= stream.flush_held();
        }
        if !progress {
            return;
        }
    }
}
