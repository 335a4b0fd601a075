//! Graphs: captured stream work (`CUgraph`) and its executable form (`CUgraphExec`).
//! Both keep the [`GraphPool`] their captures allocated from alive, since replays touch
//! that memory.

use std::sync::Arc;

use gpuhal_hal::{check_device, DeviceId, Error, GraphPool, Result};

use crate::context::Context;
use crate::error::Context as _;
use crate::raw::{self, CUgraph, CUgraphExec};
use crate::stream::CudaStream;
use crate::CudaBackend;

/// A captured graph.
pub struct CudaGraph {
    raw: CUgraph,
    nodes: usize,
    pool: GraphPool<CudaBackend>,
    ctx: Arc<Context>,
    device: DeviceId,
}

// SAFETY: graph handles may be used from any thread; gpuhal never mutates a captured graph, only reads it (node count, instantiate, update source).
unsafe impl Send for CudaGraph {}
// SAFETY: as above.
unsafe impl Sync for CudaGraph {}

impl CudaGraph {
    pub(crate) fn new(raw: CUgraph, pool: GraphPool<CudaBackend>, ctx: Arc<Context>, device: DeviceId) -> Result<Self> {
        let nodes = match raw::graph_node_count(raw) {
            Ok(nodes) => nodes,
            Err(native) => {
                let _ = raw::graph_destroy(raw);
                return Err(Error::native("counting the nodes of a captured graph", native));
            }
        };
        Ok(CudaGraph {
            raw,
            nodes,
            pool,
            ctx,
            device,
        })
    }

    /// The native graph.
    pub fn raw(&self) -> CUgraph {
        self.raw
    }

    /// The pool the capture allocated from.
    pub fn pool(&self) -> &GraphPool<CudaBackend> {
        &self.pool
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            let _ = raw::graph_destroy(self.raw);
        }
    }
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph")
            .field("device", &self.device)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl gpuhal_hal::Graph<CudaBackend> for CudaGraph {
    fn instantiate(&self) -> Result<CudaGraphExec> {
        let _span = tracing::debug_span!("graph_instantiate").entered();
        self.ctx.bind()?;
        let exec = raw::graph_instantiate(self.raw).context(|| {
            format!(
                "instantiating a graph of {} nodes on device {}",
                self.nodes, self.device
            )
        })?;
        Ok(CudaGraphExec {
            raw: exec,
            nodes: self.nodes,
            pools: vec![self.pool.clone()],
            ctx: self.ctx.clone(),
            device: self.device,
        })
    }

    fn node_count(&self) -> usize {
        self.nodes
    }
}

/// An executable graph.
pub struct CudaGraphExec {
    raw: CUgraphExec,
    nodes: usize,
    /// Pools of every graph this exec was made or updated from.
    pools: Vec<GraphPool<CudaBackend>>,
    ctx: Arc<Context>,
    device: DeviceId,
}

// SAFETY: executable graph handles may be launched from any thread; `update` takes `&mut self`, so it never races a launch through this handle.
unsafe impl Send for CudaGraphExec {}
// SAFETY: as above.
unsafe impl Sync for CudaGraphExec {}

impl CudaGraphExec {
    /// The native executable graph.
    pub fn raw(&self) -> CUgraphExec {
        self.raw
    }
}

impl Drop for CudaGraphExec {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            let _ = raw::graph_exec_destroy(self.raw);
        }
    }
}

impl std::fmt::Debug for CudaGraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraphExec")
            .field("device", &self.device)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl gpuhal_hal::GraphExec<CudaBackend> for CudaGraphExec {
    fn launch(&self, stream: &CudaStream) -> Result<()> {
        check_device("GraphExec::launch", "stream", self.device, stream.device_id_inner())?;
        stream.bind()?;
        raw::graph_launch(self.raw, stream.raw()).context(|| {
            format!(
                "launching a graph of {} nodes on stream {}",
                self.nodes,
                stream.id_inner().0
            )
        })
    }

    fn update(&mut self, graph: &CudaGraph) -> Result<()> {
        let _span = tracing::debug_span!("graph_update").entered();
        check_device("GraphExec::update", "graph", self.device, graph.device)?;
        self.ctx.bind()?;
        match raw::graph_exec_update(self.raw, graph.raw).context(|| {
            format!(
                "updating a graph exec of {} nodes from a graph of {}",
                self.nodes, graph.nodes
            )
        })? {
            Ok(()) => {
                if !self.pools.iter().any(|p| p.same_pool(&graph.pool)) {
                    self.pools.push(graph.pool.clone());
                }
                Ok(())
            }
            Err((status, verdict)) => Err(Error::GraphUpdate {
                reason: format!(
                    "cuGraphExecUpdate_v2 returned {status:?} ({verdict:?}): the new graph ({} nodes) does not have \
                     the shape of the one this exec was made from ({} nodes)",
                    graph.nodes, self.nodes
                ),
            }),
        }
    }
}
