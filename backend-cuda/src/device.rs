//! The device: its primary context, capabilities read from device attributes, and the
//! per-device allocator, event pool, managed policy and host import counters.

use std::sync::Arc;

use gpuhal_hal::{
    check_device, Advice, AsRegion, Buffer, CachingAllocator, Capabilities, DeviceId, DeviceInfo, Error, EventStats,
    HostImport, ImportPolicy, ImportStats, Location, ManagedPolicy, ManagedRangeInfo, MemoryKind, PoolConfig, Region,
    Result, SegmentStrategy, SharedEvent, SharedImport, SharedMemory,
};
use parking_lot::{Mutex, RwLock};

use crate::context::Context;
use crate::error::Context as _;
use crate::event::{CudaEvent, CudaEventPool, CudaEvents};
use crate::fence::CudaFence;
use crate::memory::CudaMemory;
use crate::raw::{self, CUcontext, CUdevice_attribute as A};
use crate::sharing::Registration;
use crate::stream::CudaStream;
use crate::CudaBackend;

/// Device attributes behind the capabilities, as read at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttributes {
    /// `CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY`.
    pub managed_memory: bool,
    /// `CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS`.
    pub concurrent_managed_access: bool,
    /// `CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS` (HMM or a coherent platform).
    pub pageable_memory_access: bool,
    /// `CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES` (ATS, coherent).
    pub pageable_uses_host_page_tables: bool,
    /// `CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED`.
    pub host_register: bool,
    /// `CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`.
    pub read_only_host_register: bool,
    /// `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`.
    pub memory_pools: bool,
    /// `CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS`.
    pub stream_mem_ops_64: bool,
    /// `CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY`.
    pub can_map_host_memory: bool,
    /// `CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING`.
    pub unified_addressing: bool,
    /// `CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED`.
    pub virtual_memory_management: bool,
}

impl DeviceAttributes {
    fn read(ctx: &Context) -> Result<Self> {
        let get = |attribute: A, what: &str| -> Result<bool> {
            raw::device_attribute(ctx.device(), attribute)
                .map(|v| v != 0)
                .context(|| format!("reading attribute {what} of CUDA device {}", ctx.ordinal()))
        };
        Ok(DeviceAttributes {
            managed_memory: get(A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY, "MANAGED_MEMORY")?,
            concurrent_managed_access: get(
                A::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS,
                "CONCURRENT_MANAGED_ACCESS",
            )?,
            pageable_memory_access: get(A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS, "PAGEABLE_MEMORY_ACCESS")?,
            pageable_uses_host_page_tables: get(
                A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES,
                "PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES",
            )?,
            host_register: get(
                A::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
                "HOST_REGISTER_SUPPORTED",
            )?,
            read_only_host_register: get(
                A::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED,
                "READ_ONLY_HOST_REGISTER_SUPPORTED",
            )?,
            memory_pools: get(A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, "MEMORY_POOLS_SUPPORTED")?,
            stream_mem_ops_64: get(
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS,
                "CAN_USE_64_BIT_STREAM_MEM_OPS",
            )?,
            can_map_host_memory: get(A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, "CAN_MAP_HOST_MEMORY")?,
            unified_addressing: get(A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, "UNIFIED_ADDRESSING")?,
            virtual_memory_management: get(
                A::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED",
            )?,
        })
    }

    /// The capabilities these attributes give.
    pub fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::GRAPHS | Capabilities::TIMING_EVENTS;
        let mut set = |flag: Capabilities, on: bool| caps.set(flag, on);
        set(Capabilities::MANAGED, self.managed_memory);
        set(Capabilities::CONCURRENT_MANAGED, self.concurrent_managed_access);
        set(
            Capabilities::MANAGED_ADVICE,
            self.managed_memory && self.concurrent_managed_access,
        );
        set(Capabilities::PAGEABLE_ACCESS, self.pageable_memory_access);
        set(
            Capabilities::HOST_REGISTER,
            self.host_register && self.can_map_host_memory && self.unified_addressing,
        );
        set(Capabilities::STREAM_ORDERED_ALLOC, self.memory_pools);
        set(Capabilities::GRAPH_MEM_NODES, self.memory_pools);
        set(
            Capabilities::HOST_PINNED,
            self.can_map_host_memory && self.unified_addressing,
        );
        set(Capabilities::GROWABLE_SEGMENTS, self.virtual_memory_management);
        set(
            Capabilities::TIMELINE_FENCE,
            self.stream_mem_ops_64 && self.can_map_host_memory,
        );
        caps
    }
}

/// An opened CUDA device.
pub struct CudaDevice {
    ctx: Arc<Context>,
    info: DeviceInfo,
    attributes: DeviceAttributes,
    caps: Capabilities,
    events: CudaEventPool,
    policy: Arc<RwLock<ManagedPolicy>>,
    imports: Mutex<ImportStats>,
    allocator: CachingAllocator<CudaMemory>,
    sharing: bool,
    _registration: Registration,
}

impl CudaDevice {
    /// Opens device `ordinal` with the default pool configuration.
    ///
    /// With no CUDA driver installed this is an error saying so, not a panic.
    pub fn open(ordinal: u32) -> Result<CudaDevice> {
        Self::open_with(ordinal, PoolConfig::default())
    }

    /// Opens device `ordinal` with `config` for its caching allocator.
    pub fn open_with(ordinal: u32, config: PoolConfig) -> Result<CudaDevice> {
        Self::open_inner(ordinal, config, false)
    }

    /// Opens device `ordinal` with sharing enabled: [`MemoryKind::Device`] allocations
    /// come from an exportable memory pool (POSIX file descriptors), so
    /// [`export`](gpuhal_hal::Device::export) can hand them to other processes. The cache
    /// works as for [`open_with`](Self::open_with). Needs [`Capabilities::IPC`] and
    /// native segments.
    pub fn open_shared(ordinal: u32, config: PoolConfig) -> Result<CudaDevice> {
        Self::open_inner(ordinal, config, true)
    }

    fn open_inner(ordinal: u32, config: PoolConfig, sharing: bool) -> Result<CudaDevice> {
        let ctx = Context::retain(ordinal)?;
        let attributes = DeviceAttributes::read(&ctx)?;
        let mut caps = attributes.capabilities();
        caps.set(
            Capabilities::IPC,
            crate::sharing::ipc_supported(&ctx, attributes.memory_pools)?,
        );
        caps.set(Capabilities::PEER_ACCESS, crate::sharing::peer_access_possible(&ctx));
        if sharing && !caps.contains(Capabilities::IPC) {
            return Err(Error::Unsupported {
                operation: "open with sharing enabled",
                needed: Capabilities::IPC,
            });
        }
        if sharing && config.segments == SegmentStrategy::Growable {
            return Err(Error::invalid(
                "open with sharing enabled",
                "memory of growable segments is not exportable: open a sharing device with native segments",
            ));
        }
        let name = raw::device_name(ctx.device()).context(|| format!("reading the name of CUDA device {ordinal}"))?;
        let total_memory = raw::device_total_mem(ctx.device())
            .context(|| format!("reading the memory size of CUDA device {ordinal}"))?;
        let id = DeviceId::fresh();
        let events = CudaEventPool::new(CudaEvents::new(ctx.clone()));
        let policy = Arc::new(RwLock::new(ManagedPolicy::default()));
        if config.segments == SegmentStrategy::Growable && !caps.contains(Capabilities::GROWABLE_SEGMENTS) {
            return Err(Error::Unsupported {
                operation: "open with growable segments",
                needed: Capabilities::GROWABLE_SEGMENTS,
            });
        }
        let memory = CudaMemory::new(
            ctx.clone(),
            id,
            attributes.memory_pools,
            config.segments,
            total_memory,
            events.clone(),
            policy.clone(),
            caps.contains(Capabilities::MANAGED_ADVICE),
            sharing,
        )?;
        let registration = Registration::new(id, ctx.device());
        Ok(CudaDevice {
            info: DeviceInfo {
                id,
                backend: "cuda",
                ordinal,
                name,
                total_memory,
            },
            attributes,
            caps,
            events,
            policy,
            imports: Mutex::new(ImportStats::default()),
            allocator: CachingAllocator::with_config(memory, config),
            sharing,
            _registration: registration,
            ctx,
        })
    }

    /// Whether the device was opened with [`open_shared`](Self::open_shared), so its
    /// device memory can be exported.
    pub fn sharing_enabled(&self) -> bool {
        self.sharing
    }

    /// The device attributes the capabilities were derived from.
    pub fn attributes(&self) -> DeviceAttributes {
        self.attributes
    }

    /// The primary context, for frameworks that call the driver themselves.
    pub fn raw_context(&self) -> CUcontext {
        self.ctx.raw()
    }

    /// The ordinal the device was opened with.
    pub fn ordinal(&self) -> u32 {
        self.ctx.ordinal()
    }

    /// Makes the device's context current on the calling thread (done by every gpuhal
    /// call that needs a current context; event record, query and wait do not, since
    /// their handles name it). Useful before calling the driver directly.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind()
    }

    /// Why captured fills and copies of up to [`SMALL_OP_LIMIT`](crate::SMALL_OP_LIMIT)
    /// bytes use the driver's memset and memcpy instead of gpuhal's kernels; `None` when
    /// the kernels loaded (the normal case), which makes graphs of small ops much cheaper
    /// to replay.
    pub fn small_op_kernels_error(&self) -> Option<&gpuhal_hal::NativeError> {
        self.ctx.small_ops_error()
    }

    /// Trims the event pool: destroys idle native events, returns how many.
    pub fn trim_events(&self) -> u64 {
        self.events.trim()
    }

    pub(crate) fn ctx(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn id_inner(&self) -> DeviceId {
        self.info.id
    }

    pub(crate) fn capabilities_inner(&self) -> Capabilities {
        self.caps
    }

    pub(crate) fn memory(&self) -> &CudaMemory {
        self.allocator.native()
    }

    pub(crate) fn read_only_register(&self) -> bool {
        self.attributes.read_only_host_register
    }

    /// The managed range `region` names, checked for this device and kind.
    fn managed_region(&self, operation: &'static str, region: &dyn AsRegion) -> Result<Region> {
        if !self.caps.contains(Capabilities::MANAGED_ADVICE) {
            return Err(Error::Unsupported {
                operation,
                needed: Capabilities::MANAGED_ADVICE,
            });
        }
        let region = region.region();
        check_device(operation, "buffer", self.info.id, region.device)?;
        if region.kind != MemoryKind::Managed {
            return Err(Error::invalid(
                operation,
                format!(
                    "{} bytes at {:#x} are {:?} memory; advice and prefetch apply to managed memory",
                    region.len, region.address, region.kind
                ),
            ));
        }
        self.ctx.bind()?;
        Ok(region)
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .field("capabilities", &self.caps)
            .finish()
    }
}

/// The legacy default stream (`CU_STREAM_LEGACY`), which synchronizes with every blocking
/// stream of the context; the null stream means the same in the driver API.
pub const LEGACY_DEFAULT_STREAM: raw::CUstream = 0x1 as raw::CUstream;
/// The per-thread default stream (`CU_STREAM_PER_THREAD`).
pub const PER_THREAD_DEFAULT_STREAM: raw::CUstream = 0x2 as raw::CUstream;

impl CudaDevice {
    /// A gpuhal stream over a stream the framework created: its work is ordered with the
    /// framework's own kernels on it, and its buffers have a cache in this device's
    /// allocator like any stream's. gpuhal never destroys it. The null stream,
    /// [`LEGACY_DEFAULT_STREAM`] and [`PER_THREAD_DEFAULT_STREAM`] are accepted too.
    ///
    /// Adopting the same native stream twice gives two gpuhal streams with separate caches;
    /// frameworks that adopt per call should keep the first one (as the PyTorch allocator of
    /// the C ABI does).
    ///
    /// # Safety
    ///
    /// `raw` must be a stream of this device's primary context (or one of the special
    /// handles above), and must stay alive until the returned stream and every buffer
    /// allocated on it have dropped and their stream-ordered frees have been enqueued.
    ///
    /// ```no_run
    /// # fn framework_stream() -> gpuhal_cuda::sys::CUstream { std::ptr::null_mut() }
    /// use gpuhal_cuda::CudaDevice;
    /// use gpuhal_hal::{Device, MemoryKind};
    ///
    /// let device = CudaDevice::open(0)?;
    /// // SAFETY: the framework keeps its stream alive for longer than `stream` and its buffers.
    /// let stream = unsafe { device.adopt_stream(framework_stream()) }?;
    /// let buffer = device.allocate(1 << 20, MemoryKind::Device, &stream)?;
    /// # Ok::<(), gpuhal_hal::Error>(())
    /// ```
    pub unsafe fn adopt_stream(&self, raw: raw::CUstream) -> Result<CudaStream> {
        self.ctx.bind()?;
        Ok(CudaStream::adopt(
            &self.ctx,
            &self.allocator,
            self.info.id,
            self.caps.contains(Capabilities::TIMELINE_FENCE),
            raw,
        ))
    }
}

impl gpuhal_hal::Device<CudaBackend> for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn allocator(&self) -> &CachingAllocator<CudaMemory> {
        &self.allocator
    }

    fn create_stream(&self) -> Result<CudaStream> {
        CudaStream::new(
            &self.ctx,
            &self.allocator,
            self.info.id,
            self.caps.contains(Capabilities::TIMELINE_FENCE),
        )
    }

    fn event(&self, timing: bool) -> Result<CudaEvent> {
        Ok(CudaEvent::new(self.events.acquire(timing)?, self.info.id))
    }

    fn event_stats(&self) -> EventStats {
        self.events.stats()
    }

    fn create_fence(&self, initial: u64) -> Result<CudaFence> {
        CudaFence::new(&self.ctx, self.info.id, initial)
    }

    fn managed_policy(&self) -> ManagedPolicy {
        *self.policy.read()
    }

    fn set_managed_policy(&self, policy: ManagedPolicy) {
        *self.policy.write() = policy;
    }

    fn advise(&self, region: &dyn AsRegion, advice: Advice) -> Result<()> {
        let region = self.managed_region("advise", region)?;
        self.memory().apply_advice(region.address, region.len, advice)
    }

    fn prefetch(&self, region: &dyn AsRegion, to: Location, stream: &CudaStream) -> Result<()> {
        check_device("prefetch", "stream", self.info.id, stream.device_id_inner())?;
        let region = self.managed_region("prefetch", region)?;
        self.memory().prefetch(region.address, region.len, to, stream.handle())
    }

    fn managed_range_info(&self, region: &dyn AsRegion) -> Result<ManagedRangeInfo> {
        let region = self.managed_region("managed_range_info", region)?;
        self.memory().range_info(region.address, region.len)
    }

    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &CudaStream) -> Result<HostImport<'a>> {
        crate::host_import::import_host(self, host, policy, stream, &self.imports)
    }

    fn import_stats(&self) -> ImportStats {
        self.imports.lock().clone()
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        // Released segment blocks whose streams are done go back first, so the report
        // shows them free.
        self.memory().unmap_released(false)?;
        self.ctx.bind()?;
        raw::mem_get_info().context(|| format!("reading free memory of CUDA device {}", self.ordinal()))
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        raw::ctx_synchronize().context(|| format!("synchronising CUDA device {}", self.ordinal()))
    }

    fn can_access_peer(&self, peer: &CudaDevice) -> bool {
        crate::sharing::can_access_peer(self, peer)
    }

    fn enable_peer_access(&self, peer: &CudaDevice) -> Result<()> {
        crate::sharing::enable_peer_access(self, peer)
    }

    fn export(&self, buffer: &Buffer<CudaBackend>) -> Result<SharedMemory> {
        crate::sharing::export(self, buffer)
    }

    fn import_shared(&self, handle: &SharedMemory) -> Result<SharedImport> {
        crate::sharing::import(self, handle)
    }

    fn shared_event(&self) -> Result<(CudaEvent, SharedEvent)> {
        crate::sharing::shared_event(self)
    }

    fn import_event(&self, handle: &SharedEvent) -> Result<CudaEvent> {
        crate::sharing::import_event(self, handle)
    }
}
