//! Device memory: `VkDeviceMemory` with one `VkBuffer` bound to each native block, the
//! registry that resolves regions back to buffers, and stream-ordered (deferred) frees.

use std::collections::HashMap;
use std::sync::Arc;

use ash::vk;
use gpuhal_hal::pool::{Allocator, NativeBlock};
use gpuhal_hal::{DeviceId, Error, MemoryKind, MemoryStats, Region, Result};
use parking_lot::Mutex;

use crate::device::DeviceShared;
use crate::error::{vk_error, VkResultExt};
use crate::queue::{StreamNative, Timeline};

/// A host pointer into persistently mapped device memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MappedPtr(pub(crate) *mut u8);

// SAFETY: the pointer names mapped Vulkan memory owned by a `RawBuffer`; it is only dereferenced while that buffer lives, and every access is ordered by the stream timeline (the host copies in or out only when no device work touches those bytes).
unsafe impl Send for MappedPtr {}
// SAFETY: as above; shared references never write through the pointer concurrently.
unsafe impl Sync for MappedPtr {}

/// Where a raw buffer's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A `DEVICE_LOCAL` memory type (preferring one the host cannot see).
    Device,
    /// A `HOST_VISIBLE | HOST_COHERENT` type (preferring system memory), mapped.
    HostCoherent,
}

/// A `VkBuffer` with the `VkDeviceMemory` bound to it.
#[derive(Debug)]
pub(crate) struct RawBuffer {
    pub(crate) buffer: vk::Buffer,
    pub(crate) memory: vk::DeviceMemory,
    pub(crate) size: u64,
    pub(crate) mapped: Option<MappedPtr>,
    /// The buffer device address, or 0 where the device has none.
    pub(crate) device_address: u64,
    /// The heap the memory was counted against, and the bytes counted (none for
    /// imported host memory).
    pub(crate) heap: Option<(usize, u64)>,
}

/// Usage of every buffer gpuhal creates: transfers both ways, and storage so framework
/// kernels can bind it.
pub(crate) fn buffer_usage(device_address: bool) -> vk::BufferUsageFlags {
    let usage =
        vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST | vk::BufferUsageFlags::STORAGE_BUFFER;
    if device_address {
        usage | vk::BufferUsageFlags::SHADER_DEVICE_ADDRESS
    } else {
        usage
    }
}

impl DeviceShared {
    /// The memory type for `placement` among `bits`, best first: the wanted flags without
    /// the unwanted ones, then the wanted flags, then (device memory only) anything.
    pub(crate) fn choose_memory_type(&self, bits: u32, placement: Placement) -> Option<u32> {
        let (wanted, unwanted) = match placement {
            Placement::Device => (
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
                vk::MemoryPropertyFlags::HOST_VISIBLE,
            ),
            Placement::HostCoherent => (
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            ),
        };
        let props = &self.memory_properties;
        let types = &props.memory_types[..props.memory_type_count as usize];
        let allowed = |index: usize| bits & (1 << index) != 0;
        let find = |accept: &dyn Fn(vk::MemoryPropertyFlags) -> bool| {
            (0..types.len()).find(|&i| allowed(i) && accept(types[i].property_flags))
        };
        find(&|f| f.contains(wanted) && !f.intersects(unwanted))
            .or_else(|| find(&|f| f.contains(wanted)))
            .or_else(|| {
                if placement == Placement::Device {
                    find(&|_| true)
                } else {
                    None
                }
            })
            .map(|i| i as u32)
    }

    /// Whether a `HOST_VISIBLE | HOST_COHERENT` memory type exists.
    pub(crate) fn has_host_coherent_type(&self) -> bool {
        self.choose_memory_type(u32::MAX, Placement::HostCoherent).is_some()
    }

    /// Creates a buffer of `size` bytes with memory bound to it (mapped for
    /// [`Placement::HostCoherent`]).
    pub(crate) fn create_buffer(&self, size: u64, placement: Placement, kind: MemoryKind) -> Result<RawBuffer> {
        let what = || format!("allocating {size} bytes of {kind:?} memory");
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(buffer_usage(self.buffer_device_address))
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: `info` is a valid create info; the buffer is destroyed by `destroy_buffer`.
        let buffer = unsafe { self.device.create_buffer(&info, None) }.vk("vkCreateBuffer", what)?;
        match self.bind_new_memory(buffer, size, placement, kind) {
            Ok(raw) => Ok(raw),
            Err(err) => {
                // SAFETY: the buffer was created above and never used.
                unsafe { self.device.destroy_buffer(buffer, None) };
                Err(err)
            }
        }
    }

    fn bind_new_memory(
        &self,
        buffer: vk::Buffer,
        size: u64,
        placement: Placement,
        kind: MemoryKind,
    ) -> Result<RawBuffer> {
        let what = || format!("allocating {size} bytes of {kind:?} memory");
        // SAFETY: `buffer` is a live buffer of this device.
        let requirements = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let type_index = self
            .choose_memory_type(requirements.memory_type_bits, placement)
            .ok_or_else(|| Error::invalid("allocate", format!("no Vulkan memory type suits {kind:?} memory")))?;
        let heap = self.memory_properties.memory_types[type_index as usize].heap_index as usize;
        let heap_size = self.memory_properties.memory_heaps[heap].size;
        {
            // The heap size is the ceiling, even where the driver would overcommit (a
            // CPU driver handing out host memory): running out is then deterministic,
            // and the caching pool's release-and-retry works everywhere.
            let mut used = self.heap_used.lock();
            if used[heap] + requirements.size > heap_size {
                return Err(Error::OutOfMemory {
                    requested: size,
                    kind,
                    limit: Some(heap_size),
                    stats: Box::new(MemoryStats::default()),
                });
            }
            used[heap] += requirements.size;
        }
        let unreserve = || self.heap_used.lock()[heap] -= requirements.size;
        let mut flags = vk::MemoryAllocateFlagsInfo::default().flags(vk::MemoryAllocateFlags::DEVICE_ADDRESS);
        let mut info = vk::MemoryAllocateInfo::default()
            .allocation_size(requirements.size)
            .memory_type_index(type_index);
        if self.buffer_device_address {
            info = info.push_next(&mut flags);
        }
        // SAFETY: `info` names a memory type of this device; freed by `destroy_buffer`.
        let memory = match unsafe { self.device.allocate_memory(&info, None) } {
            Ok(memory) => memory,
            Err(result) => {
                unreserve();
                return Err(vk_error(what(), "vkAllocateMemory", result));
            }
        };
        let raw = RawBuffer {
            buffer,
            memory,
            size,
            mapped: None,
            device_address: 0,
            heap: Some((heap, requirements.size)),
        };
        match self.finish_buffer(raw, placement) {
            Ok(raw) => Ok(raw),
            Err((memory, err)) => {
                // SAFETY: the memory was allocated above and is not in use.
                unsafe { self.device.free_memory(memory, None) };
                unreserve();
                Err(err)
            }
        }
    }

    /// Binds, maps (host placement) and reads the device address of a new buffer.
    fn finish_buffer(
        &self,
        mut raw: RawBuffer,
        placement: Placement,
    ) -> std::result::Result<RawBuffer, (vk::DeviceMemory, Error)> {
        let size = raw.size;
        // SAFETY: buffer and memory are fresh, unbound, and the memory meets the buffer's requirements (type and size were taken from them).
        unsafe { self.device.bind_buffer_memory(raw.buffer, raw.memory, 0) }
            .vk("vkBindBufferMemory", || {
                format!("binding {size} bytes of memory to a buffer")
            })
            .map_err(|err| (raw.memory, err))?;
        if placement == Placement::HostCoherent {
            // SAFETY: the memory is host-visible (chosen for that) and not mapped yet.
            let ptr = unsafe {
                self.device
                    .map_memory(raw.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            }
            .vk("vkMapMemory", || format!("mapping {size} bytes of host-visible memory"))
            .map_err(|err| (raw.memory, err))?;
            raw.mapped = Some(MappedPtr(ptr.cast()));
        }
        raw.device_address = self.device_address(raw.buffer);
        Ok(raw)
    }

    /// The buffer device address of `buffer`, or 0 without that feature.
    pub(crate) fn device_address(&self, buffer: vk::Buffer) -> u64 {
        if !self.buffer_device_address {
            return 0;
        }
        let info = vk::BufferDeviceAddressInfo::default().buffer(buffer);
        // SAFETY: the buffer was created with SHADER_DEVICE_ADDRESS usage and is bound to memory allocated with the DEVICE_ADDRESS flag.
        unsafe { self.device.get_buffer_device_address(&info) }
    }

    /// Destroys a buffer and frees its memory. The caller guarantees no device work
    /// still uses it.
    pub(crate) fn destroy_buffer(&self, raw: RawBuffer) {
        // SAFETY: per the caller's guarantee the buffer and memory are idle; destroying the buffer before freeing the memory bound to it is the required order, and freeing mapped memory unmaps it.
        unsafe {
            self.device.destroy_buffer(raw.buffer, None);
            self.device.free_memory(raw.memory, None);
        }
        if let Some((heap, bytes)) = raw.heap {
            self.heap_used.lock()[heap] -= bytes;
        }
    }

    /// Bytes allocated from `heap` and not yet freed.
    pub(crate) fn heap_used(&self, heap: usize) -> u64 {
        self.heap_used.lock()[heap]
    }

    /// Makes `buffer` (of `size` bytes) resolvable from regions.
    pub(crate) fn register(&self, buffer: vk::Buffer, size: u64) {
        self.registry.lock().insert(ash::vk::Handle::as_raw(buffer), size);
    }

    /// Forgets `buffer`: regions naming it fail to resolve from now on.
    pub(crate) fn unregister(&self, buffer: vk::Buffer) {
        self.registry.lock().remove(&ash::vk::Handle::as_raw(buffer));
    }

    /// Resolves `len` bytes at `offset` inside `region` to a live buffer and an offset
    /// in it, checking bounds and the device.
    pub(crate) fn resolve(
        &self,
        operation: &'static str,
        region: &Region,
        offset: u64,
        len: u64,
    ) -> Result<(vk::Buffer, u64)> {
        gpuhal_hal::check_device(operation, "buffer", self.id, region.device)?;
        gpuhal_hal::check_range(operation, offset, len, region.len)?;
        if len == 0 {
            return Ok((vk::Buffer::null(), 0));
        }
        let size = self.registry.lock().get(&region.native).copied().ok_or_else(|| {
            Error::invalid(
                operation,
                format!(
                    "region at {:#x} names no live Vulkan buffer (native {:#x}); was it freed?",
                    region.address, region.native
                ),
            )
        })?;
        let start = region.native_offset + offset;
        gpuhal_hal::check_range(operation, start, len, size)?;
        Ok((ash::vk::Handle::from_raw(region.native), start))
    }

    /// Hands out a fake device address range for a buffer without a device address:
    /// unique, 64 KiB aligned, in the top quarter of the address space.
    pub(crate) fn fake_address(&self, size: u64) -> u64 {
        const ALIGN: u64 = 64 << 10;
        let step = size.div_ceil(ALIGN).max(1) * ALIGN;
        self.next_fake_address
            .fetch_add(step, std::sync::atomic::Ordering::Relaxed)
    }

    /// The address to report for a raw buffer: its device address when that is
    /// 256-byte aligned, else a fake one.
    pub(crate) fn reported_address(&self, raw: &RawBuffer) -> u64 {
        if raw.device_address != 0 && raw.device_address & 0xff == 0 {
            raw.device_address
        } else {
            self.fake_address(raw.size)
        }
    }
}

/// A block waiting for device work before it is freed.
struct Deferred {
    /// Every (timeline, value) that must be reached first.
    after: Vec<(Arc<Timeline>, u64)>,
    raw: RawBuffer,
}

/// The Vulkan implementation of [`Allocator`]: one `VkDeviceMemory` + `VkBuffer` per
/// native block. `Region::native` is the `VkBuffer` handle, `native_offset` the offset in
/// it. Frees are ordered on the stream's timeline: a block is destroyed once the stream
/// has passed every value submitted before the free.
pub struct VulkanMemory {
    pub(crate) shared: Arc<DeviceShared>,
    /// Live blocks by buffer handle.
    blocks: Mutex<HashMap<u64, RawBuffer>>,
    deferred: Mutex<Vec<Deferred>>,
}

impl std::fmt::Debug for VulkanMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanMemory")
            .field("device", &self.shared.id)
            .field("blocks", &self.blocks.lock().len())
            .field("deferred", &self.deferred.lock().len())
            .finish()
    }
}

impl VulkanMemory {
    pub(crate) fn new(shared: Arc<DeviceShared>) -> Self {
        VulkanMemory {
            shared,
            blocks: Mutex::new(HashMap::new()),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// Destroys deferred blocks whose device work has completed.
    pub(crate) fn poll_deferred(&self) {
        let mut deferred = self.deferred.lock();
        if deferred.is_empty() {
            return;
        }
        let mut index = 0;
        while index < deferred.len() {
            let done = deferred[index]
                .after
                .iter()
                .all(|(timeline, value)| timeline.reached(*value).unwrap_or(false));
            if done {
                let entry = deferred.swap_remove(index);
                self.shared.destroy_buffer(entry.raw);
            } else {
                index += 1;
            }
        }
    }

    /// Out of memory: waits for the queued work that deferred frees wait for, and frees
    /// them. Returns whether anything was freed.
    fn wait_deferred(&self) -> bool {
        let waiting: Vec<Deferred> = std::mem::take(&mut *self.deferred.lock());
        let mut freed = false;
        for entry in waiting {
            let queued = entry.after.iter().all(|(timeline, value)| {
                timeline.submitted.load(std::sync::atomic::Ordering::Acquire) >= *value
                    && timeline.wait(*value, None).unwrap_or(false)
            });
            if queued {
                self.shared.destroy_buffer(entry.raw);
                freed = true;
            } else {
                self.deferred.lock().push(entry);
            }
        }
        freed
    }

    /// Blocks waiting on a stream's timeline before they are freed (test hook).
    pub fn deferred_frees(&self) -> usize {
        self.poll_deferred();
        self.deferred.lock().len()
    }

    fn defer(&self, raw: RawBuffer, after: Vec<(Arc<Timeline>, u64)>) {
        let idle = after
            .iter()
            .all(|(timeline, value)| timeline.reached(*value).unwrap_or(false));
        if idle {
            self.shared.destroy_buffer(raw);
        } else {
            self.deferred.lock().push(Deferred { after, raw });
        }
    }
}

impl Allocator for VulkanMemory {
    type Stream = Arc<StreamNative>;
    type Marker = (Arc<Timeline>, u64);

    fn device(&self) -> DeviceId {
        self.shared.id
    }

    fn allocate(&self, size: u64, kind: MemoryKind, _stream: Option<&Self::Stream>) -> Result<NativeBlock> {
        self.poll_deferred();
        let placement = match kind {
            MemoryKind::Device => Placement::Device,
            MemoryKind::HostPinned => Placement::HostCoherent,
            MemoryKind::Managed => {
                return Err(Error::Unsupported {
                    operation: "allocate managed memory",
                    needed: gpuhal_hal::Capabilities::MANAGED,
                })
            }
        };
        // Vulkan allocation is immediate, so the block is usable by any stream (and
        // during capture) without ordering on `_stream`.
        let raw = match self.shared.create_buffer(size, placement, kind) {
            Err(err) if err.is_out_of_memory() && self.wait_deferred() => {
                self.shared.create_buffer(size, placement, kind)?
            }
            other => other?,
        };
        let address = self.shared.reported_address(&raw);
        let native = ash::vk::Handle::as_raw(raw.buffer);
        self.shared.register(raw.buffer, size);
        self.blocks.lock().insert(native, raw);
        Ok(NativeBlock {
            address,
            size,
            kind,
            native,
            native_offset: 0,
        })
    }

    fn free(&self, block: NativeBlock, stream: Option<&Self::Stream>) -> Result<()> {
        let raw = self.blocks.lock().remove(&block.native).ok_or_else(|| {
            Error::invalid(
                "free",
                format!("block at {:#x} is not a live Vulkan allocation", block.address),
            )
        })?;
        self.shared.unregister(raw.buffer);
        let after = match stream {
            Some(stream) => stream.end_points(),
            // Graph pool memory may have been used by any stream: wait for them all.
            None => self.shared.all_stream_points(),
        };
        self.defer(raw, after);
        self.poll_deferred();
        Ok(())
    }

    fn record_marker(&self, stream: &Self::Stream) -> Result<Self::Marker> {
        Ok(stream.point())
    }

    fn is_marker_complete(&self, marker: &Self::Marker) -> Result<bool> {
        marker.0.reached(marker.1)
    }

    fn wait_marker(&self, stream: &Self::Stream, marker: &Self::Marker) -> Result<()> {
        stream.add_wait(marker.0.clone(), marker.1);
        Ok(())
    }
}

impl Drop for VulkanMemory {
    fn drop(&mut self) {
        for entry in self.deferred.get_mut().drain(..) {
            for (timeline, value) in &entry.after {
                // Every stream is gone by now, so values never submitted will never be
                // reached: wait only for work on the queue. A failed wait (device lost)
                // leaves nothing better than freeing anyway.
                let queued = (*value).min(timeline.submitted.load(std::sync::atomic::Ordering::Acquire));
                let _ = timeline.wait(queued, None);
            }
            self.shared.destroy_buffer(entry.raw);
        }
        for (_, raw) in self.blocks.get_mut().drain() {
            self.shared.unregister(raw.buffer);
            self.shared.destroy_buffer(raw);
        }
    }
}
