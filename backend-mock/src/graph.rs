//! Graphs: a stream's captured work as a list of operations with their parameters,
//! replayed by enqueueing them again.

use std::sync::Arc;

use gpuhal_hal::{check_device, Error, GraphPool, Region, Result};

use crate::event::EventSlot;
use crate::fence::FenceState;
use crate::stream::MockStream;
use crate::MockBackend;

/// One captured operation.
#[derive(Clone)]
pub(crate) enum Node {
    Copy { src: Region, dst: Region },
    Fill { dst: Region, value: u8 },
    Record { slot: Arc<EventSlot> },
    WaitEvent { slot: Arc<EventSlot> },
    Signal { fence: Arc<FenceState>, value: u64 },
    Wait { fence: Arc<FenceState>, value: u64 },
    HostFn(Arc<dyn Fn() + Send + Sync>),
}

impl Node {
    /// The operation's name, as errors report it.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            Node::Copy { .. } => "copy",
            Node::Fill { .. } => "fill",
            Node::Record { .. } => "Event::record",
            Node::WaitEvent { .. } => "wait_event",
            Node::Signal { .. } => "signal",
            Node::Wait { .. } => "wait",
            Node::HostFn(_) => "launch_host_fn",
        }
    }

    /// Length in bytes for memory operations: with the kind, what an update must keep.
    fn bytes(&self) -> Option<u64> {
        match self {
            Node::Copy { dst, .. } | Node::Fill { dst, .. } => Some(dst.len),
            _ => None,
        }
    }
}

/// Why `new` cannot replace the parameters of `old`, if it cannot.
fn shape_difference(old: &[Node], new: &[Node]) -> Option<String> {
    if old.len() != new.len() {
        return Some(format!(
            "the graph has {} operations, the update {}",
            old.len(),
            new.len()
        ));
    }
    old.iter().zip(new).enumerate().find_map(|(index, (a, b))| {
        if a.operation() != b.operation() {
            Some(format!(
                "operation {index} is a {} in the graph but a {} in the update",
                a.operation(),
                b.operation()
            ))
        } else if a.bytes() != b.bytes() {
            Some(format!(
                "operation {index} ({}) covers {} bytes in the graph but {} in the update",
                a.operation(),
                a.bytes().unwrap_or(0),
                b.bytes().unwrap_or(0)
            ))
        } else {
            None
        }
    })
}

/// A captured mock graph. Keeps its graph pool alive, since its operations use memory
/// carved from it.
pub struct MockGraph {
    pub(crate) nodes: Arc<[Node]>,
    pub(crate) pool: GraphPool<MockBackend>,
}

impl gpuhal_hal::Graph<MockBackend> for MockGraph {
    fn instantiate(&self) -> Result<MockGraphExec> {
        let _span = tracing::debug_span!("graph_instantiate", nodes = self.nodes.len()).entered();
        Ok(MockGraphExec {
            nodes: self.nodes.clone(),
            pool: self.pool.clone(),
        })
    }

    fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

impl std::fmt::Debug for MockGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let operations: Vec<_> = self.nodes.iter().map(Node::operation).collect();
        f.debug_struct("MockGraph").field("operations", &operations).finish()
    }
}

/// An instantiated mock graph.
pub struct MockGraphExec {
    nodes: Arc<[Node]>,
    pool: GraphPool<MockBackend>,
}

impl gpuhal_hal::GraphExec<MockBackend> for MockGraphExec {
    fn launch(&self, stream: &MockStream) -> Result<()> {
        check_device("GraphExec::launch", "stream", self.pool.device(), stream.device())?;
        stream.launch_nodes(&self.nodes)
    }

    fn update(&mut self, graph: &MockGraph) -> Result<()> {
        let _span = tracing::debug_span!("graph_update", nodes = graph.nodes.len()).entered();
        if !graph.pool.same_pool(&self.pool) && graph.pool.device() != self.pool.device() {
            return Err(Error::GraphUpdate {
                reason: "the update was captured on another device".into(),
            });
        }
        if let Some(reason) = shape_difference(&self.nodes, &graph.nodes) {
            return Err(Error::GraphUpdate { reason });
        }
        self.nodes = graph.nodes.clone();
        // The new parameters may name memory of the update's pool.
        self.pool = graph.pool.clone();
        Ok(())
    }
}

impl std::fmt::Debug for MockGraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGraphExec")
            .field("operations", &self.nodes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gpuhal_hal::{Device, Event, Fence, Graph, GraphExec, MemoryKind, Stream};

    use crate::{MockDevice, Profile};

    /// A replay goes to the worker as one queue item, yet an event recorded in its middle
    /// completes there: another stream waiting on it can signal what the rest of the
    /// graph waits for.
    #[test]
    fn an_event_recorded_inside_a_replay_completes_before_the_replay_ends() {
        let device = MockDevice::with_profile(Profile::Discrete).unwrap();
        let (s, t) = (device.create_stream().unwrap(), device.create_stream().unwrap());
        let buffer = device.allocate(4096, MemoryKind::Device, &s).unwrap();
        let (f, done) = (device.create_fence(0).unwrap(), device.create_fence(0).unwrap());
        let middle = device.event(false).unwrap();
        let pool = device.graph_pool();
        let timeout = Duration::from_secs(10);
        for round in 1..=3u64 {
            let (graph, ()) = s
                .capture(&pool, |s| {
                    s.fill(&buffer, 0, 2048, 1)?;
                    middle.record(s)?;
                    s.wait(&f, round)?;
                    s.fill(&buffer, 2048, 2048, 2)?;
                    s.signal(&done, round)
                })
                .unwrap();
            let exec = graph.instantiate().unwrap();
            exec.launch(&s).unwrap();
            t.wait_event(&middle).unwrap();
            t.signal(&f, round).unwrap();
            done.wait(round, timeout).unwrap();
        }
        let mut out = vec![0u8; 4096];
        s.read(&buffer, 0, &mut out).unwrap();
        assert!(out[..2048].iter().all(|&b| b == 1) && out[2048..].iter().all(|&b| b == 2));
    }
}
