//! A mock stream's queue: a worker thread that runs enqueued actions in order, and the
//! progress counter that events, markers and `synchronize` wait on.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuhal_hal::{Error, NativeError, Result, StreamId};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::event::EventSlot;
use crate::fence::FenceState;
use crate::raw::{self, NativeAllocation, Target};

/// How far a stream's worker has got: the sequence number of the last action it ran.
pub(crate) struct Progress {
    done: Mutex<u64>,
    advanced: Condvar,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            done: Mutex::new(0),
            advanced: Condvar::new(),
        }
    }

    /// Whether the action numbered `seq` (and everything before it) has run.
    pub(crate) fn reached(&self, seq: u64) -> bool {
        *self.done.lock() >= seq
    }

    /// Blocks until the action numbered `seq` has run.
    pub(crate) fn wait_for(&self, seq: u64) {
        let mut done = self.done.lock();
        while *done < seq {
            self.advanced.wait(&mut done);
        }
    }

    fn complete(&self, seq: u64) {
        *self.done.lock() = seq;
        self.advanced.notify_all();
    }
}

/// Work a stream's worker runs.
pub(crate) enum Action {
    Copy {
        src: Target,
        dst: Target,
    },
    Fill {
        dst: Target,
        value: u8,
    },
    Write {
        dst: Target,
        data: Vec<u8>,
    },
    Read {
        src: Target,
        reply: mpsc::Sender<Vec<u8>>,
    },
    /// Marks an event reached (and stamps its time) if it was not re-recorded since.
    Record {
        slot: Arc<EventSlot>,
        generation: u64,
    },
    /// Blocks the stream until another stream's action `seq` has run.
    WaitFor {
        progress: Arc<Progress>,
        seq: u64,
    },
    Signal {
        fence: Arc<FenceState>,
        value: u64,
    },
    WaitFence {
        fence: Arc<FenceState>,
        value: u64,
    },
    /// A stream-ordered free: the memory goes when the last action holding it has run.
    Free {
        _allocation: Arc<NativeAllocation>,
    },
    /// A framework's own "kernel": a host function run in stream order.
    HostFn(Arc<dyn Fn() + Send + Sync>),
    /// An ordering point with no effect (prefetch of host-visible memory).
    Nothing,
}

impl Action {
    fn run(self) {
        match self {
            Action::Copy { src, dst } => raw::copy(&src, &dst),
            Action::Fill { dst, value } => raw::fill(&dst, value),
            Action::Write { dst, data } => raw::write(&dst, &data),
            Action::Read { src, reply } => {
                // The reader may have given up waiting; nothing to do then.
                let _ = reply.send(raw::read(&src));
            }
            Action::Record { slot, generation } => slot.reach(generation, Instant::now()),
            Action::WaitFor { progress, seq } => progress.wait_for(seq),
            Action::Signal { fence, value } => fence.reach(value),
            Action::WaitFence { fence, value } => fence.block_until(value),
            Action::Free { .. } | Action::Nothing => {}
            Action::HostFn(function) => function(),
        }
    }
}

/// One queue item: an action, or a run of actions (a graph replay) sent at once.
/// Actions are numbered `seq`, `seq + 1`, … in order.
struct Job {
    seq: u64,
    work: Work,
}

enum Work {
    One(Action),
    Batch(Vec<Action>),
}

struct Submitter {
    sender: mpsc::Sender<Job>,
    last: u64,
}

/// The native handle of a mock stream: its queue and worker. Reference-counted so the
/// caching pool can order frees on it after the user's stream is gone; the worker exits
/// once every handle is dropped and the queue has drained.
pub struct MockQueue {
    id: StreamId,
    /// Index of the stream in its device's vector clocks.
    pub(crate) agent: usize,
    submit: Mutex<Submitter>,
    pub(crate) progress: Arc<Progress>,
}

impl MockQueue {
    /// Starts the worker thread of a new stream.
    pub(crate) fn start(id: StreamId, agent: usize, delay: Option<Duration>) -> Result<Arc<MockQueue>> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let progress = Arc::new(Progress::new());
        let worker_progress = progress.clone();
        std::thread::Builder::new()
            .name(format!("gpuhal-mock {id}"))
            .spawn(move || {
                let run = |seq: u64, action: Action| {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    action.run();
                    worker_progress.complete(seq);
                };
                for job in receiver {
                    match job.work {
                        Work::One(action) => run(job.seq, action),
                        Work::Batch(actions) => {
                            for (seq, action) in (job.seq..).zip(actions) {
                                run(seq, action);
                            }
                        }
                    }
                }
            })
            .map_err(|err| {
                Error::native(
                    format!("starting the worker of {id}"),
                    NativeError {
                        call: "std::thread::spawn",
                        code: err.raw_os_error().map_or(-1, i64::from),
                        name: format!("MOCK_ERROR_THREAD_SPAWN ({err})"),
                    },
                )
            })?;
        Ok(Arc::new(MockQueue {
            id,
            agent,
            submit: Mutex::new(Submitter { sender, last: 0 }),
            progress,
        }))
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Locks the queue for submission: actions pushed through one guard are contiguous
    /// and numbered in order.
    pub(crate) fn lock(&self) -> SubmitGuard<'_> {
        SubmitGuard {
            queue: self,
            submitter: self.submit.lock(),
            batch: None,
        }
    }

    /// Enqueues one action; returns its sequence number.
    pub(crate) fn push(&self, action: Action) -> Result<u64> {
        self.lock().push(action)
    }

    /// The sequence number of the last action enqueued (0 if none).
    pub(crate) fn last_enqueued(&self) -> u64 {
        self.submit.lock().last
    }

    /// Blocks until everything enqueued so far has run.
    pub(crate) fn drain(&self) {
        let target = self.last_enqueued();
        self.progress.wait_for(target);
    }
}

impl std::fmt::Debug for MockQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockQueue").field("id", &self.id).finish()
    }
}

/// Exclusive right to enqueue on one stream.
pub(crate) struct SubmitGuard<'a> {
    queue: &'a MockQueue,
    submitter: MutexGuard<'a, Submitter>,
    /// While batching: the sequence number before the batch, and its actions.
    batch: Option<(u64, Vec<Action>)>,
}

impl SubmitGuard<'_> {
    /// Enqueues `action` (or adds it to the batch being built); returns its sequence
    /// number.
    pub(crate) fn push(&mut self, action: Action) -> Result<u64> {
        let seq = self.submitter.last + 1;
        match &mut self.batch {
            Some((_, actions)) => actions.push(action),
            None => self.send(Job {
                seq,
                work: Work::One(action),
            })?,
        }
        self.submitter.last = seq;
        Ok(seq)
    }

    /// Collects what is pushed from now on into one queue item, sent by
    /// [`end_batch`](Self::end_batch).
    pub(crate) fn begin_batch(&mut self, capacity: usize) {
        if self.batch.is_none() {
            self.batch = Some((self.submitter.last, Vec::with_capacity(capacity)));
        }
    }

    /// Sends the batch begun by [`begin_batch`](Self::begin_batch) as one queue item.
    pub(crate) fn end_batch(&mut self) -> Result<()> {
        let Some((before, actions)) = self.batch.take() else {
            return Ok(());
        };
        match actions.len() {
            0 => Ok(()),
            1 => {
                let action = actions.into_iter().next().map(Work::One);
                match action {
                    Some(work) => self.send(Job { seq: before + 1, work }),
                    None => Ok(()),
                }
            }
            _ => self.send(Job {
                seq: before + 1,
                work: Work::Batch(actions),
            }),
        }
        .inspect_err(|_| self.submitter.last = before)
    }

    fn send(&self, job: Job) -> Result<()> {
        self.submitter.sender.send(job).map_err(|_| {
            Error::native(
                format!("enqueueing on {}", self.queue.id),
                NativeError {
                    call: "mock stream enqueue",
                    code: -1,
                    name: "MOCK_ERROR_STREAM_WORKER_GONE".into(),
                },
            )
        })
    }

    /// The sequence number of the last action enqueued (0 if none).
    pub(crate) fn last_enqueued(&self) -> u64 {
        self.submitter.last
    }

    /// The progress of the stream being submitted to.
    pub(crate) fn progress(&self) -> &Arc<Progress> {
        &self.queue.progress
    }

    /// The stream's index in the vector clocks.
    pub(crate) fn agent(&self) -> usize {
        self.queue.agent
    }

    /// The stream's id.
    pub(crate) fn stream_id(&self) -> StreamId {
        self.queue.id
    }
}

impl Drop for SubmitGuard<'_> {
    fn drop(&mut self) {
        // A batch left open by an early return still goes out: its actions were checked
        // and recorded. (A send error means the worker is gone; nothing can run them.)
        let _ = self.end_batch();
    }
}
