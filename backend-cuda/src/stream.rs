//! Streams: in-order queues of copies, fills, event and fence operations, and graph
//! capture.

use std::sync::Arc;

use gpuhal_hal::pool::StreamCache;
use gpuhal_hal::{check_device, check_range, AsRegion, DeviceId, Error, GraphPool, Region, Result, StreamId};
use parking_lot::Mutex;

use crate::context::Context;
use crate::error::Context as _;
use crate::event::CudaEvent;
use crate::fence::CudaFence;
use crate::graph::CudaGraph;
use crate::kernels::SmallOpKernels;
use crate::memory::CudaMemory;
use crate::raw::{self, CUstream};
use crate::CudaBackend;

struct OwnedStream {
    raw: CUstream,
    id: StreamId,
    ctx: Arc<Context>,
    /// False for a stream adopted from a framework: its owner destroys it, not gpuhal.
    owned: bool,
}

// SAFETY: CUDA streams may be used from any thread; the driver orders work internally.
unsafe impl Send for OwnedStream {}
// SAFETY: as above; shared use only passes the handle to thread-safe driver calls.
unsafe impl Sync for OwnedStream {}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        if self.owned && self.ctx.bind().is_ok() {
            // Work already enqueued still completes; the driver releases the stream after.
            let _ = raw::stream_destroy(self.raw);
        }
    }
}

/// A reference-counted native stream: the `CUstream` is destroyed when the last holder
/// (the [`CudaStream`], or the caching pool ordering frees on it) drops.
#[derive(Clone)]
pub struct StreamHandle(Arc<OwnedStream>);

impl StreamHandle {
    /// The native stream.
    pub fn raw(&self) -> CUstream {
        self.0.raw
    }

    /// The stream's process-wide identity.
    pub fn id(&self) -> StreamId {
        self.0.id
    }
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamHandle({}, {:p})", self.0.id, self.0.raw)
    }
}

/// An in-order queue of work on one device (a non-blocking `CUstream`).
///
/// [`raw`](Self::raw) exposes the `CUstream` so a framework can launch its own kernels on
/// it, ordered with everything gpuhal enqueues.
pub struct CudaStream {
    handle: StreamHandle,
    cache: StreamCache<CudaMemory>,
    device: DeviceId,
    ctx: Arc<Context>,
    timeline: bool,
    capture: Mutex<Option<GraphPool<CudaBackend>>>,
}

impl CudaStream {
    pub(crate) fn new(
        ctx: &Arc<Context>,
        allocator: &gpuhal_hal::CachingAllocator<CudaMemory>,
        device: DeviceId,
        timeline: bool,
    ) -> Result<Self> {
        ctx.bind()?;
        let raw = raw::stream_create().context(|| format!("creating a stream on CUDA device {}", ctx.ordinal()))?;
        Ok(Self::wrap(ctx, allocator, device, timeline, raw, true))
    }

    /// A stream over `raw`, which the caller created and keeps alive; see
    /// [`CudaDevice::adopt_stream`](crate::CudaDevice::adopt_stream).
    pub(crate) fn adopt(
        ctx: &Arc<Context>,
        allocator: &gpuhal_hal::CachingAllocator<CudaMemory>,
        device: DeviceId,
        timeline: bool,
        raw: CUstream,
    ) -> Self {
        Self::wrap(ctx, allocator, device, timeline, raw, false)
    }

    fn wrap(
        ctx: &Arc<Context>,
        allocator: &gpuhal_hal::CachingAllocator<CudaMemory>,
        device: DeviceId,
        timeline: bool,
        raw: CUstream,
        owned: bool,
    ) -> Self {
        let id = StreamId::fresh();
        let handle = StreamHandle(Arc::new(OwnedStream {
            raw,
            id,
            ctx: ctx.clone(),
            owned,
        }));
        let cache = allocator.stream_cache(handle.clone(), id);
        CudaStream {
            handle,
            cache,
            device,
            ctx: ctx.clone(),
            timeline,
            capture: Mutex::new(None),
        }
    }

    /// Whether the driver is capturing this stream's work, whoever began the capture (a
    /// framework capturing on an adopted stream, say).
    pub fn is_capturing_natively(&self) -> Result<bool> {
        self.bind()?;
        raw::stream_is_capturing(self.raw())
            .context(|| format!("reading the capture state of stream {}", self.id_inner().0))
    }

    /// Whether gpuhal created this stream (and destroys it), as opposed to adopting it.
    pub fn is_owned(&self) -> bool {
        self.handle.0.owned
    }

    /// The native stream, for launching kernels on it.
    pub fn raw(&self) -> CUstream {
        self.handle.raw()
    }

    /// The reference-counted native stream.
    pub fn handle(&self) -> &StreamHandle {
        &self.handle
    }

    pub(crate) fn id_inner(&self) -> StreamId {
        self.handle.id()
    }

    pub(crate) fn device_id_inner(&self) -> DeviceId {
        self.device
    }

    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind()
    }

    pub(crate) fn is_capturing_inner(&self) -> bool {
        self.capture.lock().is_some()
    }

    pub(crate) fn supports_timeline(&self) -> bool {
        self.timeline
    }

    /// Resolves `offset..offset + len` of `region` to a device address, checking the
    /// device and the bounds.
    fn address(&self, operation: &'static str, region: &Region, offset: u64, len: u64) -> Result<u64> {
        check_device(operation, "buffer", self.device, region.device)?;
        check_range(operation, offset, len, region.len)?;
        Ok(region.address + offset)
    }

    /// As [`address`](Self::address), but `region` may also be memory of a peer device
    /// this stream's device was given access to.
    fn peer_address(&self, operation: &'static str, region: &Region, offset: u64, len: u64) -> Result<u64> {
        self.ctx
            .peers()
            .check(operation, self.device, self.ctx.device(), region.device)?;
        check_range(operation, offset, len, region.len)?;
        Ok(region.address + offset)
    }

    /// Fails with [`Error::CaptureInvalidated`] when the stream is capturing, after ending
    /// the capture and discarding its partial graph, so the stream is usable again.
    /// gpuhal's kernels, when they should carry a fill or copy of `len` bytes: small ops on
    /// a capturing stream, whoever began the capture. They become kernel nodes, which a
    /// graph launches far cheaper than memset/memcpy nodes; issued eagerly, a kernel launch
    /// costs more CPU than the memset or memcpy it replaces, so eager ops keep those. The
    /// driver's capture state is read rather than gpuhal's, so a capture a framework began
    /// on [`raw`](Self::raw) gets kernel nodes too.
    #[inline]
    fn capture_kernels(&self, len: u64) -> Result<Option<&SmallOpKernels>> {
        let Some(kernels) = self.ctx.small_ops() else {
            return Ok(None);
        };
        if !SmallOpKernels::takes(len) {
            return Ok(None);
        }
        let capturing = raw::stream_is_capturing(self.raw())
            .context(|| format!("reading the capture state of stream {}", self.id_inner().0))?;
        Ok(capturing.then_some(kernels))
    }

    fn refuse_during_capture(&self, operation: &'static str) -> Result<()> {
        let native = raw::stream_is_capturing(self.raw())
            .context(|| format!("reading the capture state of stream {}", self.id_inner().0))?;
        let ours = self.capture.lock().take();
        if !native && ours.is_none() {
            return Ok(());
        }
        if native {
            // The partial graph is destroyed by the wrapper; its error is not the one to report.
            if let Ok(graph) = raw::stream_end_capture(self.raw()) {
                let _ = raw::graph_destroy(graph);
            }
        }
        self.cache.end_capture();
        Err(Error::CaptureInvalidated {
            operation,
            stream: self.id_inner().0,
        })
    }
}

impl Drop for CudaStream {
    /// A capture still open is abandoned, so the native stream is destroyed idle.
    fn drop(&mut self) {
        if self.capture.get_mut().take().is_some() {
            self.cache.end_capture();
            if self.bind().is_ok() {
                if let Ok(graph) = raw::stream_end_capture(self.raw()) {
                    let _ = raw::graph_destroy(graph);
                }
            }
        }
    }
}

impl std::fmt::Debug for CudaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStream")
            .field("id", &self.id_inner())
            .field("device", &self.device)
            .field("raw", &self.raw())
            .finish()
    }
}

impl gpuhal_hal::Stream<CudaBackend> for CudaStream {
    fn id(&self) -> StreamId {
        self.id_inner()
    }

    fn device_id(&self) -> DeviceId {
        self.device
    }

    fn cache(&self) -> &StreamCache<CudaMemory> {
        &self.cache
    }

    fn write(&self, dst: &dyn AsRegion, offset: u64, data: &[u8]) -> Result<()> {
        let region = dst.region();
        let address = self.address("Stream::write", &region, offset, data.len() as u64)?;
        self.bind()?;
        self.refuse_during_capture("Stream::write")?;
        if data.is_empty() {
            return Ok(());
        }
        raw::memcpy_htod(address, data, self.raw()).context(|| {
            format!(
                "writing {} bytes from the host to {address:#x} ({:?}, offset {offset}) on stream {}",
                data.len(),
                region.kind,
                self.id_inner().0
            )
        })
    }

    fn read(&self, src: &dyn AsRegion, offset: u64, out: &mut [u8]) -> Result<()> {
        let region = src.region();
        let address = self.address("Stream::read", &region, offset, out.len() as u64)?;
        self.bind()?;
        self.refuse_during_capture("Stream::read")?;
        if out.is_empty() {
            return Ok(());
        }
        let len = out.len();
        raw::memcpy_dtoh(out, address, self.raw()).context(|| {
            format!(
                "reading {len} bytes from {address:#x} ({:?}, offset {offset}) to the host on stream {}",
                region.kind,
                self.id_inner().0
            )
        })
    }

    fn copy(&self, src: &dyn AsRegion, src_offset: u64, dst: &dyn AsRegion, dst_offset: u64, len: u64) -> Result<()> {
        let (src_region, dst_region) = (src.region(), dst.region());
        let from = self.peer_address("Stream::copy (source)", &src_region, src_offset, len)?;
        let to = self.peer_address("Stream::copy (destination)", &dst_region, dst_offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        let copied = match self.capture_kernels(len)? {
            Some(kernels) => kernels.copy(to, from, len, self.raw()),
            None => raw::memcpy_async(to, from, len, self.raw()),
        };
        copied.context(|| {
            format!(
                "copying {len} bytes from {from:#x} to {to:#x} on stream {}",
                self.id_inner().0
            )
        })
    }

    fn fill(&self, dst: &dyn AsRegion, offset: u64, len: u64, value: u8) -> Result<()> {
        let region = dst.region();
        let address = self.address("Stream::fill", &region, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        let filled = match self.capture_kernels(len)? {
            Some(kernels) => kernels.fill(address, len, value, self.raw()),
            None => raw::memset_d8_async(address, value, len, self.raw()),
        };
        filled.context(|| {
            format!(
                "filling {len} bytes at {address:#x} with {value:#04x} on stream {}",
                self.id_inner().0
            )
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.refuse_during_capture("Stream::synchronize")?;
        raw::stream_synchronize(self.raw()).context(|| format!("synchronising stream {}", self.id_inner().0))
    }

    fn wait_event(&self, event: &CudaEvent) -> Result<()> {
        crate::sharing::check_event_device("Stream::wait_event", self.device, self.ctx.device(), event.device_id())?;
        if !event.is_recorded() {
            // An event never recorded is complete: nothing to wait for.
            return Ok(());
        }
        self.bind()?;
        raw::stream_wait_event(self.raw(), event.raw())
            .context(|| format!("making stream {} wait for an event", self.id_inner().0))
    }

    fn signal(&self, fence: &CudaFence, value: u64) -> Result<()> {
        fence.stream_signal(self, value)
    }

    fn wait(&self, fence: &CudaFence, value: u64) -> Result<()> {
        fence.stream_wait(self, value)
    }

    fn begin_capture(&self, pool: &GraphPool<CudaBackend>) -> Result<()> {
        check_device("Stream::begin_capture", "graph pool", self.device, pool.device())?;
        let mut capture = self.capture.lock();
        if capture.is_some() {
            return Err(Error::CaptureState(format!(
                "stream {} is already capturing; end that capture first",
                self.id_inner().0
            )));
        }
        self.bind()?;
        raw::stream_begin_capture(self.raw())
            .context(|| format!("beginning a capture on stream {}", self.id_inner().0))?;
        self.cache.begin_capture(pool.clone());
        *capture = Some(pool.clone());
        Ok(())
    }

    fn end_capture(&self) -> Result<CudaGraph> {
        let Some(pool) = self.capture.lock().take() else {
            return Err(Error::CaptureState(format!(
                "end_capture on stream {}, which is not capturing",
                self.id_inner().0
            )));
        };
        self.cache.end_capture();
        self.bind()?;
        let graph = raw::stream_end_capture(self.raw())
            .context(|| format!("ending the capture on stream {}", self.id_inner().0))?;
        CudaGraph::new(graph, pool, self.ctx.clone(), self.device)
    }

    fn is_capturing(&self) -> bool {
        self.capture.lock().is_some()
    }
}
