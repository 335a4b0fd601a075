//! The traits a backend implements. Code generic over `B: Backend` is zero-cost: every
//! handle is a concrete associated type.

use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pool::{self, Allocator, CachingAllocator, StreamCache};
use crate::report::MemoryReport;
use crate::sharing::{SharedEvent, SharedImport, SharedMemory};
use crate::stats::{EventStats, ImportStats, MemoryStats};
use crate::types::{
    Advice, AsRegion, Capabilities, DeviceId, ImportPath, ImportPolicy, Location, ManagedPolicy, ManagedRangeInfo,
    MemoryKind, Region, StreamId,
};

/// Ties a backend's handle types together.
pub trait Backend: 'static + Sized + Send + Sync + std::fmt::Debug {
    /// Short name ("mock", "cuda", "vulkan").
    const NAME: &'static str;
    /// Native memory under the caching pool.
    type Memory: Allocator;
    /// An opened device.
    type Device: Device<Self>;
    /// An in-order queue of work.
    type Stream: Stream<Self>;
    /// A pooled, recordable marker.
    type Event: Event<Self>;
    /// A timeline counter.
    type Fence: Fence<Self>;
    /// A captured graph.
    type Graph: Graph<Self>;
    /// An instantiated graph, ready to launch.
    type GraphExec: GraphExec<Self>;
}

/// Memory from a backend's caching allocator.
pub type Buffer<B> = pool::Buffer<<B as Backend>::Memory>;
/// A backend's graph pool.
pub type GraphPool<B> = pool::GraphPool<<B as Backend>::Memory>;

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Process-wide identity.
    pub id: DeviceId,
    /// Backend name.
    pub backend: &'static str,
    /// Ordinal the device was opened with.
    pub ordinal: u32,
    /// Human-readable name (the GPU model, or the mock's profile).
    pub name: String,
    /// Total device memory in bytes.
    pub total_memory: u64,
}

/// Host memory imported for device use. The borrowed host memory cannot be freed or
/// unmapped while this lives; dropping it undoes the import (unregisters, frees the copy).
pub struct HostImport<'a> {
    region: Region,
    path: ImportPath,
    _undo: Box<dyn Send + Sync + 'a>,
    _host: PhantomData<&'a [u8]>,
}

impl<'a> HostImport<'a> {
    /// Builds an import. `undo` is dropped when the import is: its `Drop` undoes whatever
    /// the backend did (it may hold the device copy).
    pub fn new(region: Region, path: ImportPath, undo: Box<dyn Send + Sync + 'a>) -> Self {
        HostImport {
            region,
            path,
            _undo: undo,
            _host: PhantomData,
        }
    }

    /// The path taken.
    pub fn path(&self) -> ImportPath {
        self.path
    }

    /// The device address of the imported bytes.
    pub fn device_address(&self) -> u64 {
        self.region.address
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.region.len
    }

    /// True for an empty import.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }
}

impl AsRegion for HostImport<'_> {
    fn region(&self) -> Region {
        self.region
    }
}

impl std::fmt::Debug for HostImport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostImport")
            .field("path", &self.path)
            .field("address", &format_args!("{:#x}", self.region.address))
            .field("len", &self.region.len)
            .finish()
    }
}

/// An opened device: capabilities, the allocator, and factories for streams, events,
/// fences and graph pools.
pub trait Device<B: Backend<Device = Self>>: Send + Sync + Sized {
    /// What the device is.
    fn info(&self) -> &DeviceInfo;

    /// What the device can do, as read from it.
    fn capabilities(&self) -> Capabilities;

    /// The device's caching allocator.
    fn allocator(&self) -> &CachingAllocator<B::Memory>;

    /// A new stream.
    fn create_stream(&self) -> Result<B::Stream>;

    /// An event from the device's pool; `timing` enables [`Event::elapsed`].
    fn event(&self, timing: bool) -> Result<B::Event>;

    /// Event pool counters.
    fn event_stats(&self) -> EventStats;

    /// A new timeline fence starting at `initial`.
    fn create_fence(&self, initial: u64) -> Result<B::Fence>;

    /// The policy applied to new managed allocations.
    fn managed_policy(&self) -> ManagedPolicy;

    /// Replaces the managed-memory policy for allocations made from now on.
    fn set_managed_policy(&self, policy: ManagedPolicy);

    /// Applies placement advice to managed memory.
    fn advise(&self, region: &dyn AsRegion, advice: Advice) -> Result<()>;

    /// Prefetches managed memory to `to`, ordered on `stream`.
    fn prefetch(&self, region: &dyn AsRegion, to: Location, stream: &B::Stream) -> Result<()>;

    /// The advice and last prefetch location in effect on a managed range, read back from
    /// the device (so tests can prove a [`ManagedPolicy`] was applied).
    fn managed_range_info(&self, region: &dyn AsRegion) -> Result<ManagedRangeInfo>;

    /// Makes `host` (an mmap'd file, say) usable by the device by the cheapest path
    /// `policy` allows: `Coherent`, then `Registered`, then `Copied`. The result says
    /// which was taken; a refused copy is [`Error::ImportRefused`].
    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &B::Stream) -> Result<HostImport<'a>>;

    /// Host import counters.
    fn import_stats(&self) -> ImportStats;

    /// Free and total device memory, in bytes, as the device reports them.
    fn memory_info(&self) -> Result<(u64, u64)>;

    /// Waits for all work on the device. Never used by the allocator.
    fn synchronize(&self) -> Result<()>;

    /// Whether this device could be given access to `peer`'s memory
    /// ([`enable_peer_access`](Self::enable_peer_access)). False for the device itself and
    /// on backends without [`Capabilities::PEER_ACCESS`].
    fn can_access_peer(&self, peer: &B::Device) -> bool {
        let _ = peer;
        false
    }

    /// Gives this device's streams access to `peer`'s memory: from then on they may copy
    /// from and to `peer`'s buffers (CUDA: `cuCtxEnablePeerAccess`, and the peer's pool
    /// access descriptors). One direction only: call it on `peer` too for the other.
    /// Enabling it twice is not an error. Without it, such an operation fails with
    /// [`Error::PeerAccess`] naming both devices.
    ///
    /// Waiting on another device's event needs no peer access
    /// ([`Stream::wait_event`]).
    fn enable_peer_access(&self, peer: &B::Device) -> Result<()> {
        let _ = peer;
        Err(Error::Unsupported {
            operation: "enable_peer_access",
            needed: Capabilities::PEER_ACCESS,
        })
    }

    /// Exports `buffer` (device memory of this device, opened with sharing enabled) for
    /// another process or device. The exporter keeps the memory alive: `buffer` must
    /// outlive every import of it (see [`sharing`](crate::sharing)). Order the importer
    /// after the exporter's writes with a [`shared_event`](Self::shared_event).
    fn export(&self, buffer: &Buffer<B>) -> Result<SharedMemory> {
        let _ = buffer;
        Err(Error::Unsupported {
            operation: "export",
            needed: Capabilities::IPC,
        })
    }

    /// Opens memory another process (or device) exported, for this device's streams. The
    /// import keeps nothing alive on the exporter's side (see [`sharing`](crate::sharing)).
    fn import_shared(&self, handle: &SharedMemory) -> Result<SharedImport> {
        let _ = handle;
        Err(Error::Unsupported {
            operation: "import_shared",
            needed: Capabilities::IPC,
        })
    }

    /// A new interprocess event (no timing) and its handle for the other side. Record
    /// and wait on it as on any event; the other side opens it with
    /// [`import_event`](Self::import_event). Not drawn from the event pool. The event
    /// returned here must outlive every event opened from its handle.
    fn shared_event(&self) -> Result<(B::Event, SharedEvent)> {
        Err(Error::Unsupported {
            operation: "shared_event",
            needed: Capabilities::IPC,
        })
    }

    /// Opens an interprocess event made by another process (or device).
    fn import_event(&self, handle: &SharedEvent) -> Result<B::Event> {
        let _ = handle;
        Err(Error::Unsupported {
            operation: "import_event",
            needed: Capabilities::IPC,
        })
    }

    /// Process-wide identity.
    fn id(&self) -> DeviceId {
        self.info().id
    }

    /// Allocates `len` bytes of `kind` on `stream` from the caching allocator.
    fn allocate(&self, len: u64, kind: MemoryKind, stream: &B::Stream) -> Result<Buffer<B>> {
        let needed = kind.required_capability();
        if !self.capabilities().contains(needed) {
            return Err(Error::Unsupported {
                operation: "allocate",
                needed,
            });
        }
        check_device("allocate", "stream", self.id(), stream.device_id())?;
        self.allocator().allocate(len, kind, stream.cache())
    }

    /// A new graph pool for captures on this device.
    fn graph_pool(&self) -> GraphPool<B> {
        pool::GraphPool::new(self.allocator())
    }

    /// Allocator statistics.
    fn memory_stats(&self) -> MemoryStats {
        self.allocator().stats()
    }

    /// What holds the device's memory: the allocator's report (every native allocation
    /// with its pieces, per-stream and per-kind totals, graph pools) with the event pool.
    fn memory_report(&self) -> MemoryReport {
        let mut report = self.allocator().report();
        report.events = Some(self.event_stats());
        report
    }
}

/// An in-order queue of work.
///
/// `write` and `read` move bytes between host and device and return once the host slice
/// is no longer needed (`read` waits for the stream's earlier work). They, and
/// `synchronize`, cannot be captured: issued on a capturing stream they fail with
/// [`Error::CaptureInvalidated`], abandon the capture and leave the stream usable.
pub trait Stream<B: Backend<Stream = Self>>: Send + Sync + Sized {
    /// Process-wide identity.
    fn id(&self) -> StreamId;

    /// The device the stream belongs to.
    fn device_id(&self) -> DeviceId;

    /// The stream's cache in the device allocator.
    fn cache(&self) -> &StreamCache<B::Memory>;

    /// Copies `data` into `dst` at `offset`.
    fn write(&self, dst: &dyn AsRegion, offset: u64, data: &[u8]) -> Result<()>;

    /// Copies from `src` at `offset` into `out`, after the stream's earlier work.
    fn read(&self, src: &dyn AsRegion, offset: u64, out: &mut [u8]) -> Result<()>;

    /// Copies `len` bytes between device regions. Either may belong to a peer device
    /// this stream's device was given access to ([`Device::enable_peer_access`]); without
    /// access the copy fails with [`Error::PeerAccess`] naming both devices.
    fn copy(&self, src: &dyn AsRegion, src_offset: u64, dst: &dyn AsRegion, dst_offset: u64, len: u64) -> Result<()>;

    /// Sets `len` bytes of `dst` from `offset` to `value`.
    fn fill(&self, dst: &dyn AsRegion, offset: u64, len: u64, value: u8) -> Result<()>;

    /// Waits on the CPU until the stream's work so far has completed.
    fn synchronize(&self) -> Result<()>;

    /// Makes later work on this stream wait for `event` (on the device). The event may
    /// belong to another device of this process, or be an imported interprocess event:
    /// cross-device ordering needs no peer access.
    fn wait_event(&self, event: &B::Event) -> Result<()>;

    /// Enqueues a signal of `fence` to `value`.
    fn signal(&self, fence: &B::Fence, value: u64) -> Result<()>;

    /// Makes later work on this stream wait until `fence` reaches `value` (on the device).
    fn wait(&self, fence: &B::Fence, value: u64) -> Result<()>;

    /// Starts capturing this stream's work into a graph; allocations made on it until
    /// [`end_capture`](Self::end_capture) come from `pool`.
    fn begin_capture(&self, pool: &GraphPool<B>) -> Result<()>;

    /// Ends the capture and returns the graph.
    fn end_capture(&self) -> Result<B::Graph>;

    /// Whether a capture is in progress.
    fn is_capturing(&self) -> bool;

    /// Captures what `body` enqueues on this stream. If `body` fails, the capture is
    /// abandoned and its error returned.
    fn capture<T>(&self, pool: &GraphPool<B>, body: impl FnOnce(&Self) -> Result<T>) -> Result<(B::Graph, T)> {
        self.begin_capture(pool)?;
        match body(self) {
            Ok(value) => Ok((self.end_capture()?, value)),
            Err(err) => {
                if self.is_capturing() {
                    // The body's error is the one worth reporting.
                    let _ = self.end_capture();
                }
                Err(err)
            }
        }
    }
}

/// A pooled, recordable marker in a stream's work. Dropping it returns it to the pool.
pub trait Event<B: Backend<Event = Self>>: Send + Sync {
    /// Marks the current end of `stream`'s work.
    fn record(&self, stream: &B::Stream) -> Result<()>;

    /// Waits on the CPU until the recorded work has completed. An event never recorded
    /// is complete.
    fn synchronize(&self) -> Result<()>;

    /// Whether the recorded work has completed.
    fn is_complete(&self) -> Result<bool>;

    /// Time between `self` (recorded first) and `end`. Both need timing.
    fn elapsed(&self, end: &Self) -> Result<Duration>;

    /// Whether the event records timing.
    fn has_timing(&self) -> bool;
}

/// A timeline counter: a u64 that only grows, signalled and awaited by streams and the CPU.
///
/// Signalling a value lower than one already signalled (or enqueued) is
/// [`Error::FenceRegressed`]; signalling the same value again changes nothing.
pub trait Fence<B: Backend<Fence = Self>>: Send + Sync {
    /// The value reached so far.
    fn value(&self) -> Result<u64>;

    /// Sets the value from the CPU, releasing streams and CPU threads waiting for it.
    fn signal(&self, value: u64) -> Result<()>;

    /// Blocks the calling thread until the fence reaches `value` or `timeout` passes
    /// ([`Error::Timeout`]; the fence stays usable).
    fn wait(&self, value: u64, timeout: Duration) -> Result<()>;
}

/// A captured graph.
pub trait Graph<B: Backend<Graph = Self>>: Send + Sync {
    /// Makes an executable graph.
    fn instantiate(&self) -> Result<B::GraphExec>;

    /// Number of operations captured.
    fn node_count(&self) -> usize;
}

/// An executable graph.
pub trait GraphExec<B: Backend<GraphExec = Self>>: Send + Sync {
    /// Enqueues one replay on `stream`.
    fn launch(&self, stream: &B::Stream) -> Result<()>;

    /// Replaces the parameters with those of `graph`, a capture of the same shape;
    /// [`Error::GraphUpdate`] otherwise (this exec is unchanged then).
    fn update(&mut self, graph: &B::Graph) -> Result<()>;
}

/// [`Error::ForeignHandle`] unless `found` is `expected`.
pub fn check_device(operation: &'static str, what: &'static str, expected: DeviceId, found: DeviceId) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::ForeignHandle {
            operation,
            what,
            expected: expected.0,
            found: found.0,
        })
    }
}
