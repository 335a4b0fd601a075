//! Instance and device: loading the Vulkan loader, choosing a physical device, creating
//! the logical device and its queue, and reading capabilities from the driver.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};

use ash::vk;
use gpuhal_hal::event_pool::EventPool;
use gpuhal_hal::pool::CachingAllocator;
use gpuhal_hal::{
    Advice, AsRegion, Capabilities, DeviceId, DeviceInfo, Error, EventStats, HostImport, ImportPolicy, ImportStats,
    Location, ManagedPolicy, ManagedRangeInfo, MemoryKind, NativeError, Result, StreamId,
};
use parking_lot::Mutex;

use crate::error::{vk_error, VkResultExt};
use crate::event::{EventFactory, VulkanEvent};
use crate::fence::VulkanFence;
use crate::memory::{Placement, RawBuffer, VulkanMemory};
use crate::queue::{StreamNative, Timeline};
use crate::stream::VulkanStream;
use crate::VulkanBackend;

/// Environment variable: only physical devices whose name contains this substring
/// (case-insensitive) are counted by [`VulkanDevice::open`]'s ordinal.
pub const DEVICE_FILTER_ENV: &str = "GPUHAL_VULKAN_DEVICE";

/// Loads the Vulkan loader library.
fn load_entry() -> Result<ash::Entry> {
    // SAFETY: loading the system Vulkan loader runs its initialisers; it is the library this crate is written against, and `Entry` keeps it loaded while in use.
    unsafe { ash::Entry::load() }.map_err(|err| {
        Error::native(
            format!(
                "loading the Vulkan loader (libvulkan.so.1) failed: {err}; install a Vulkan loader \
                 and driver (on Debian/Ubuntu: libvulkan1 and mesa-vulkan-drivers for the CPU driver lavapipe)"
            ),
            NativeError {
                call: "vkGetInstanceProcAddr",
                code: i64::from(vk::Result::ERROR_INITIALIZATION_FAILED.as_raw()),
                name: "VK_ERROR_INITIALIZATION_FAILED".into(),
            },
        )
    })
}

/// Whether a Vulkan loader library can be loaded (a driver may still be missing: then
/// [`VulkanDevice::open`] fails with a clear error).
pub fn loader_available() -> bool {
    load_entry().is_ok()
}

/// Host import through `VK_EXT_external_memory_host`.
pub(crate) struct HostImportSupport {
    pub(crate) functions: ash::ext::external_memory_host::Device,
    /// `minImportedHostPointerAlignment`.
    pub(crate) alignment: u64,
    /// Host pointers into file mappings must not reach the driver (see
    /// [`crate::import`]): true for NVIDIA's proprietary driver.
    pub(crate) avoid_file_mappings: bool,
}

/// Timestamp support of the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timestamps {
    pub(crate) period_ns: f64,
    pub(crate) mask: u64,
}

/// Everything native a device's objects share. Destroyed last: every native object
/// holds an `Arc` to it.
pub(crate) struct DeviceShared {
    pub(crate) id: DeviceId,
    _entry: ash::Entry,
    pub(crate) instance: ash::Instance,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) device: ash::Device,
    pub(crate) queue: Mutex<vk::Queue>,
    pub(crate) queue_family: u32,
    pub(crate) memory_properties: vk::PhysicalDeviceMemoryProperties,
    pub(crate) host_import: Option<HostImportSupport>,
    pub(crate) buffer_device_address: bool,
    pub(crate) memory_budget: bool,
    pub(crate) timestamps: Option<Timestamps>,
    /// Live buffers (by handle) and their sizes, for resolving regions.
    pub(crate) registry: Mutex<HashMap<u64, u64>>,
    pub(crate) streams: Mutex<Vec<Weak<StreamNative>>>,
    /// Streams with held batches (see [`crate::queue`]).
    pub(crate) held: Mutex<Vec<Weak<StreamNative>>>,
    pub(crate) next_fake_address: AtomicU64,
    /// Timeline semaphores no longer used, kept for reuse and destroyed with the device
    /// (see [`Timeline::new`]).
    pub(crate) retired_semaphores: Mutex<Vec<vk::Semaphore>>,
    /// Bytes allocated per memory heap.
    pub(crate) heap_used: Mutex<Vec<u64>>,
    /// 1 KiB of host-visible memory: four bytes of value `v` at offset `4 v`, the source of
    /// the unaligned head and tail bytes of a fill.
    pub(crate) pattern: OnceLock<RawBuffer>,
}

impl DeviceShared {
    /// The end points of every live stream, for frees that any stream may still touch.
    pub(crate) fn all_stream_points(&self) -> Vec<(Arc<Timeline>, u64)> {
        let mut streams = self.streams.lock();
        streams.retain(|w| w.strong_count() > 0);
        let live: Vec<_> = streams.iter().filter_map(Weak::upgrade).collect();
        drop(streams);
        live.iter().flat_map(|s| s.end_points()).collect()
    }

    /// The heap device memory is allocated from.
    fn device_heap(&self) -> usize {
        self.choose_memory_type(u32::MAX, Placement::Device).map_or(0, |t| {
            self.memory_properties.memory_types[t as usize].heap_index as usize
        })
    }
}

impl Drop for DeviceShared {
    fn drop(&mut self) {
        // SAFETY: every object created from the device holds an `Arc` to this struct, so they are all gone; waiting for idle first covers work they left queued.
        unsafe {
            let _ = self.device.device_wait_idle();
        }
        if let Some(pattern) = self.pattern.take() {
            self.destroy_buffer(pattern);
        }
        for semaphore in self.retired_semaphores.get_mut().drain(..) {
            // SAFETY: the device is idle; no batch refers to a retired semaphore.
            unsafe { self.device.destroy_semaphore(semaphore, None) };
        }
        // SAFETY: the device is idle and no child object remains; the instance outlives the device until here.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A physical device that qualifies: Vulkan 1.2 with timeline semaphores.
struct Candidate {
    physical: vk::PhysicalDevice,
    name: String,
    properties: vk::PhysicalDeviceProperties,
}

fn candidates(instance: &ash::Instance) -> Result<(Vec<Candidate>, Vec<String>)> {
    // SAFETY: the instance is live.
    let physicals = unsafe { instance.enumerate_physical_devices() }
        .vk("vkEnumeratePhysicalDevices", || "listing Vulkan devices".into())?;
    let filter = std::env::var(DEVICE_FILTER_ENV).ok().map(|f| f.to_lowercase());
    let mut found = Vec::new();
    let mut rejected = Vec::new();
    for physical in physicals {
        // SAFETY: `physical` was just enumerated from this instance.
        let properties = unsafe { instance.get_physical_device_properties(physical) };
        let name = properties
            .device_name_as_c_str()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unnamed device".into());
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut v12);
        if properties.api_version < vk::API_VERSION_1_2 {
            rejected.push(format!("{name} (Vulkan {} < 1.2)", version(properties.api_version)));
            continue;
        }
        // SAFETY: the device supports Vulkan 1.2, so the 1.2 feature struct is valid.
        unsafe { instance.get_physical_device_features2(physical, &mut features) };
        if v12.timeline_semaphore != vk::TRUE {
            rejected.push(format!("{name} (no timeline semaphores)"));
            continue;
        }
        if let Some(filter) = &filter {
            if !name.to_lowercase().contains(filter) {
                rejected.push(format!("{name} (filtered out by {DEVICE_FILTER_ENV})"));
                continue;
            }
        }
        found.push(Candidate {
            physical,
            name,
            properties,
        });
    }
    Ok((found, rejected))
}

fn version(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// Picks the queue family: one that does graphics or compute (both imply transfer),
/// preferring one with timestamps.
fn choose_queue_family(families: &[vk::QueueFamilyProperties]) -> Option<u32> {
    let general = |f: &vk::QueueFamilyProperties| {
        f.queue_flags
            .intersects(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE)
            && f.queue_count > 0
    };
    let transfer =
        |f: &vk::QueueFamilyProperties| f.queue_flags.contains(vk::QueueFlags::TRANSFER) && f.queue_count > 0;
    let pick = |accept: &dyn Fn(&vk::QueueFamilyProperties) -> bool| families.iter().position(accept);
    pick(&|f| general(f) && f.timestamp_valid_bits > 0)
        .or_else(|| pick(&general))
        .or_else(|| pick(&transfer))
        .map(|i| i as u32)
}

/// An opened Vulkan device.
pub struct VulkanDevice {
    pub(crate) shared: Arc<DeviceShared>,
    allocator: CachingAllocator<VulkanMemory>,
    events: EventPool<EventFactory>,
    /// An internal stream for CPU fence signals that must queue behind pending GPU ones.
    pub(crate) host_signals: Arc<StreamNative>,
    import_stats: Mutex<ImportStats>,
    managed_policy: Mutex<ManagedPolicy>,
    capabilities: Capabilities,
    info: DeviceInfo,
}

impl std::fmt::Debug for VulkanDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanDevice")
            .field("info", &self.info)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl VulkanDevice {
    /// Opens the `ordinal`-th physical device that supports Vulkan 1.2 with timeline
    /// semaphores (and whose name contains `$GPUHAL_VULKAN_DEVICE`, if set).
    ///
    /// Fails with a clear [`Error::Native`] when no Vulkan loader or driver is present.
    pub fn open(ordinal: u32) -> Result<VulkanDevice> {
        let entry = load_entry()?;
        // SAFETY: the entry is loaded; querying the instance version has no preconditions.
        let loader_version = unsafe { entry.try_enumerate_instance_version() }
            .vk("vkEnumerateInstanceVersion", || {
                "querying the Vulkan loader version".into()
            })?
            .unwrap_or(vk::API_VERSION_1_0);
        if loader_version < vk::API_VERSION_1_2 {
            return Err(vk_error(
                format!(
                    "the Vulkan loader supports {} only; gpuhal needs 1.2",
                    version(loader_version)
                ),
                "vkCreateInstance",
                vk::Result::ERROR_INCOMPATIBLE_DRIVER,
            ));
        }
        let app = vk::ApplicationInfo::default()
            .application_name(c"gpuhal")
            .engine_name(c"gpuhal")
            .api_version(vk::API_VERSION_1_2);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: valid create info; the instance is destroyed by `DeviceShared` or below.
        let instance = unsafe { entry.create_instance(&info, None) }.vk("vkCreateInstance", || {
            "creating a Vulkan instance (is a Vulkan driver installed? lavapipe: mesa-vulkan-drivers)".into()
        })?;
        match Self::open_on(entry, instance.clone(), ordinal) {
            Ok(device) => Ok(device),
            Err((err, destroy)) => {
                if destroy {
                    // SAFETY: nothing was created from the instance that still lives.
                    unsafe { instance.destroy_instance(None) };
                }
                Err(err)
            }
        }
    }

    /// The rest of `open`. On error, the flag says whether the caller still owns (and
    /// must destroy) the instance.
    fn open_on(
        entry: ash::Entry,
        instance: ash::Instance,
        ordinal: u32,
    ) -> std::result::Result<VulkanDevice, (Error, bool)> {
        let (found, rejected) = candidates(&instance).map_err(|e| (e, true))?;
        let Some(candidate) = found.get(ordinal as usize) else {
            let names: Vec<_> = found.iter().map(|c| c.name.as_str()).collect();
            return Err((
                Error::invalid(
                    "VulkanDevice::open",
                    format!(
                        "no Vulkan device with ordinal {ordinal}: {} usable ({}); not usable: [{}]",
                        found.len(),
                        names.join(", "),
                        rejected.join(", ")
                    ),
                ),
                true,
            ));
        };
        let physical = candidate.physical;
        // SAFETY: `physical` belongs to the instance.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let family = choose_queue_family(&families).ok_or_else(|| {
            (
                Error::invalid(
                    "VulkanDevice::open",
                    format!("{} has no transfer queue", candidate.name),
                ),
                true,
            )
        })?;
        // SAFETY: `physical` belongs to the instance.
        let extensions = unsafe { instance.enumerate_device_extension_properties(physical) }
            .vk("vkEnumerateDeviceExtensionProperties", || {
                "listing device extensions".into()
            })
            .map_err(|e| (e, true))?;
        let has = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
        let host_import = has(ash::ext::external_memory_host::NAME);
        let memory_budget = has(ash::ext::memory_budget::NAME);
        let mut v12_supported = vk::PhysicalDeviceVulkan12Features::default();
        let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut v12_supported);
        // SAFETY: the device supports Vulkan 1.2 (checked when listing candidates).
        unsafe { instance.get_physical_device_features2(physical, &mut features) };
        let buffer_device_address = v12_supported.buffer_device_address == vk::TRUE;

        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&priorities)];
        let mut enabled_names = Vec::new();
        if host_import {
            enabled_names.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        if memory_budget {
            enabled_names.push(ash::ext::memory_budget::NAME.as_ptr());
        }
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default()
            .timeline_semaphore(true)
            .buffer_device_address(buffer_device_address);
        let device_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
            .enabled_extension_names(&enabled_names)
            .push_next(&mut v12);
        // SAFETY: every enabled extension and feature was reported as supported.
        let device = unsafe { instance.create_device(physical, &device_info, None) }
            .vk("vkCreateDevice", || {
                format!("creating a Vulkan device on {}", candidate.name)
            })
            .map_err(|e| (e, true))?;
        // SAFETY: queue 0 of `family` was requested at device creation.
        let queue = unsafe { device.get_device_queue(family, 0) };
        // SAFETY: `physical` belongs to the instance.
        let memory_properties = unsafe { instance.get_physical_device_memory_properties(physical) };

        let host_import = host_import.then(|| {
            let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut driver = vk::PhysicalDeviceDriverProperties::default();
            let mut props = vk::PhysicalDeviceProperties2::default()
                .push_next(&mut host)
                .push_next(&mut driver);
            // SAFETY: the extension is supported and the device is Vulkan 1.2 (driver properties are core), so both structs are valid in the chain.
            unsafe { instance.get_physical_device_properties2(physical, &mut props) };
            HostImportSupport {
                functions: ash::ext::external_memory_host::Device::new(&instance, &device),
                alignment: host.min_imported_host_pointer_alignment.max(1),
                avoid_file_mappings: driver.driver_id == vk::DriverId::NVIDIA_PROPRIETARY,
            }
        });
        let valid_bits = families[family as usize].timestamp_valid_bits;
        let timestamps = (valid_bits > 0 && candidate.properties.limits.timestamp_period > 0.0).then(|| Timestamps {
            period_ns: f64::from(candidate.properties.limits.timestamp_period),
            mask: if valid_bits >= 64 {
                u64::MAX
            } else {
                (1u64 << valid_bits) - 1
            },
        });

        let name = candidate.name.clone();
        let shared = Arc::new(DeviceShared {
            id: DeviceId::fresh(),
            _entry: entry,
            instance,
            physical,
            device,
            queue: Mutex::new(queue),
            queue_family: family,
            memory_properties,
            host_import,
            buffer_device_address,
            memory_budget,
            timestamps,
            registry: Mutex::new(HashMap::new()),
            streams: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            next_fake_address: AtomicU64::new(1 << 62),
            retired_semaphores: Mutex::new(Vec::new()),
            heap_used: Mutex::new(vec![0; memory_properties.memory_heap_count as usize]),
            pattern: OnceLock::new(),
        });
        // From here `shared` owns the instance and device.
        Self::finish(shared, ordinal, name).map_err(|e| (e, false))
    }

    fn finish(shared: Arc<DeviceShared>, ordinal: u32, name: String) -> Result<VulkanDevice> {
        let pattern = shared.create_buffer(1024, Placement::HostCoherent, MemoryKind::HostPinned)?;
        if let Some(mapped) = pattern.mapped {
            // SAFETY: the mapping covers the buffer's 1024 bytes and nothing else uses it yet.
            let bytes = unsafe { std::slice::from_raw_parts_mut(mapped.0, 1024) };
            for (index, byte) in bytes.iter_mut().enumerate() {
                *byte = (index / 4) as u8;
            }
        }
        let _ = shared.pattern.set(pattern);

        let mut capabilities = Capabilities::GRAPHS | Capabilities::TIMELINE_FENCE | Capabilities::STREAM_ORDERED_ALLOC;
        if shared.timestamps.is_some() {
            capabilities |= Capabilities::TIMING_EVENTS;
        }
        if shared.has_host_coherent_type() {
            capabilities |= Capabilities::HOST_PINNED;
        }
        if shared.host_import.is_some() {
            capabilities |= Capabilities::HOST_REGISTER;
        }
        let total_memory = shared.memory_properties.memory_heaps[shared.device_heap()].size;
        let host_signals = StreamNative::new(&shared, StreamId::fresh())?;
        Ok(VulkanDevice {
            allocator: CachingAllocator::new(VulkanMemory::new(shared.clone())),
            events: EventPool::new(EventFactory { shared: shared.clone() }),
            host_signals,
            import_stats: Mutex::new(ImportStats::default()),
            managed_policy: Mutex::new(ManagedPolicy::default()),
            capabilities,
            info: DeviceInfo {
                id: shared.id,
                backend: "vulkan",
                ordinal,
                name,
                total_memory,
            },
            shared,
        })
    }

    /// Names of the usable devices, in ordinal order (empty without a loader or driver).
    pub fn list() -> Vec<String> {
        let Ok(entry) = load_entry() else { return Vec::new() };
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: valid create info; destroyed below.
        let Ok(instance) = (unsafe { entry.create_instance(&info, None) }) else {
            return Vec::new();
        };
        let names = candidates(&instance)
            .map(|(found, _)| found.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        // SAFETY: nothing was created from the instance.
        unsafe { instance.destroy_instance(None) };
        names
    }

    /// The raw `VkDevice`, for frameworks that record their own work.
    pub fn raw_device(&self) -> &ash::Device {
        &self.shared.device
    }

    /// The raw `VkInstance`.
    pub fn raw_instance(&self) -> &ash::Instance {
        &self.shared.instance
    }

    /// The raw `VkPhysicalDevice`.
    pub fn raw_physical_device(&self) -> vk::PhysicalDevice {
        self.shared.physical
    }

    /// The queue family all streams submit to.
    pub fn queue_family(&self) -> u32 {
        self.shared.queue_family
    }

    /// Blocks waiting on stream timelines before they are freed.
    pub fn deferred_frees(&self) -> usize {
        self.allocator.native().deferred_frees()
    }

    fn managed_unsupported(operation: &'static str) -> Error {
        Error::Unsupported {
            operation,
            needed: Capabilities::MANAGED,
        }
    }
}

impl gpuhal_hal::Device<VulkanBackend> for VulkanDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn allocator(&self) -> &CachingAllocator<VulkanMemory> {
        &self.allocator
    }

    fn create_stream(&self) -> Result<VulkanStream> {
        VulkanStream::new(&self.shared, &self.allocator)
    }

    fn event(&self, timing: bool) -> Result<VulkanEvent> {
        if timing && !self.capabilities.contains(Capabilities::TIMING_EVENTS) {
            return Err(Error::Unsupported {
                operation: "timing event",
                needed: Capabilities::TIMING_EVENTS,
            });
        }
        Ok(VulkanEvent::new(self.shared.id, self.events.acquire(timing)?))
    }

    fn event_stats(&self) -> EventStats {
        self.events.stats()
    }

    fn create_fence(&self, initial: u64) -> Result<VulkanFence> {
        VulkanFence::new(&self.shared, self.host_signals.clone(), initial)
    }

    fn managed_policy(&self) -> ManagedPolicy {
        *self.managed_policy.lock()
    }

    fn set_managed_policy(&self, policy: ManagedPolicy) {
        *self.managed_policy.lock() = policy;
    }

    fn advise(&self, _region: &dyn AsRegion, _advice: Advice) -> Result<()> {
        Err(Self::managed_unsupported("advise"))
    }

    fn prefetch(&self, _region: &dyn AsRegion, _to: Location, _stream: &VulkanStream) -> Result<()> {
        Err(Self::managed_unsupported("prefetch"))
    }

    fn managed_range_info(&self, _region: &dyn AsRegion) -> Result<ManagedRangeInfo> {
        Err(Self::managed_unsupported("managed_range_info"))
    }

    fn import_host<'a>(&self, host: &'a [u8], policy: ImportPolicy, stream: &VulkanStream) -> Result<HostImport<'a>> {
        gpuhal_hal::check_device("import_host", "stream", self.shared.id, stream.device_id_raw())?;
        let result = crate::import::import_host(self, host, policy, stream);
        let mut stats = self.import_stats.lock();
        match &result {
            Ok(import) => match import.path() {
                gpuhal_hal::ImportPath::Coherent => stats.coherent += 1,
                gpuhal_hal::ImportPath::Registered => stats.registered += 1,
                gpuhal_hal::ImportPath::Copied => {
                    stats.copied += 1;
                    stats.copied_bytes += host.len() as u64;
                }
            },
            Err(Error::ImportRefused { .. }) => stats.refused += 1,
            Err(_) => {}
        }
        result
    }

    fn import_stats(&self) -> ImportStats {
        self.import_stats.lock().clone()
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        let heap = self.shared.device_heap();
        let total = self.shared.memory_properties.memory_heaps[heap].size;
        let mut free = total.saturating_sub(self.shared.heap_used(heap));
        if self.shared.memory_budget {
            let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
            let mut props = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
            // SAFETY: VK_EXT_memory_budget is enabled, so its struct is valid in the chain.
            unsafe {
                self.shared
                    .instance
                    .get_physical_device_memory_properties2(self.shared.physical, &mut props)
            };
            // The budget counts other processes too.
            free = free.min(budget.heap_budget[heap].saturating_sub(budget.heap_usage[heap]));
        }
        Ok((free, total))
    }

    fn synchronize(&self) -> Result<()> {
        for (timeline, value) in self.shared.all_stream_points() {
            timeline.wait(value, None)?;
        }
        Ok(())
    }
}
