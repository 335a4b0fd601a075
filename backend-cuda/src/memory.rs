//! Native memory under the caching pool: device memory from a dedicated stream-ordered
//! memory pool or from growable virtual-memory segments (see [`SegmentStrategy`]),
//! managed memory placed by the device's [`ManagedPolicy`], and mapped page-locked host
//! memory.

use std::sync::Arc;

use gpuhal_hal::event_pool::PooledEvent;
use gpuhal_hal::pool::{Allocator, NativeBlock};
use gpuhal_hal::{
    Advice, DeviceId, Error, Location, ManagedPolicy, ManagedRangeInfo, MemoryKind, Result, SegmentStrategy,
    SleepReport, WakeReport,
};
use parking_lot::{Mutex, RwLock};

use crate::context::Context;
use crate::error::Context as _;
use crate::event::{CudaEventPool, CudaEvents};
use crate::raw::{self, CUdeviceptr, CUmem_advise, CUmem_range_attribute, CUmemoryPool};
use crate::segments::{GrowableSegments, SegmentStats};
use crate::stream::StreamHandle;

/// `NativeBlock::native` of device memory from the stream-ordered pool.
const FROM_POOL: u64 = 0;
/// `NativeBlock::native` of device memory from `cuMemAlloc` (graph pools, or devices
/// without memory pools).
const FROM_MEM_ALLOC: u64 = 1;
/// `NativeBlock::native` of device memory mapped in a growable segment.
const FROM_SEGMENT: u64 = 2;

/// `CU_DEVICE_CPU`, as range attributes report the host.
const HOST_ID: i32 = -1;

/// The device's stream-ordered memory pool.
struct MemPool(CUmemoryPool);

// SAFETY: memory pool handles may be used from any thread.
unsafe impl Send for MemPool {}
// SAFETY: as above; shared use only passes the handle to thread-safe driver calls.
unsafe impl Sync for MemPool {}

/// A point in a stream's work: a pooled event without timing.
pub type CudaMarker = PooledEvent<CudaEvents>;

/// Native memory of one CUDA device, as the caching pool needs it.
///
/// Frees of managed and page-locked memory are not stream-ordered in the driver: with a
/// stream, that stream (only) is synchronised before the free. Frees that arrive while
/// their stream is capturing a graph are deferred until it no longer is.
pub struct CudaMemory {
    ctx: Arc<Context>,
    device: DeviceId,
    pool: Option<MemPool>,
    /// Where stream-ordered device memory comes from under [`SegmentStrategy::Growable`].
    segments: Option<GrowableSegments>,
    /// Whether `pool` is exportable to other processes (a device opened with sharing).
    exportable: bool,
    events: CudaEventPool,
    policy: Arc<RwLock<ManagedPolicy>>,
    managed_advice: bool,
    deferred: Mutex<Vec<(NativeBlock, StreamHandle)>>,
}

impl CudaMemory {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<Context>,
        device: DeviceId,
        stream_ordered: bool,
        strategy: SegmentStrategy,
        total_memory: u64,
        events: CudaEventPool,
        policy: Arc<RwLock<ManagedPolicy>>,
        managed_advice: bool,
        exportable: bool,
    ) -> Result<Self> {
        let segments = match strategy {
            SegmentStrategy::Native => None,
            SegmentStrategy::Growable => Some(GrowableSegments::new(ctx.ordinal_i32(), total_memory, events.clone())?),
        };
        let pool = if stream_ordered && segments.is_none() {
            let ordinal = ctx.ordinal();
            let pool = if exportable {
                raw::mem_pool_create_exportable(ctx.ordinal_i32()).context(|| {
                    format!("creating the exportable (POSIX file descriptor) memory pool of CUDA device {ordinal}")
                })?
            } else {
                raw::mem_pool_create(ctx.ordinal_i32())
                    .context(|| format!("creating the memory pool of CUDA device {ordinal}"))?
            };
            let pool = MemPool(pool);
            if exportable {
                // The driver exports an allocation's pointer only once its pool has been
                // exported; doing it here also fails the open, not a later export, where
                // the driver cannot export the pool.
                raw::mem_pool_export_fd(pool.0)
                    .context(|| format!("exporting CUDA device {ordinal}'s memory pool as a file descriptor"))?;
            }
            // gpuhal's cache is the cache: what it gives back to the pool is memory it decided
            // to release, so the pool returns it to the device at the next synchronisation
            // instead of keeping it too. (At u64::MAX, a PyTorch GPT-2 run on an H200 took
            // 1.83 x peak live of device memory: both caches held idle memory.)
            raw::mem_pool_set_release_threshold(pool.0, 0)
                .context(|| format!("setting the release threshold of CUDA device {ordinal}'s memory pool to 0"))?;
            Some(pool)
        } else {
            None
        };
        Ok(CudaMemory {
            ctx,
            device,
            pool,
            segments,
            exportable: exportable && stream_ordered,
            events,
            policy,
            managed_advice,
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// Whether device memory is stream-ordered (`cuMemAllocFromPoolAsync`).
    pub fn is_stream_ordered(&self) -> bool {
        self.pool.is_some()
    }

    /// Where device memory comes from.
    pub fn segment_strategy(&self) -> SegmentStrategy {
        match self.segments {
            Some(_) => SegmentStrategy::Growable,
            None => SegmentStrategy::Native,
        }
    }

    /// Bytes of physical memory mapped in growable segments now (0 under
    /// [`SegmentStrategy::Native`]), released blocks not yet unmapped included.
    pub fn mapped_bytes(&self) -> u64 {
        self.segments.as_ref().map_or(0, GrowableSegments::mapped_bytes)
    }

    /// Counters of the growable segments (physical memory held, handles created, bytes
    /// reused, bytes asleep), if the device uses them.
    pub fn segment_stats(&self) -> Option<SegmentStats> {
        self.segments.as_ref().map(GrowableSegments::stats)
    }

    /// The granularity growable segments map physical memory in, if the device uses them.
    pub fn mapping_granularity(&self) -> Option<u64> {
        self.segments.as_ref().map(GrowableSegments::granularity)
    }

    /// Unmaps the blocks released to growable segments whose streams have passed their
    /// last use (with `wait`, after waiting for those streams' events; no device-wide
    /// synchronize). Later native calls do this anyway; call it after
    /// [`trim`](gpuhal_hal::CachingAllocator::trim) to see the memory free at once.
    pub fn unmap_released(&self, wait: bool) -> Result<()> {
        if let Some(segments) = &self.segments {
            self.ctx.bind()?;
            segments.unmap_released(wait);
        }
        Ok(())
    }

    /// The exportable pool device memory comes from, on a device opened with sharing.
    pub(crate) fn exportable_pool(&self) -> Option<CUmemoryPool> {
        self.pool.as_ref().filter(|_| self.exportable).map(|p| p.0)
    }

    /// Whether `native` (a [`NativeBlock::native`]) names memory of the stream-ordered pool.
    pub(crate) fn is_pool_memory(native: u64) -> bool {
        native == FROM_POOL
    }

    /// The raw memory pool handle, if device memory is stream-ordered.
    pub fn raw_pool(&self) -> Option<CUmemoryPool> {
        self.pool.as_ref().map(|p| p.0)
    }

    fn ordinal(&self) -> u32 {
        self.ctx.ordinal()
    }

    fn device_location(&self) -> raw::CUmemLocation {
        raw::location(Some(self.ctx.ordinal_i32()))
    }

    /// Applies `advice` to a managed range.
    pub(crate) fn apply_advice(&self, address: u64, len: u64, advice: Advice) -> Result<()> {
        if advice.contains(Advice::PREFER_DEVICE | Advice::PREFER_HOST) {
            return Err(Error::invalid(
                "advise",
                "PREFER_DEVICE and PREFER_HOST are exclusive: a range has one preferred location",
            ));
        }
        if len == 0 || advice.is_empty() {
            return Ok(());
        }
        let device = self.device_location();
        let host = raw::location(None);
        let steps = [
            (
                Advice::PREFER_DEVICE,
                CUmem_advise::CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
                device,
                "prefer device",
            ),
            (
                Advice::PREFER_HOST,
                CUmem_advise::CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
                host,
                "prefer host",
            ),
            (
                Advice::ACCESSED_BY_HOST,
                CUmem_advise::CU_MEM_ADVISE_SET_ACCESSED_BY,
                host,
                "accessed by host",
            ),
            (
                Advice::ACCESSED_BY_DEVICE,
                CUmem_advise::CU_MEM_ADVISE_SET_ACCESSED_BY,
                device,
                "accessed by device",
            ),
            (
                Advice::READ_MOSTLY,
                CUmem_advise::CU_MEM_ADVISE_SET_READ_MOSTLY,
                device,
                "read mostly",
            ),
        ];
        for (flag, native, location, what) in steps {
            if advice.contains(flag) {
                raw::mem_advise(address, len, native, location).context(|| {
                    format!(
                        "advising \"{what}\" on {len} bytes of managed memory at {address:#x} (device {})",
                        self.ordinal()
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Prefetches a managed (or device-accessible pageable) range.
    pub(crate) fn prefetch(&self, address: u64, len: u64, to: Location, stream: &StreamHandle) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let location = match to {
            Location::Device => self.device_location(),
            Location::Host => raw::location(None),
        };
        raw::mem_prefetch_async(address, len, location, stream.raw()).context(|| {
            format!(
                "prefetching {len} bytes at {address:#x} to {to:?} (device {}) on stream {}",
                self.ordinal(),
                stream.id().0
            )
        })
    }

    /// Reads back the advice and last prefetch location of a managed range.
    pub(crate) fn range_info(&self, address: u64, len: u64) -> Result<ManagedRangeInfo> {
        let mut info = ManagedRangeInfo {
            advice: Advice::empty(),
            last_prefetch: None,
        };
        if len == 0 {
            return Ok(info);
        }
        let ordinal = self.ctx.ordinal_i32();
        let read = |attribute: CUmem_range_attribute, out: &mut [i32], what: &str| {
            raw::mem_range_attribute(address, len, attribute, out).context(|| {
                format!("reading the {what} of {len} bytes of managed memory at {address:#x} (device {ordinal})")
            })
        };
        let mut one = [0i32];
        read(
            CUmem_range_attribute::CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
            &mut one,
            "preferred location",
        )?;
        match one[0] {
            HOST_ID => info.advice |= Advice::PREFER_HOST,
            id if id == ordinal => info.advice |= Advice::PREFER_DEVICE,
            _ => {}
        }
        let mut accessors = [0i32; 64];
        read(
            CUmem_range_attribute::CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY,
            &mut accessors,
            "accessed-by list",
        )?;
        if accessors.contains(&HOST_ID) {
            info.advice |= Advice::ACCESSED_BY_HOST;
        }
        if accessors.contains(&ordinal) {
            info.advice |= Advice::ACCESSED_BY_DEVICE;
        }
        read(
            CUmem_range_attribute::CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY,
            &mut one,
            "read-mostly flag",
        )?;
        if one[0] != 0 {
            info.advice |= Advice::READ_MOSTLY;
        }
        read(
            CUmem_range_attribute::CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION,
            &mut one,
            "last prefetch location",
        )?;
        info.last_prefetch = match one[0] {
            HOST_ID => Some(Location::Host),
            id if id == ordinal => Some(Location::Device),
            _ => None,
        };
        Ok(info)
    }

    fn allocate_device(&self, size: u64, stream: Option<&StreamHandle>) -> Result<NativeBlock> {
        if let (Some(segments), Some(stream)) = (&self.segments, stream) {
            let (address, size) = segments.allocate(size, stream)?;
            return Ok(NativeBlock {
                address,
                size,
                kind: MemoryKind::Device,
                native: FROM_SEGMENT,
                native_offset: 0,
            });
        }
        let (address, native) = match (&self.pool, stream) {
            (Some(pool), Some(stream)) => {
                let address = raw::mem_alloc_from_pool_async(size, pool.0, stream.raw()).context(|| {
                    format!(
                        "allocating {size} bytes of stream-ordered device memory on stream {} of device {}",
                        stream.id().0,
                        self.ordinal()
                    )
                })?;
                (address, FROM_POOL)
            }
            _ => {
                let address = raw::mem_alloc(size)
                    .context(|| format!("allocating {size} bytes of device memory on device {}", self.ordinal()))?;
                (address, FROM_MEM_ALLOC)
            }
        };
        Ok(NativeBlock {
            address,
            size,
            kind: MemoryKind::Device,
            native,
            native_offset: 0,
        })
    }

    fn allocate_managed(&self, size: u64, stream: Option<&StreamHandle>) -> Result<NativeBlock> {
        let policy = *self.policy.read();
        if !policy.allow_oversubscription {
            let (free, total) = raw::mem_get_info().context(|| {
                format!(
                    "reading free memory of device {} before a managed allocation",
                    self.ordinal()
                )
            })?;
            if size > free {
                return Err(Error::invalid(
                    "allocate",
                    format!(
                        "a managed allocation of {size} bytes is larger than the {free} bytes device {} reports free \
                         (of {total}); oversubscribed managed memory can stall the GPU. Set \
                         ManagedPolicy::allow_oversubscription to allow it",
                        self.ordinal()
                    ),
                ));
            }
        }
        let address = raw::with_relaxed_capture_mode(|| raw::mem_alloc_managed(size))
            .context(|| format!("allocating {size} bytes of managed memory on device {}", self.ordinal()))?;
        if self.managed_advice {
            if let Err(err) = raw::with_relaxed_capture_mode(|| self.apply_advice(address, size, policy.advice)) {
                let _ = raw::mem_free(address);
                return Err(err);
            }
            if let Some(stream) = stream {
                if policy.should_prefetch(size) {
                    // As in the field: a failed prefetch does not fail the allocation; pages
                    // then migrate on demand.
                    let _ = self.prefetch(address, size, Location::Device, stream);
                }
            }
        }
        Ok(NativeBlock {
            address,
            size,
            kind: MemoryKind::Managed,
            native: 0,
            native_offset: 0,
        })
    }

    fn allocate_pinned(&self, size: u64) -> Result<NativeBlock> {
        let flags = cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP | cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE;
        let host = raw::mem_host_alloc(size, flags).context(|| {
            format!(
                "allocating {size} bytes of page-locked host memory for device {}",
                self.ordinal()
            )
        })?;
        let address = match raw::mem_host_get_device_pointer(host) {
            Ok(address) => address,
            Err(native) => {
                let _ = raw::mem_free_host(host);
                return Err(Error::native(
                    format!(
                        "mapping {size} bytes of page-locked host memory for device {}",
                        self.ordinal()
                    ),
                    native,
                ));
            }
        };
        Ok(NativeBlock {
            address,
            size,
            kind: MemoryKind::HostPinned,
            native: host,
            native_offset: 0,
        })
    }

    /// Frees now; `stream` orders the free (device pool memory) or is synchronised first
    /// (managed and page-locked memory).
    fn free_now(&self, block: NativeBlock, stream: Option<&StreamHandle>) -> Result<()> {
        let what = || {
            format!(
                "freeing {} bytes of {:?} memory at {:#x} on device {}",
                block.size,
                block.kind,
                block.address,
                self.ordinal()
            )
        };
        match block.kind {
            MemoryKind::Device if block.native == FROM_POOL => {
                let raw_stream = stream.map_or(std::ptr::null_mut(), StreamHandle::raw);
                raw::mem_free_async(block.address as CUdeviceptr, raw_stream).context(what)
            }
            MemoryKind::Device if block.native == FROM_SEGMENT => match &self.segments {
                Some(segments) => segments.release(block.address, stream),
                None => Err(Error::invalid("free", what())),
            },
            MemoryKind::Device => raw::mem_free(block.address).context(what),
            MemoryKind::Managed => {
                if let Some(stream) = stream {
                    raw::stream_synchronize(stream.raw()).context(what)?;
                }
                raw::mem_free(block.address).context(what)
            }
            MemoryKind::HostPinned => {
                if let Some(stream) = stream {
                    raw::stream_synchronize(stream.raw()).context(what)?;
                }
                raw::mem_free_host(block.native).context(what)
            }
        }
    }

    /// Frees deferred blocks whose stream stopped capturing.
    fn drain_deferred(&self) {
        let mut deferred = self.deferred.lock();
        if deferred.is_empty() {
            return;
        }
        let mut kept = Vec::new();
        for (block, stream) in deferred.drain(..) {
            match raw::stream_is_capturing(stream.raw()) {
                Ok(false) => {
                    // The pool already counted this free; a failure here leaks the block.
                    let _ = self.free_now(block, Some(&stream));
                }
                _ => kept.push((block, stream)),
            }
        }
        *deferred = kept;
    }
}

impl Allocator for CudaMemory {
    type Stream = StreamHandle;
    type Marker = CudaMarker;

    fn device(&self) -> DeviceId {
        self.device
    }

    fn native_size(&self, rounded: u64, kind: MemoryKind) -> u64 {
        match (&self.segments, kind) {
            (Some(segments), MemoryKind::Device) => rounded.next_multiple_of(segments.granularity()),
            _ => rounded,
        }
    }

    fn trimmed(&self) {
        if let Some(segments) = &self.segments {
            if self.ctx.bind().is_ok() {
                segments.unmap_released(false);
            }
        }
    }

    fn can_sleep(&self) -> bool {
        self.segments.is_some()
    }

    fn sleep(&self, keep: &[(u64, u64)]) -> Result<SleepReport> {
        let Some(segments) = &self.segments else {
            return Err(Error::Unsupported {
                operation: "sleep (open the device with SegmentStrategy::Growable)",
                needed: gpuhal_hal::Capabilities::GROWABLE_SEGMENTS,
            });
        };
        self.ctx.bind()?;
        segments.sleep(keep)
    }

    fn wake(&self) -> Result<WakeReport> {
        let Some(segments) = &self.segments else {
            return Err(Error::Unsupported {
                operation: "wake (open the device with SegmentStrategy::Growable)",
                needed: gpuhal_hal::Capabilities::GROWABLE_SEGMENTS,
            });
        };
        self.ctx.bind()?;
        segments.wake()
    }

    fn asleep_bytes(&self) -> u64 {
        self.segments.as_ref().map_or(0, |s| s.stats().asleep_bytes)
    }

    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&StreamHandle>) -> Result<NativeBlock> {
        self.ctx.bind()?;
        self.drain_deferred();
        match kind {
            MemoryKind::Device => self.allocate_device(size, stream),
            MemoryKind::Managed => self.allocate_managed(size, stream),
            MemoryKind::HostPinned => self.allocate_pinned(size),
        }
    }

    fn free(&self, block: NativeBlock, stream: Option<&StreamHandle>) -> Result<()> {
        self.ctx.bind()?;
        self.drain_deferred();
        if let Some(stream) = stream {
            // A free issued on a capturing stream would be captured into its graph (or
            // invalidate the capture): hold it until the capture ends.
            if raw::stream_is_capturing(stream.raw()).unwrap_or(false) {
                self.deferred.lock().push((block, stream.clone()));
                return Ok(());
            }
        }
        self.free_now(block, stream)
    }

    fn record_marker(&self, stream: &StreamHandle) -> Result<CudaMarker> {
        self.ctx.bind()?;
        let event = self.events.acquire(false)?;
        raw::event_record(event.raw(), stream.raw()).context(|| {
            format!(
                "recording a reuse marker on stream {} of device {}",
                stream.id().0,
                self.ordinal()
            )
        })?;
        Ok(event)
    }

    fn is_marker_complete(&self, marker: &CudaMarker) -> Result<bool> {
        self.ctx.bind()?;
        raw::event_query(marker.raw()).context(|| format!("querying a reuse marker on device {}", self.ordinal()))
    }

    fn wait_marker(&self, stream: &StreamHandle, marker: &CudaMarker) -> Result<()> {
        self.ctx.bind()?;
        raw::stream_wait_event(stream.raw(), marker.raw()).context(|| {
            format!(
                "making stream {} of device {} wait for a reuse marker",
                stream.id().0,
                self.ordinal()
            )
        })
    }
}

impl Drop for CudaMemory {
    fn drop(&mut self) {
        if self.ctx.bind().is_err() {
            return;
        }
        for (block, stream) in std::mem::take(self.deferred.get_mut()) {
            let _ = self.free_now(block, Some(&stream));
        }
        if let Some(pool) = self.pool.take() {
            // Outstanding frees complete first; the driver releases the pool after them.
            let _ = raw::mem_pool_destroy(pool.0);
        }
    }
}

impl std::fmt::Debug for CudaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMemory")
            .field("device", &self.device)
            .field("ordinal", &self.ordinal())
            .field("stream_ordered", &self.is_stream_ordered())
            .field("segments", &self.segment_strategy())
            .finish()
    }
}
