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
