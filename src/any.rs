//! Run-time choice among the backends compiled in.
//!
//! Each `Any*` enum has one variant per compiled-in backend, holding that backend's own
//! handle in a thin newtype ([`DeviceOf`], [`StreamOf`] …). The operations live in the
//! `Dyn*` traits, implemented once, generically, for the newtypes, and delegated to by
//! `enum_dispatch`. An operation that takes a second handle (a stream to allocate on, a
//! buffer to write) projects it onto the receiver's backend first; a handle from another
//! backend is [`Error::BackendMismatch`], never a panic.

use std::time::Duration;

use enum_dispatch::enum_dispatch;
use gpuhal_hal::{
    Backend, Buffer, Capabilities, Device, DeviceId, DeviceInfo, Error, Event, EventStats, Fence, Graph, GraphExec,
    GraphPool, HostImport, ImportPolicy, ImportStats, ManagedPolicy, MemoryKind, MemoryReport, MemoryStats, Region,
    Result, SharedEvent, SharedImport, SharedMemory, SleepReport, Stream, StreamId, WakeReport,
};

mod sealed {
    pub trait Sealed {}
}

/// A backend compiled into the facade: how its handles go into, and come out of, the
/// `Any*` enums. Implemented for each backend the crate's features enable; it cannot be
/// implemented outside this crate.
pub trait CompiledBackend: Backend + sealed::Sealed {
    /// Wraps a device.
    fn wrap_device(device: Self::Device) -> AnyDevice;
    /// Wraps a stream.
    fn wrap_stream(stream: Self::Stream) -> AnyStream;
    /// Wraps a buffer.
    fn wrap_buffer(buffer: Buffer<Self>) -> AnyBuffer;
    /// Wraps an event.
    fn wrap_event(event: Self::Event) -> AnyEvent;
    /// Wraps a fence.
    fn wrap_fence(fence: Self::Fence) -> AnyFence;
    /// Wraps a graph pool.
    fn wrap_graph_pool(pool: GraphPool<Self>) -> AnyGraphPool;
    /// Wraps a captured graph.
    fn wrap_graph(graph: Self::Graph) -> AnyGraph;
    /// Wraps an executable graph.
    fn wrap_graph_exec(exec: Self::GraphExec) -> AnyGraphExec;
    /// This backend's device inside `any`, if it is one.
    fn device_of(any: &AnyDevice) -> Option<&Self::Device>;
    /// This backend's stream inside `any`, or [`Error::BackendMismatch`] naming `operation`.
    fn stream_of<'a>(any: &'a AnyStream, operation: &'static str) -> Result<&'a Self::Stream>;
    /// This backend's buffer inside `any`, or [`Error::BackendMismatch`].
    fn buffer_of<'a>(any: &'a AnyBuffer, operation: &'static str) -> Result<&'a Buffer<Self>>;
    /// This backend's event inside `any`, or [`Error::BackendMismatch`].
    fn event_of<'a>(any: &'a AnyEvent, operation: &'static str) -> Result<&'a Self::Event>;
    /// This backend's fence inside `any`, or [`Error::BackendMismatch`].
    fn fence_of<'a>(any: &'a AnyFence, operation: &'static str) -> Result<&'a Self::Fence>;
    /// This backend's graph pool inside `any`, or [`Error::BackendMismatch`].
    fn graph_pool_of<'a>(any: &'a AnyGraphPool, operation: &'static str) -> Result<&'a GraphPool<Self>>;
    /// This backend's graph inside `any`, or [`Error::BackendMismatch`].
    fn graph_of<'a>(any: &'a AnyGraph, operation: &'static str) -> Result<&'a Self::Graph>;
    /// Whether the native API is capturing `stream` (CUDA asks the driver; backends where
    /// only gpuhal begins captures answer from gpuhal's state).
    fn native_capture(stream: &Self::Stream) -> Result<bool> {
        Ok(stream.is_capturing())
    }
}

/// A device of backend `B`, as held by [`AnyDevice`].
pub struct DeviceOf<B: Backend>(pub B::Device);
/// A stream of backend `B`, as held by [`AnyStream`].
pub struct StreamOf<B: Backend>(pub B::Stream);
/// A buffer of backend `B`, as held by [`AnyBuffer`].
pub struct BufferOf<B: Backend>(pub Buffer<B>);
/// An event of backend `B`, as held by [`AnyEvent`].
pub struct EventOf<B: Backend>(pub B::Event);
/// A fence of backend `B`, as held by [`AnyFence`].
pub struct FenceOf<B: Backend>(pub B::Fence);
/// A graph pool of backend `B`, as held by [`AnyGraphPool`].
pub struct GraphPoolOf<B: Backend>(pub GraphPool<B>);
/// A captured graph of backend `B`, as held by [`AnyGraph`].
pub struct GraphOf<B: Backend>(pub B::Graph);
/// An executable graph of backend `B`, as held by [`AnyGraphExec`].
pub struct GraphExecOf<B: Backend>(pub B::GraphExec);

macro_rules! debug_by_backend {
    ($($newtype:ident),*) => {$(
        impl<B: Backend> std::fmt::Debug for $newtype<B> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($newtype), "<{}>"), B::NAME)
            }
        }
    )*};
}
debug_by_backend!(DeviceOf, StreamOf, EventOf, FenceOf, GraphPoolOf, GraphOf, GraphExecOf);

impl<B: Backend> Clone for GraphPoolOf<B> {
    fn clone(&self) -> Self {
        GraphPoolOf(self.0.clone())
    }
}

impl<B: Backend> std::fmt::Debug for BufferOf<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple(&format!("BufferOf<{}>", B::NAME)).field(&self.0).finish()
    }
}

/// Device operations, whatever the backend. Implemented by [`AnyDevice`].
#[enum_dispatch]
pub trait DynDevice {
    /// The backend's name ("mock", "cuda", "vulkan").
    fn backend(&self) -> &'static str;
    /// What the device is.
    fn info(&self) -> &DeviceInfo;
    /// What the device can do, as read from it.
    fn capabilities(&self) -> Capabilities;
    /// A new stream.
    fn create_stream(&self) -> Result<AnyStream>;
    /// Allocates `len` bytes of `kind` on `stream` from the device's caching allocator.
    fn allocate(&self, len: u64, kind: MemoryKind, stream: &AnyStream) -> Result<AnyBuffer>;
    /// An event from the device's pool; `timing` enables [`DynEvent::elapsed`].
    fn event(&self, timing: bool) -> Result<AnyEvent>;
    /// A new timeline fence starting at `initial`.
    fn create_fence(&self, initial: u64) -> Result<AnyFence>;
    /// Allocator statistics.
    fn memory_stats(&self) -> MemoryStats;
    /// What holds the device's memory, allocation by allocation (see [`MemoryReport`]).
    fn memory_report(&self) -> MemoryReport;
    /// Records every allocation and free from now on into `recorder` (the trace format of
    /// `gpuhal_hal::trace`), replacing a recording already running.
    fn start_trace(&self, recorder: gpuhal_hal::trace::TraceRecorder);
    /// Stops recording and returns the recorder, flushed (`None` if none was running).
    fn stop_trace(&self) -> Option<gpuhal_hal::trace::TraceRecorder>;
    /// Event pool counters.
    fn event_stats(&self) -> EventStats;
    /// Host import counters.
    fn import_stats(&self) -> ImportStats;
    /// Releases idle cached memory; returns the bytes released.
    fn trim(&self) -> u64;
    /// Limits the bytes the allocator may reserve (`None`: no limit).
    fn set_memory_limit(&self, limit: Option<u64>);
    /// Free and total device memory, in bytes, as the device reports them.
    fn memory_info(&self) -> Result<(u64, u64)>;
    /// Waits for all work on the device.
    fn synchronize(&self) -> Result<()>;
    /// Bounds the bytes held idle in the cache (`None`: no bound).
    fn set_cache_limit(&self, limit: Option<u64>);
    /// Sets the allocator's reserve slack (see [`PoolConfig::reserve_slack`](crate::PoolConfig)).
    fn set_reserve_slack(&self, slack: f64);
    /// Sets the allocator's reserve floor (see [`PoolConfig::reserve_floor`](crate::PoolConfig)).
    fn set_reserve_floor(&self, bytes: u64);
    /// The policy applied to new managed allocations.
    fn managed_policy(&self) -> ManagedPolicy;
    /// Replaces the managed-memory policy for allocations made from now on.
    fn set_managed_policy(&self, policy: ManagedPolicy);
    /// A new graph pool, for captures on this device's streams.
    fn graph_pool(&self) -> AnyGraphPool;
    /// Makes `host` usable by the device by the cheapest path `policy` allows (see
    /// [`Device::import_host`]).
    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &AnyStream) -> Result<HostImport<'a>>;
    /// Puts the device's memory to sleep, keeping the contents of `keep` (see
    /// [`CachingAllocator::sleep`](crate::CachingAllocator::sleep)): needs growable
    /// segments, [`Error::Unsupported`] otherwise; a buffer of another backend is
    /// [`Error::BackendMismatch`].
    fn sleep(&self, keep: &[&AnyBuffer]) -> Result<SleepReport>;
    /// Wakes memory put to sleep, restoring what was kept (see
    /// [`CachingAllocator::wake`](crate::CachingAllocator::wake)).
    fn wake(&self) -> Result<WakeReport>;
    /// Whether this device could be given access to `peer`'s memory (see
    /// [`Device::can_access_peer`]); false for a device of another backend.
    fn can_access_peer(&self, peer: &AnyDevice) -> bool;
    /// Gives this device's streams access to `peer`'s memory (see
    /// [`Device::enable_peer_access`]).
    fn enable_peer_access(&self, peer: &AnyDevice) -> Result<()>;
    /// Exports `buffer` for another process or device (see [`Device::export`]): the
    /// device must have been opened with [`AnyDevice::open_shared`], and `buffer` must
    /// outlive every import of it.
    fn export(&self, buffer: &AnyBuffer) -> Result<SharedMemory>;
    /// Opens memory another process or device exported, for this device's streams (see
    /// [`Device::import_shared`]).
    fn import_shared(&self, handle: &SharedMemory) -> Result<AnyImport>;
    /// A new interprocess event and its handle for the other side (see
    /// [`Device::shared_event`]).
    fn shared_event(&self) -> Result<(AnyEvent, SharedEvent)>;
    /// Opens an interprocess event made by another process or device (see
    /// [`Device::import_event`]).
    fn import_event(&self, handle: &SharedEvent) -> Result<AnyEvent>;
}

/// Stream operations, whatever the backend. Implemented by [`AnyStream`].
#[enum_dispatch]
pub trait DynStream {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Process-wide identity.
    fn id(&self) -> StreamId;
    /// The device the stream belongs to.
    fn device_id(&self) -> DeviceId;
    /// Copies `data` into `dst` (a buffer or an import) at `offset`.
    fn write(&self, dst: &dyn Addressable, offset: u64, data: &[u8]) -> Result<()>;
    /// Copies from `src` at `offset` into `out`, after the stream's earlier work.
    fn read(&self, src: &dyn Addressable, offset: u64, out: &mut [u8]) -> Result<()>;
    /// Copies `len` bytes between buffers or imports (a peer device's too, once access
    /// is enabled: [`DynDevice::enable_peer_access`]).
    fn copy(
        &self,
        src: &dyn Addressable,
        src_offset: u64,
        dst: &dyn Addressable,
        dst_offset: u64,
        len: u64,
    ) -> Result<()>;
    /// Sets `len` bytes of `dst` from `offset` to `value`.
    fn fill(&self, dst: &dyn Addressable, offset: u64, len: u64, value: u8) -> Result<()>;
    /// Waits on the CPU until the stream's work so far has completed.
    fn synchronize(&self) -> Result<()>;
    /// Makes later work on this stream wait for `event`.
    fn wait_event(&self, event: &AnyEvent) -> Result<()>;
    /// Enqueues a signal of `fence` to `value`.
    fn signal(&self, fence: &AnyFence, value: u64) -> Result<()>;
    /// Makes later work on this stream wait until `fence` reaches `value`.
    fn wait(&self, fence: &AnyFence, value: u64) -> Result<()>;
    /// Starts capturing this stream's work; its allocations until
    /// [`end_capture`](Self::end_capture) come from `pool`.
    fn begin_capture(&self, pool: &AnyGraphPool) -> Result<()>;
    /// Ends the capture and returns the graph.
    fn end_capture(&self) -> Result<AnyGraph>;
    /// Whether a capture is in progress.
    fn is_capturing(&self) -> bool;
    /// Serves this stream's allocations from `pool` (`None`: from its cache again) without
    /// beginning a capture: for captures a framework begins itself on an adopted stream
    /// (PyTorch's `torch.cuda.graph`), so what they allocate stays in the pool and is not
    /// handed to eager work while the graph may still replay.
    fn route_allocations(&self, pool: Option<&AnyGraphPool>) -> Result<()>;
    /// Whether the native API is capturing this stream, whoever began the capture (only
    /// CUDA has captures begun outside gpuhal; elsewhere this is gpuhal's own state).
    fn is_capturing_natively(&self) -> Result<bool>;
}

/// Captured graph operations, whatever the backend. Implemented by [`AnyGraph`].
#[enum_dispatch]
pub trait DynGraph {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Makes an executable graph.
    fn instantiate(&self) -> Result<AnyGraphExec>;
    /// Number of operations captured.
    fn node_count(&self) -> usize;
}

/// Executable graph operations, whatever the backend. Implemented by [`AnyGraphExec`].
#[enum_dispatch]
pub trait DynGraphExec {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Enqueues one replay on `stream`.
    fn launch(&self, stream: &AnyStream) -> Result<()>;
    /// Takes the parameters of `graph`, a capture of the same shape.
    fn update(&mut self, graph: &AnyGraph) -> Result<()>;
}

/// Graph pool operations, whatever the backend. Implemented by [`AnyGraphPool`].
#[enum_dispatch]
pub trait DynGraphPool {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// The device whose allocator the pool draws on.
    fn device(&self) -> DeviceId;
    /// The pool's memory: what its captures hold, live and idle.
    fn stats(&self) -> MemoryStats;
}

/// Buffer queries, whatever the backend. Implemented by [`AnyBuffer`].
#[enum_dispatch]
pub trait DynBuffer {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Length in bytes, as requested.
    fn len(&self) -> u64;
    /// True for a zero-size buffer.
    fn is_empty(&self) -> bool;
    /// Device address.
    fn address(&self) -> u64;
    /// The kind of memory.
    fn kind(&self) -> MemoryKind;
    /// The device the buffer belongs to.
    fn device(&self) -> DeviceId;
    /// Marks the buffer as used on `stream`, so it is not reused before that work ends.
    fn record_use(&self, stream: &AnyStream) -> Result<()>;
    /// The buffer's memory, as the backend's streams address it.
    fn region(&self) -> Region;
}

/// Event operations, whatever the backend. Implemented by [`AnyEvent`].
#[enum_dispatch]
pub trait DynEvent {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Marks the current end of `stream`'s work.
    fn record(&self, stream: &AnyStream) -> Result<()>;
    /// Waits on the CPU until the recorded work has completed.
    fn synchronize(&self) -> Result<()>;
    /// Whether the recorded work has completed.
    fn is_complete(&self) -> Result<bool>;
    /// Time between `self` (recorded first) and `end`; both need timing.
    fn elapsed(&self, end: &AnyEvent) -> Result<Duration>;
    /// Whether the event records timing.
    fn has_timing(&self) -> bool;
}

/// Fence operations, whatever the backend. Implemented by [`AnyFence`].
#[enum_dispatch]
pub trait DynFence {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// The value reached so far.
    fn value(&self) -> Result<u64>;
    /// Sets the value from the CPU.
    fn signal(&self, value: u64) -> Result<()>;
    /// Blocks until the fence reaches `value` or `timeout` passes.
    fn wait(&self, value: u64, timeout: Duration) -> Result<()>;
}

impl<B: CompiledBackend> DynDevice for DeviceOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn info(&self) -> &DeviceInfo {
        self.0.info()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn create_stream(&self) -> Result<AnyStream> {
        self.0.create_stream().map(B::wrap_stream)
    }
    fn allocate(&self, len: u64, kind: MemoryKind, stream: &AnyStream) -> Result<AnyBuffer> {
        let stream = B::stream_of(stream, "allocate")?;
        self.0.allocate(len, kind, stream).map(B::wrap_buffer)
    }
    fn event(&self, timing: bool) -> Result<AnyEvent> {
        self.0.event(timing).map(B::wrap_event)
    }
    fn create_fence(&self, initial: u64) -> Result<AnyFence> {
        self.0.create_fence(initial).map(B::wrap_fence)
    }
    fn memory_stats(&self) -> MemoryStats {
        self.0.memory_stats()
    }
    fn memory_report(&self) -> MemoryReport {
        self.0.memory_report()
    }
    fn start_trace(&self, recorder: gpuhal_hal::trace::TraceRecorder) {
        self.0.allocator().start_trace(recorder)
    }
    fn stop_trace(&self) -> Option<gpuhal_hal::trace::TraceRecorder> {
        self.0.allocator().stop_trace()
    }
    fn event_stats(&self) -> EventStats {
        self.0.event_stats()
    }
    fn import_stats(&self) -> ImportStats {
        self.0.import_stats()
    }
    fn trim(&self) -> u64 {
        self.0.allocator().trim()
    }
    fn set_memory_limit(&self, limit: Option<u64>) {
        self.0.allocator().set_memory_limit(limit)
    }
    fn memory_info(&self) -> Result<(u64, u64)> {
        self.0.memory_info()
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
    fn set_cache_limit(&self, limit: Option<u64>) {
        self.0.allocator().set_cache_limit(limit)
    }
    fn set_reserve_slack(&self, slack: f64) {
        self.0.allocator().set_reserve_slack(slack)
    }
    fn set_reserve_floor(&self, bytes: u64) {
        self.0.allocator().set_reserve_floor(bytes)
    }
    fn managed_policy(&self) -> ManagedPolicy {
        self.0.managed_policy()
    }
    fn set_managed_policy(&self, policy: ManagedPolicy) {
        self.0.set_managed_policy(policy)
    }
    fn graph_pool(&self) -> AnyGraphPool {
        B::wrap_graph_pool(self.0.graph_pool())
    }
    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &AnyStream) -> Result<HostImport<'a>> {
        self.0.import_host(host, policy, B::stream_of(stream, "import_host")?)
    }
    fn sleep(&self, keep: &[&AnyBuffer]) -> Result<SleepReport> {
        let keep = keep
            .iter()
            .map(|buffer| B::buffer_of(buffer, "sleep"))
            .collect::<Result<Vec<_>>>()?;
        self.0.allocator().sleep(&keep)
    }
    fn wake(&self) -> Result<WakeReport> {
        self.0.allocator().wake()
    }
    fn can_access_peer(&self, peer: &AnyDevice) -> bool {
        B::device_of(peer).is_some_and(|peer| self.0.can_access_peer(peer))
    }
    fn enable_peer_access(&self, peer: &AnyDevice) -> Result<()> {
        let peer = B::device_of(peer).ok_or_else(|| mismatch("enable_peer_access", B::NAME, peer.backend()))?;
        self.0.enable_peer_access(peer)
    }
    fn export(&self, buffer: &AnyBuffer) -> Result<SharedMemory> {
        self.0.export(B::buffer_of(buffer, "export")?)
    }
    fn import_shared(&self, handle: &SharedMemory) -> Result<AnyImport> {
        let import = self.0.import_shared(handle)?;
        Ok(AnyImport {
            backend: B::NAME,
            import,
        })
    }
    fn shared_event(&self) -> Result<(AnyEvent, SharedEvent)> {
        let (event, handle) = self.0.shared_event()?;
        Ok((B::wrap_event(event), handle))
    }
    fn import_event(&self, handle: &SharedEvent) -> Result<AnyEvent> {
        self.0.import_event(handle).map(B::wrap_event)
    }
}

impl<B: CompiledBackend> DynStream for StreamOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn id(&self) -> StreamId {
        self.0.id()
    }
    fn device_id(&self) -> DeviceId {
        self.0.device_id()
    }
    fn write(&self, dst: &dyn Addressable, offset: u64, data: &[u8]) -> Result<()> {
        self.0.write(&region_of::<B>(dst, "write")?, offset, data)
    }
    fn read(&self, src: &dyn Addressable, offset: u64, out: &mut [u8]) -> Result<()> {
        self.0.read(&region_of::<B>(src, "read")?, offset, out)
    }
    fn copy(
        &self,
        src: &dyn Addressable,
        src_offset: u64,
        dst: &dyn Addressable,
        dst_offset: u64,
        len: u64,
    ) -> Result<()> {
        let src = region_of::<B>(src, "copy")?;
        let dst = region_of::<B>(dst, "copy")?;
        self.0.copy(&src, src_offset, &dst, dst_offset, len)
    }
    fn fill(&self, dst: &dyn Addressable, offset: u64, len: u64, value: u8) -> Result<()> {
        self.0.fill(&region_of::<B>(dst, "fill")?, offset, len, value)
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
    fn wait_event(&self, event: &AnyEvent) -> Result<()> {
        self.0.wait_event(B::event_of(event, "wait_event")?)
    }
    fn signal(&self, fence: &AnyFence, value: u64) -> Result<()> {
        self.0.signal(B::fence_of(fence, "signal")?, value)
    }
    fn wait(&self, fence: &AnyFence, value: u64) -> Result<()> {
        self.0.wait(B::fence_of(fence, "wait")?, value)
    }
    fn begin_capture(&self, pool: &AnyGraphPool) -> Result<()> {
        self.0.begin_capture(B::graph_pool_of(pool, "begin_capture")?)
    }
    fn end_capture(&self) -> Result<AnyGraph> {
        self.0.end_capture().map(B::wrap_graph)
    }
    fn is_capturing(&self) -> bool {
        self.0.is_capturing()
    }
    fn route_allocations(&self, pool: Option<&AnyGraphPool>) -> Result<()> {
        match pool {
            Some(pool) => {
                let pool = B::graph_pool_of(pool, "route_allocations")?;
                gpuhal_hal::check_device("route_allocations", "graph pool", self.0.device_id(), pool.device())?;
                self.0.cache().begin_capture(pool.clone());
            }
            None => {
                self.0.cache().end_capture();
            }
        }
        Ok(())
    }
    fn is_capturing_natively(&self) -> Result<bool> {
        B::native_capture(&self.0)
    }
}

impl<B: CompiledBackend> DynGraph for GraphOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn instantiate(&self) -> Result<AnyGraphExec> {
        self.0.instantiate().map(B::wrap_graph_exec)
    }
    fn node_count(&self) -> usize {
        self.0.node_count()
    }
}

impl<B: CompiledBackend> DynGraphExec for GraphExecOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn launch(&self, stream: &AnyStream) -> Result<()> {
        self.0.launch(B::stream_of(stream, "launch")?)
    }
    fn update(&mut self, graph: &AnyGraph) -> Result<()> {
        self.0.update(B::graph_of(graph, "update")?)
    }
}

impl<B: CompiledBackend> DynGraphPool for GraphPoolOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn device(&self) -> DeviceId {
        self.0.device()
    }
    fn stats(&self) -> MemoryStats {
        self.0.stats()
    }
}

impl<B: CompiledBackend> DynBuffer for BufferOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn address(&self) -> u64 {
        self.0.address()
    }
    fn kind(&self) -> MemoryKind {
        self.0.kind()
    }
    fn device(&self) -> DeviceId {
        self.0.device()
    }
    fn record_use(&self, stream: &AnyStream) -> Result<()> {
        let stream = B::stream_of(stream, "record_use")?;
        gpuhal_hal::check_device("record_use", "stream", self.0.device(), stream.device_id())?;
        self.0.record_use(stream.cache());
        Ok(())
    }
    fn region(&self) -> Region {
        gpuhal_hal::AsRegion::region(&self.0)
    }
}

impl<B: CompiledBackend> DynEvent for EventOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn record(&self, stream: &AnyStream) -> Result<()> {
        self.0.record(B::stream_of(stream, "record")?)
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
    fn is_complete(&self) -> Result<bool> {
        self.0.is_complete()
    }
    fn elapsed(&self, end: &AnyEvent) -> Result<Duration> {
        self.0.elapsed(B::event_of(end, "elapsed")?)
    }
    fn has_timing(&self) -> bool {
        self.0.has_timing()
    }
}

impl<B: CompiledBackend> DynFence for FenceOf<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }
    fn value(&self) -> Result<u64> {
        self.0.value()
    }
    fn signal(&self, value: u64) -> Result<()> {
        self.0.signal(value)
    }
    fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        self.0.wait(value, timeout)
    }
}

/// Device memory a facade stream can address: an [`AnyBuffer`] or an [`AnyImport`].
pub trait Addressable {
    /// The backend the memory belongs to and its region; a stream of another backend
    /// refuses it with [`Error::BackendMismatch`].
    fn addressed(&self) -> (&'static str, Region);
}

impl Addressable for AnyBuffer {
    fn addressed(&self) -> (&'static str, Region) {
        (self.backend(), self.region())
    }
}

impl Addressable for AnyImport {
    fn addressed(&self) -> (&'static str, Region) {
        (self.backend, gpuhal_hal::AsRegion::region(&self.import))
    }
}

/// The region of `memory` for a stream of backend `B`, or the mismatch naming `operation`.
fn region_of<B: Backend>(memory: &dyn Addressable, operation: &'static str) -> Result<Region> {
    match memory.addressed() {
        (backend, region) if backend == B::NAME => Ok(region),
        (backend, _) => Err(mismatch(operation, B::NAME, backend)),
    }
}

/// Memory another process or device exported, opened with [`DynDevice::import_shared`]:
/// facade streams read, write, fill and copy it as a buffer. Dropping it releases this
/// side's mapping only; the exporter keeps the memory alive (see
/// [`sharing`](crate::sharing)).
#[derive(Debug)]
pub struct AnyImport {
    backend: &'static str,
    import: SharedImport,
}

impl AnyImport {
    /// The backend that imported it.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The importing device.
    pub fn device(&self) -> DeviceId {
        gpuhal_hal::AsRegion::region(&self.import).device
    }

    /// The address of the imported bytes in the importing device's address space.
    pub fn address(&self) -> u64 {
        self.import.device_address()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.import.len()
    }

    /// True for an empty import.
    pub fn is_empty(&self) -> bool {
        self.import.is_empty()
    }

    /// The backend's own import.
    pub fn native(&self) -> &SharedImport {
        &self.import
    }
}

/// A device of any compiled-in backend, chosen at run time.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use gpuhal::{AnyDevice, Capabilities, DynDevice};
/// let device = AnyDevice::mock(gpuhal::mock::Profile::Coherent)?;
/// assert!(device.capabilities().contains(Capabilities::PAGEABLE_ACCESS));
/// # }
/// # Ok::<(), gpuhal::Error>(())
/// ```
#[enum_dispatch(DynDevice)]
#[derive(Debug)]
pub enum AnyDevice {
    /// A mock device.
    #[cfg(feature = "mock")]
    Mock(DeviceOf<gpuhal_mock::MockBackend>),
    /// A CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(DeviceOf<gpuhal_cuda::CudaBackend>),
    /// A Vulkan device.
    #[cfg(feature = "vulkan")]
    Vulkan(DeviceOf<gpuhal_vulkan::VulkanBackend>),
}

/// A stream of any compiled-in backend.
#[enum_dispatch(DynStream)]
#[derive(Debug)]
pub enum AnyStream {
    /// A mock stream.
    #[cfg(feature = "mock")]
    Mock(StreamOf<gpuhal_mock::MockBackend>),
    /// A CUDA stream.
    #[cfg(feature = "cuda")]
    Cuda(StreamOf<gpuhal_cuda::CudaBackend>),
    /// A Vulkan stream.
    #[cfg(feature = "vulkan")]
    Vulkan(StreamOf<gpuhal_vulkan::VulkanBackend>),
}

/// A buffer of any compiled-in backend. Dropping it returns the memory to its stream's
/// cache, as with the backend's own buffer.
#[enum_dispatch(DynBuffer)]
#[derive(Debug)]
pub enum AnyBuffer {
    /// A mock buffer.
    #[cfg(feature = "mock")]
    Mock(BufferOf<gpuhal_mock::MockBackend>),
    /// A CUDA buffer.
    #[cfg(feature = "cuda")]
    Cuda(BufferOf<gpuhal_cuda::CudaBackend>),
    /// A Vulkan buffer.
    #[cfg(feature = "vulkan")]
    Vulkan(BufferOf<gpuhal_vulkan::VulkanBackend>),
}

/// An event of any compiled-in backend.
#[enum_dispatch(DynEvent)]
#[derive(Debug)]
pub enum AnyEvent {
    /// A mock event.
    #[cfg(feature = "mock")]
    Mock(EventOf<gpuhal_mock::MockBackend>),
    /// A CUDA event.
    #[cfg(feature = "cuda")]
    Cuda(EventOf<gpuhal_cuda::CudaBackend>),
    /// A Vulkan event.
    #[cfg(feature = "vulkan")]
    Vulkan(EventOf<gpuhal_vulkan::VulkanBackend>),
}

/// A timeline fence of any compiled-in backend.
#[enum_dispatch(DynFence)]
#[derive(Debug)]
pub enum AnyFence {
    /// A mock fence.
    #[cfg(feature = "mock")]
    Mock(FenceOf<gpuhal_mock::MockBackend>),
    /// A CUDA fence.
    #[cfg(feature = "cuda")]
    Cuda(FenceOf<gpuhal_cuda::CudaBackend>),
    /// A Vulkan fence.
    #[cfg(feature = "vulkan")]
    Vulkan(FenceOf<gpuhal_vulkan::VulkanBackend>),
}

/// A graph pool of any compiled-in backend: captures given the same pool share its memory.
/// Clones are handles to the same pool.
#[enum_dispatch(DynGraphPool)]
#[derive(Debug, Clone)]
pub enum AnyGraphPool {
    /// The mock's.
    #[cfg(feature = "mock")]
    Mock(GraphPoolOf<gpuhal_mock::MockBackend>),
    /// CUDA's.
    #[cfg(feature = "cuda")]
    Cuda(GraphPoolOf<gpuhal_cuda::CudaBackend>),
    /// Vulkan's.
    #[cfg(feature = "vulkan")]
    Vulkan(GraphPoolOf<gpuhal_vulkan::VulkanBackend>),
}

/// A captured graph of any compiled-in backend.
#[enum_dispatch(DynGraph)]
#[derive(Debug)]
pub enum AnyGraph {
    /// The mock's.
    #[cfg(feature = "mock")]
    Mock(GraphOf<gpuhal_mock::MockBackend>),
    /// CUDA's.
    #[cfg(feature = "cuda")]
    Cuda(GraphOf<gpuhal_cuda::CudaBackend>),
    /// Vulkan's.
    #[cfg(feature = "vulkan")]
    Vulkan(GraphOf<gpuhal_vulkan::VulkanBackend>),
}

/// An executable graph of any compiled-in backend.
#[enum_dispatch(DynGraphExec)]
#[derive(Debug)]
pub enum AnyGraphExec {
    /// The mock's.
    #[cfg(feature = "mock")]
    Mock(GraphExecOf<gpuhal_mock::MockBackend>),
    /// CUDA's.
    #[cfg(feature = "cuda")]
    Cuda(GraphExecOf<gpuhal_cuda::CudaBackend>),
    /// Vulkan's.
    #[cfg(feature = "vulkan")]
    Vulkan(GraphExecOf<gpuhal_vulkan::VulkanBackend>),
}

/// Implements [`CompiledBackend`] for one backend: wrapping is the variant constructor,
/// projection a match whose other arms are the mismatch.
macro_rules! compiled_backend {
    ($variant:ident, $backend:ty) => {
        compiled_backend!($variant, $backend {});
    };
    ($variant:ident, $backend:ty { $($overrides:item)* }) => {
        impl sealed::Sealed for $backend {}

        // With one backend compiled in, the mismatch arms cannot match.
        #[allow(unreachable_patterns)]
        impl CompiledBackend for $backend {
            $($overrides)*
            fn wrap_device(device: Self::Device) -> AnyDevice {
                AnyDevice::$variant(DeviceOf(device))
            }
            fn wrap_stream(stream: Self::Stream) -> AnyStream {
                AnyStream::$variant(StreamOf(stream))
            }
            fn wrap_buffer(buffer: Buffer<Self>) -> AnyBuffer {
                AnyBuffer::$variant(BufferOf(buffer))
            }
            fn wrap_event(event: Self::Event) -> AnyEvent {
                AnyEvent::$variant(EventOf(event))
            }
            fn wrap_fence(fence: Self::Fence) -> AnyFence {
                AnyFence::$variant(FenceOf(fence))
            }
            fn wrap_graph_pool(pool: GraphPool<Self>) -> AnyGraphPool {
                AnyGraphPool::$variant(GraphPoolOf(pool))
            }
            fn wrap_graph(graph: Self::Graph) -> AnyGraph {
                AnyGraph::$variant(GraphOf(graph))
            }
            fn wrap_graph_exec(exec: Self::GraphExec) -> AnyGraphExec {
                AnyGraphExec::$variant(GraphExecOf(exec))
            }
            fn device_of(any: &AnyDevice) -> Option<&Self::Device> {
                match any {
                    AnyDevice::$variant(DeviceOf(device)) => Some(device),
                    _ => None,
                }
            }
            fn stream_of<'a>(any: &'a AnyStream, operation: &'static str) -> Result<&'a Self::Stream> {
                match any {
                    AnyStream::$variant(StreamOf(stream)) => Ok(stream),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
            fn buffer_of<'a>(any: &'a AnyBuffer, operation: &'static str) -> Result<&'a Buffer<Self>> {
                match any {
                    AnyBuffer::$variant(BufferOf(buffer)) => Ok(buffer),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
            fn event_of<'a>(any: &'a AnyEvent, operation: &'static str) -> Result<&'a Self::Event> {
                match any {
                    AnyEvent::$variant(EventOf(event)) => Ok(event),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
            fn fence_of<'a>(any: &'a AnyFence, operation: &'static str) -> Result<&'a Self::Fence> {
                match any {
                    AnyFence::$variant(FenceOf(fence)) => Ok(fence),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
            fn graph_pool_of<'a>(any: &'a AnyGraphPool, operation: &'static str) -> Result<&'a GraphPool<Self>> {
                match any {
                    AnyGraphPool::$variant(GraphPoolOf(pool)) => Ok(pool),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
            fn graph_of<'a>(any: &'a AnyGraph, operation: &'static str) -> Result<&'a Self::Graph> {
                match any {
                    AnyGraph::$variant(GraphOf(graph)) => Ok(graph),
                    other => Err(mismatch(operation, Self::NAME, other.backend())),
                }
            }
        }
    };
}

#[cfg(feature = "mock")]
compiled_backend!(Mock, gpuhal_mock::MockBackend);
#[cfg(feature = "cuda")]
compiled_backend!(Cuda, gpuhal_cuda::CudaBackend {
    fn native_capture(stream: &gpuhal_cuda::CudaStream) -> Result<bool> {
        stream.is_capturing_natively()
    }
});
#[cfg(feature = "vulkan")]
compiled_backend!(Vulkan, gpuhal_vulkan::VulkanBackend);

fn mismatch(operation: &'static str, expected: &'static str, found: &'static str) -> Error {
    Error::BackendMismatch {
        operation,
        expected,
        found,
    }
}

/// The backends compiled into this build, by the names [`AnyDevice::open`] takes.
pub const COMPILED_BACKENDS: &[&str] = &[
    #[cfg(feature = "mock")]
    "mock",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "vulkan")]
    "vulkan",
];

impl AnyDevice {
    /// Opens device `ordinal` of the backend called `backend`: `"cuda"`, `"vulkan"`, or
    /// `"mock"` (the discrete profile; `"mock:coherent"`, `"mock:minimal"` choose another).
    /// A backend not compiled in is [`Error::InvalidArgument`] listing those that are.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use gpuhal::{AnyDevice, DynDevice};
    /// let device = AnyDevice::open("mock:minimal", 0)?;
    /// assert_eq!(device.backend(), "mock");
    /// assert!(AnyDevice::open("opencl", 0).is_err());
    /// # }
    /// # Ok::<(), gpuhal::Error>(())
    /// ```
    pub fn open(backend: &str, ordinal: u32) -> Result<AnyDevice> {
        Self::open_with(backend, ordinal, crate::PoolConfig::default())
    }

    /// [`open`](Self::open) with `config` for the device's caching allocator, its
    /// [`segments`](crate::PoolConfig::segments) strategy included (a backend without
    /// growable segments refuses them with [`Error::Unsupported`]).
    pub fn open_with(backend: &str, ordinal: u32, config: crate::PoolConfig) -> Result<AnyDevice> {
        Self::open_inner(backend, ordinal, config, false)
    }

    /// [`open_with`](Self::open_with), with sharing enabled: the device's
    /// [`MemoryKind::Device`] allocations come from an exportable native pool, so
    /// their memory can be exported to another process or device (CUDA:
    /// `CudaDevice::open_shared`; the mock: `MockConfig::sharing`). A backend or device
    /// without [`Capabilities::IPC`] refuses with [`Error::Unsupported`].
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use gpuhal::{AnyDevice, DynDevice, DynStream, MemoryKind};
    /// let device = AnyDevice::open_shared("mock", 0, gpuhal::PoolConfig::default())?;
    /// let stream = device.create_stream()?;
    /// let buffer = device.allocate(4096, MemoryKind::Device, &stream)?;
    /// stream.fill(&buffer, 0, 4096, 7)?;
    /// stream.synchronize()?;
    /// // Another process gets `handle` through gpuhal::handle_transfer::send_shared.
    /// let handle = device.export(&buffer)?;
    /// let imported = device.import_shared(&handle)?;
    /// let mut back = [0; 4096];
    /// stream.read(&imported, 0, &mut back)?;
    /// assert_eq!(back, [7; 4096]);
    /// # }
    /// # Ok::<(), gpuhal::Error>(())
    /// ```
    pub fn open_shared(backend: &str, ordinal: u32, config: crate::PoolConfig) -> Result<AnyDevice> {
        Self::open_inner(backend, ordinal, config, true)
    }

    fn open_inner(backend: &str, ordinal: u32, config: crate::PoolConfig, sharing: bool) -> Result<AnyDevice> {
        let (name, variant) = match backend.split_once(':') {
            Some((name, variant)) => (name, Some(variant)),
            None => (backend, None),
        };
        match (name, variant) {
            #[cfg(feature = "mock")]
            ("mock", variant) => {
                let profile = match variant {
                    Some(profile) => profile.parse()?,
                    None => gpuhal_mock::Profile::default(),
                };
                let config = gpuhal_mock::MockConfig {
                    profile,
                    ordinal,
                    pool: config,
                    sharing,
                    ..Default::default()
                };
                gpuhal_mock::MockDevice::open(config).map(|device| AnyDevice::Mock(DeviceOf(device)))
            }
            #[cfg(feature = "cuda")]
            ("cuda", None) => {
                let device = if sharing {
                    gpuhal_cuda::CudaDevice::open_shared(ordinal, config)
                } else {
                    gpuhal_cuda::CudaDevice::open_with(ordinal, config)
                };
                device.map(|device| AnyDevice::Cuda(DeviceOf(device)))
            }
            #[cfg(feature = "vulkan")]
            ("vulkan", None) => {
                if sharing {
                    return Err(Error::Unsupported {
                        operation: "open with sharing enabled",
                        needed: crate::Capabilities::IPC,
                    });
                }
                if config.segments != crate::SegmentStrategy::Native {
                    return Err(Error::Unsupported {
                        operation: "open with growable segments",
                        needed: crate::Capabilities::GROWABLE_SEGMENTS,
                    });
                }
                let device = gpuhal_vulkan::VulkanDevice::open(ordinal)?;
                let allocator = gpuhal_hal::Device::allocator(&device);
                allocator.set_memory_limit(config.memory_limit);
                allocator.set_cache_limit(config.cache_limit);
                allocator.set_reserve_slack(config.reserve_slack);
                allocator.set_reserve_floor(config.reserve_floor);
                allocator.set_release_after_misses(config.release_after_misses);
                Ok(AnyDevice::Vulkan(DeviceOf(device)))
            }
            _ => Err(Error::invalid(
                "AnyDevice::open",
                format!(
                    "unknown or not compiled-in backend {backend:?}; this build has: {} \
                     (enable more with the cargo features mock, cuda, vulkan)",
                    COMPILED_BACKENDS.join(", ")
                ),
            )),
        }
    }

    /// Opens a mock device of `profile`.
    #[cfg(feature = "mock")]
    pub fn mock(profile: gpuhal_mock::Profile) -> Result<AnyDevice> {
        let config = gpuhal_mock::MockConfig {
            profile,
            ..Default::default()
        };
        gpuhal_mock::MockDevice::open(config).map(|device| AnyDevice::Mock(DeviceOf(device)))
    }

    /// A stream over a native stream the caller created (a framework's current stream, the
    /// null stream), with a cache in this device's allocator; gpuhal never destroys it.
    /// Only the CUDA backend has native streams to adopt: elsewhere this is
    /// [`Error::InvalidArgument`] naming the backend.
    ///
    /// # Safety
    ///
    /// As `gpuhal_cuda::CudaDevice::adopt_stream`: `raw` is a `CUstream` of this device's
    /// context (or a special default-stream handle) that outlives the returned stream and
    /// every buffer allocated on it.
    pub unsafe fn adopt_stream(&self, raw: *mut std::ffi::c_void) -> Result<AnyStream> {
        match self {
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(DeviceOf(device)) => {
                // SAFETY: the caller upholds adopt_stream's contract, which is this one.
                unsafe { device.adopt_stream(raw.cast()) }.map(|stream| AnyStream::Cuda(StreamOf(stream)))
            }
            #[allow(unreachable_patterns)]
            other => Err(Error::invalid(
                "adopt_stream",
                format!(
                    "stream {raw:p}: only the CUDA backend has native streams to adopt, and this device is {}",
                    other.backend()
                ),
            )),
        }
    }

    /// Wraps a device already opened through its backend.
    pub fn from_native<B: CompiledBackend>(device: B::Device) -> AnyDevice {
        B::wrap_device(device)
    }

    /// The backend's own device, if this is one of backend `B`: for what the facade does
    /// not cover (graphs, host import, managed advice, native handles).
    pub fn native<B: CompiledBackend>(&self) -> Option<&B::Device> {
        B::device_of(self)
    }
}

impl AnyStream {
    /// The backend's own stream, if this is one of backend `B` (to launch kernels on it).
    pub fn native<B: CompiledBackend>(&self) -> Option<&B::Stream> {
        B::stream_of(self, "AnyStream::native").ok()
    }
}

impl AnyBuffer {
    /// The backend's own buffer, if this is one of backend `B`.
    pub fn native<B: CompiledBackend>(&self) -> Option<&Buffer<B>> {
        B::buffer_of(self, "AnyBuffer::native").ok()
    }
}

impl AnyEvent {
    /// The backend's own event, if this is one of backend `B`.
    pub fn native<B: CompiledBackend>(&self) -> Option<&B::Event> {
        B::event_of(self, "AnyEvent::native").ok()
    }
}

impl AnyFence {
    /// The backend's own fence, if this is one of backend `B`.
    pub fn native<B: CompiledBackend>(&self) -> Option<&B::Fence> {
        B::fence_of(self, "AnyFence::native").ok()
    }
}

#[cfg(test)]
mod tests;
