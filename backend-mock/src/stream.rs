//! Mock streams: in-order queues run by a worker thread, with capture into graphs and
//! every operation checked before it is enqueued.

use std::sync::mpsc;
use std::sync::Arc;

use gpuhal_hal::pool::StreamCache;
use gpuhal_hal::{
    check_device, check_range, AsRegion, Capabilities, DeviceId, Error, GraphPool, Region, Result, StreamId,
};
use parking_lot::{Mutex, MutexGuard};

use crate::checker::{Checker, Mode, Resolved, Touch, Use, HOST};
use crate::event::{EventSlot, MockEvent};
use crate::fence::MockFence;
use crate::graph::{MockGraph, Node};
use crate::memory::MockMemory;
use crate::queue::{Action, MockQueue, SubmitGuard};
use crate::state::DeviceState;
use crate::MockBackend;

struct Capture {
    pool: GraphPool<MockBackend>,
    nodes: Vec<Node>,
}

/// A mock stream.
pub struct MockStream {
    queue: Arc<MockQueue>,
    state: Arc<DeviceState>,
    cache: StreamCache<MockMemory>,
    capture: Mutex<Option<Capture>>,
}

impl MockStream {
    pub(crate) fn new(queue: Arc<MockQueue>, state: Arc<DeviceState>, cache: StreamCache<MockMemory>) -> MockStream {
        MockStream {
            queue,
            state,
            cache,
            capture: Mutex::new(None),
        }
    }

    /// The native handle: the stream's queue.
    pub fn queue(&self) -> &Arc<MockQueue> {
        &self.queue
    }

    pub(crate) fn device(&self) -> DeviceId {
        self.state.id
    }

    /// Runs `kernel` on the stream's worker, in order with the stream's other work: the
    /// mock's stand-in for launching a framework's own kernel. Captured like any other
    /// operation while the stream is capturing. The race checker does not see what the
    /// kernel touches.
    pub fn launch_host_fn(&self, kernel: impl Fn() + Send + Sync + 'static) -> Result<()> {
        self.issue(Node::HostFn(Arc::new(kernel)))
    }

    pub(crate) fn record_event(&self, slot: &Arc<EventSlot>) -> Result<()> {
        self.issue(Node::Record { slot: slot.clone() })
    }

    /// Checks `region` belongs to this device or a peer it may access, and that
    /// `offset..offset + len` lies inside it,
    /// and narrows it to that range.
    fn narrow(&self, operation: &'static str, region: &dyn AsRegion, offset: u64, len: u64) -> Result<Region> {
        let region = region.region();
        self.state
            .machine
            .check_access(operation, self.state.id, region.device)?;
        check_range(operation, offset, len, region.len)?;
        region.slice(offset, len)
    }

    /// Ends a capture an illegal operation broke, and says so.
    fn abandon_capture(&self, capture: &mut Option<Capture>, operation: &'static str) -> Error {
        *capture = None;
        self.cache.end_capture();
        Error::CaptureInvalidated {
            operation,
            stream: self.queue.id().0,
        }
    }

    /// Records `node` into the capture in progress, or enqueues it.
    fn issue(&self, node: Node) -> Result<()> {
        let mut capture = self.capture.lock();
        if let Some(recording) = capture.as_mut() {
            let mut checker = self.state.checker.lock();
            Self::validate(&mut checker, &node, Mode::Capture)?;
            recording.nodes.push(node);
            return Ok(());
        }
        let mut guard = self.queue.lock();
        let mut checker = self.state.checker.lock();
        Self::enqueue(&mut guard, &mut checker, &node, Mode::Eager)
    }

    /// Replays captured `nodes` (or records them into this stream's capture).
    pub(crate) fn launch_nodes(&self, nodes: &[Node]) -> Result<()> {
        if !self.state.capabilities.contains(Capabilities::GRAPHS) {
            return Err(Error::Unsupported {
                operation: "GraphExec::launch",
                needed: Capabilities::GRAPHS,
            });
        }
        let mut capture = self.capture.lock();
        if let Some(recording) = capture.as_mut() {
            recording.nodes.extend(nodes.iter().cloned());
            return Ok(());
        }
        let mut guard = self.queue.lock();
        let mut checker = self.state.checker.lock();
        // Resolve every range first: a replay touching freed memory is refused before
        // any of it is enqueued.
        let resolved = nodes
            .iter()
            .map(|node| Self::resolve_node(&mut checker, node))
            .collect::<Result<Vec<_>>>()?;
        // The whole replay goes to the worker as one queue item.
        guard.begin_batch(nodes.len());
        let replayed = Self::replay(&mut guard, &mut checker, nodes, resolved);
        let sent = guard.end_batch();
        replayed.and(sent)
    }

    /// The ranges a memory node of a replay reads (a copy's source) and writes.
    fn resolve_node(checker: &mut Checker, node: &Node) -> Result<Option<(Option<Resolved>, Resolved)>> {
        let operation = node.operation();
        Ok(match node {
            Node::Copy { src, dst } => Some((
                Some(checker.resolve(operation, src, Use::Read, Mode::Replay)?),
                checker.resolve(operation, dst, Use::Write, Mode::Replay)?,
            )),
            Node::Fill { dst, .. } => Some((None, checker.resolve(operation, dst, Use::Write, Mode::Replay)?)),
            _ => None,
        })
    }

    /// Checks and enqueues a replay's nodes, their ranges resolved. A run of memory
    /// operations between two synchronisation nodes is one step for the race checker
    /// (one tick, one check of all its accesses; the stream runs it in order, so its
    /// accesses need no order among themselves): a race in it enqueues none of the run.
    fn replay(
        guard: &mut SubmitGuard<'_>,
        checker: &mut Checker,
        nodes: &[Node],
        resolved: Vec<Option<(Option<Resolved>, Resolved)>>,
    ) -> Result<()> {
        let agent = guard.agent();
        let stream = guard.stream_id();
        let mut touches: Vec<Touch> = Vec::with_capacity(2 * nodes.len());
        let mut actions: Vec<Action> = Vec::with_capacity(nodes.len());
        let flush = |guard: &mut SubmitGuard<'_>,
                     checker: &mut Checker,
                     touches: &mut Vec<Touch>,
                     actions: &mut Vec<Action>|
         -> Result<()> {
            if actions.is_empty() {
                return Ok(());
            }
            let tick = checker.tick(agent);
            checker.check_accesses(agent, tick, stream, touches)?;
            touches.clear();
            for action in actions.drain(..) {
                guard.push(action)?;
            }
            Ok(())
        };
        for (node, ranges) in nodes.iter().zip(resolved) {
            let operation = node.operation();
            match (node, ranges) {
                (Node::Copy { .. }, Some((Some(from), to))) => {
                    let (read, write) = (from.touch(Use::Read, operation), to.touch(Use::Write, operation));
                    if let (Some(src), Some(dst)) = (from.target, to.target) {
                        touches.extend([read, write]);
                        actions.push(Action::Copy { src, dst });
                    }
                }
                (Node::Fill { value, .. }, Some((_, to))) => {
                    let write = to.touch(Use::Write, operation);
                    if let Some(dst) = to.target {
                        touches.push(write);
                        actions.push(Action::Fill { dst, value: *value });
                    }
                }
                _ => {
                    flush(guard, checker, &mut touches, &mut actions)?;
                    Self::enqueue(guard, checker, node, Mode::Replay)?;
                }
            }
        }
        flush(guard, checker, &mut touches, &mut actions)
    }

    /// Checks the memory `node` names is live (nothing is enqueued or recorded).
    fn validate(checker: &mut Checker, node: &Node, mode: Mode) -> Result<()> {
        let operation = node.operation();
        match node {
            Node::Copy { src, dst } => {
                checker.resolve(operation, src, Use::Read, mode)?;
                checker.resolve(operation, dst, Use::Write, mode)?;
            }
            Node::Fill { dst, .. } => {
                checker.resolve(operation, dst, Use::Write, mode)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks `node` and enqueues it.
    fn enqueue(guard: &mut SubmitGuard<'_>, checker: &mut Checker, node: &Node, mode: Mode) -> Result<()> {
        let operation = node.operation();
        let agent = guard.agent();
        let stream = guard.stream_id();
        match node {
            Node::Copy { src, dst } => {
                let from = checker.resolve(operation, src, Use::Read, mode)?;
                let to = checker.resolve(operation, dst, Use::Write, mode)?;
                if from.target.is_none() || to.target.is_none() {
                    return Ok(());
                }
                let tick = checker.tick(agent);
                let touches = [from.touch(Use::Read, operation), to.touch(Use::Write, operation)];
                checker.check_accesses(agent, tick, stream, &touches)?;
                if let (Some(src), Some(dst)) = (from.target, to.target) {
                    guard.push(Action::Copy { src, dst })?;
                }
            }
            Node::Fill { dst, value } => {
                let to = checker.resolve(operation, dst, Use::Write, mode)?;
                if to.target.is_none() {
                    return Ok(());
                }
                let tick = checker.tick(agent);
                checker.check_accesses(agent, tick, stream, &[to.touch(Use::Write, operation)])?;
                if let Some(dst) = to.target {
                    guard.push(Action::Fill { dst, value: *value })?;
                }
            }
            Node::Record { slot } => {
                checker.tick(agent);
                slot.record(guard, checker.clock(agent))?;
            }
            Node::WaitEvent { slot } => {
                if let Some(recorded) = slot.recorded() {
                    checker.join(agent, &slot.clock());
                    guard.push(Action::WaitFor {
                        progress: recorded.progress,
                        seq: recorded.seq,
                    })?;
                }
            }
            Node::Signal { fence, value } => {
                fence.claim(*value)?;
                checker.tick(agent);
                fence.note_signal(*value, checker.clock(agent));
                guard.push(Action::Signal {
                    fence: fence.clone(),
                    value: *value,
                })?;
            }
            Node::Wait { fence, value } => {
                match fence.signal_clock(*value) {
                    Some(clock) => checker.join(agent, &clock),
                    None if !fence.has_reached(*value) => checker.await_signal(agent, fence, *value),
                    None => {}
                }
                guard.push(Action::WaitFence {
                    fence: fence.clone(),
                    value: *value,
                })?;
            }
            Node::HostFn(kernel) => {
                checker.tick(agent);
                guard.push(Action::HostFn(kernel.clone()))?;
            }
        }
        Ok(())
    }

    /// The capture lock, after refusing `operation` if a capture is in progress.
    fn not_capturing(&self, operation: &'static str) -> Result<MutexGuard<'_, Option<Capture>>> {
        let mut capture = self.capture.lock();
        if capture.is_some() {
            return Err(self.abandon_capture(&mut capture, operation));
        }
        Ok(capture)
    }
}

impl gpuhal_hal::Stream<MockBackend> for MockStream {
    fn id(&self) -> StreamId {
        self.queue.id()
    }

    fn device_id(&self) -> DeviceId {
        self.state.id
    }

    fn cache(&self) -> &StreamCache<MockMemory> {
        &self.cache
    }

    fn write(&self, dst: &dyn AsRegion, offset: u64, data: &[u8]) -> Result<()> {
        const OPERATION: &str = "write";
        let _capture = self.not_capturing(OPERATION)?;
        let dst = self.narrow(OPERATION, dst, offset, data.len() as u64)?;
        let mut guard = self.queue.lock();
        let mut checker = self.state.checker.lock();
        let to = checker.resolve(OPERATION, &dst, Use::Write, Mode::Eager)?;
        if to.target.is_none() {
            return Ok(());
        }
        let agent = guard.agent();
        let tick = checker.tick(agent);
        let touch = to.touch(Use::Write, OPERATION);
        checker.check_accesses(agent, tick, guard.stream_id(), &[touch])?;
        drop(checker);
        if let Some(dst) = to.target {
            guard.push(Action::Write {
                dst,
                data: data.to_vec(),
            })?;
        }
        Ok(())
    }

    fn read(&self, src: &dyn AsRegion, offset: u64, out: &mut [u8]) -> Result<()> {
        const OPERATION: &str = "read";
        let capture = self.not_capturing(OPERATION)?;
        let src = self.narrow(OPERATION, src, offset, out.len() as u64)?;
        let (reply, answer) = mpsc::channel();
        let seen = {
            let mut guard = self.queue.lock();
            let mut checker = self.state.checker.lock();
            let from = checker.resolve(OPERATION, &src, Use::Read, Mode::Eager)?;
            if from.target.is_none() {
                return Ok(());
            }
            let agent = guard.agent();
            let tick = checker.tick(agent);
            let touch = from.touch(Use::Read, OPERATION);
            checker.check_accesses(agent, tick, guard.stream_id(), &[touch])?;
            let seen = checker.clock(agent);
            drop(checker);
            if let Some(src) = from.target {
                guard.push(Action::Read { src, reply })?;
            }
            seen
        };
        drop(capture);
        let bytes = answer
            .recv()
            .map_err(|_| Error::invalid(OPERATION, format!("{} stopped before the read ran", self.queue.id())))?;
        out.copy_from_slice(&bytes[..out.len()]);
        self.state.checker.lock().join(HOST, &seen);
        Ok(())
    }

    fn copy(&self, src: &dyn AsRegion, src_offset: u64, dst: &dyn AsRegion, dst_offset: u64, len: u64) -> Result<()> {
        let src = self.narrow("copy", src, src_offset, len)?;
        let dst = self.narrow("copy", dst, dst_offset, len)?;
        self.issue(Node::Copy { src, dst })
    }

    fn fill(&self, dst: &dyn AsRegion, offset: u64, len: u64, value: u8) -> Result<()> {
        let dst = self.narrow("fill", dst, offset, len)?;
        self.issue(Node::Fill { dst, value })
    }

    fn synchronize(&self) -> Result<()> {
        let capture = self.not_capturing("synchronize")?;
        drop(capture);
        let seen = {
            let guard = self.queue.lock();
            let seen = self.state.checker.lock().clock(guard.agent());
            let target = guard.last_enqueued();
            drop(guard);
            self.queue.progress.wait_for(target);
            seen
        };
        self.state.host_joins(&seen);
        Ok(())
    }

    fn wait_event(&self, event: &MockEvent) -> Result<()> {
        self.state
            .machine
            .check_member("wait_event", "event", self.state.id, event.device_id())?;
        self.issue(Node::WaitEvent {
            slot: event.slot().clone(),
        })
    }

    fn signal(&self, fence: &MockFence, value: u64) -> Result<()> {
        check_device("signal", "fence", self.state.id, fence.device_id())?;
        self.issue(Node::Signal {
            fence: fence.fence.clone(),
            value,
        })
    }

    fn wait(&self, fence: &MockFence, value: u64) -> Result<()> {
        check_device("wait", "fence", self.state.id, fence.device_id())?;
        self.issue(Node::Wait {
            fence: fence.fence.clone(),
            value,
        })
    }

    fn begin_capture(&self, pool: &GraphPool<MockBackend>) -> Result<()> {
        if !self.state.capabilities.contains(Capabilities::GRAPHS) {
            return Err(Error::Unsupported {
                operation: "begin_capture",
                needed: Capabilities::GRAPHS,
            });
        }
        check_device("begin_capture", "graph pool", self.state.id, pool.device())?;
        let mut capture = self.capture.lock();
        if capture.is_some() {
            return Err(Error::CaptureState(format!(
                "begin_capture on {}, which is already capturing",
                self.queue.id()
            )));
        }
        *capture = Some(Capture {
            pool: pool.clone(),
            nodes: Vec::new(),
        });
        self.cache.begin_capture(pool.clone());
        Ok(())
    }

    fn end_capture(&self) -> Result<MockGraph> {
        let recording = self.capture.lock().take().ok_or_else(|| {
            Error::CaptureState(format!("end_capture on {}, which is not capturing", self.queue.id()))
        })?;
        self.cache.end_capture();
        Ok(MockGraph {
            nodes: recording.nodes.into(),
            pool: recording.pool,
        })
    }

    fn is_capturing(&self) -> bool {
        self.capture.lock().is_some()
    }
}

impl Drop for MockStream {
    fn drop(&mut self) {
        if self.capture.get_mut().take().is_some() {
            self.cache.end_capture();
        }
    }
}

impl std::fmt::Debug for MockStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockStream")
            .field("id", &self.queue.id())
            .field("device", &self.state.id)
            .field("capturing", &self.capture.lock().is_some())
            .finish()
    }
}
