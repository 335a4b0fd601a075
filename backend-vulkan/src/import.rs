//! Host import: making existing host memory (an mmap'd model file) usable by the device.
//!
//! Vulkan has no way for a device to read pageable host memory directly, so `Coherent`
//! is never taken. Where the driver offers `VK_EXT_external_memory_host`, the host range
//! (widened to `minImportedHostPointerAlignment`) is imported as `VkDeviceMemory` and a
//! buffer is bound to it: the driver pins the pages and maps them for the device, which
//! is what `cuMemHostRegister` does, so the path is reported as
//! [`ImportPath::Registered`]. Otherwise the data is copied to device memory if the
//! policy allows it, and refused with the reasons if not.

use std::sync::Arc;

use ash::vk;
use gpuhal_hal::{AsRegion, Device, Error, HostImport, ImportPath, ImportPolicy, MemoryKind, Region, Result, Stream};

use crate::device::{DeviceShared, HostImportSupport, VulkanDevice};
use crate::error::{vk_error, VkResultExt};
use crate::memory::{buffer_usage, RawBuffer};
use crate::stream::VulkanStream;

/// Undoes a registered import: waits for every stream's work, then frees the memory
/// (the host pages are the caller's again).
struct Registered {
    shared: Arc<DeviceShared>,
    raw: Option<RawBuffer>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let Some(raw) = self.raw.take() else { return };
        self.shared.unregister(raw.buffer);
        // The host memory may be unmapped right after this returns: every stream that
        // could read it must be done.
        for (timeline, value) in self.shared.all_stream_points() {
            let _ = timeline.wait(value, None);
        }
        self.shared.destroy_buffer(raw);
    }
}

pub(crate) fn import_host<'a>(
    device: &VulkanDevice,
    host: &'a [u8],
    policy: ImportPolicy,
    stream: &VulkanStream,
) -> Result<HostImport<'a>> {
    let len = host.len() as u64;
    let shared = &device.shared;
    let mut tried = Vec::new();
    tried.push(if policy.allow_coherent {
        "coherent: Vulkan devices cannot read pageable host memory directly".to_string()
    } else {
        "coherent: not allowed by the policy".to_string()
    });
    if policy.allow_registered {
        match &shared.host_import {
            Some(support) if len == 0 => {
                let _ = support;
                return Ok(HostImport::new(
                    empty_region(shared),
                    ImportPath::Registered,
                    Box::new(()),
                ));
            }
            Some(support) if support.avoid_file_mappings && lies_in_a_file_mapping(host) => tried.push(
                "registered: not attempted: the range lies in a file mapping, which NVIDIA's driver refuses to \
                 import (VK_ERROR_OUT_OF_DEVICE_MEMORY on driver 580), and after such a refusal later device \
                 allocations failed too"
                    .to_string(),
            ),
            Some(support) => match register(shared, support, host) {
                Ok((region, undo)) => {
                    tracing::info!(len, path = "registered", refused = ?tried, "host import");
                    return Ok(HostImport::new(region, ImportPath::Registered, Box::new(undo)));
                }
                Err(err) => tried.push(format!("registered: {err}")),
            },
            None => tried.push("registered: the driver does not offer VK_EXT_external_memory_host".to_string()),
        }
    } else {
        tried.push("registered: not allowed by the policy".to_string());
    }
    if policy.allow_copy {
        tracing::warn!(len, path = "copied", refused = ?tried, "host import copies to the device");
        let buffer = device.allocate(len, MemoryKind::Device, stream)?;
        stream.write(&buffer, 0, host)?;
        return Ok(HostImport::new(buffer.region(), ImportPath::Copied, Box::new(buffer)));
    }
    tried.push("copied: not allowed by the policy (it would duplicate the data on the device)".to_string());
    tracing::warn!(len, refused = ?tried, "host import refused");
    Err(Error::ImportRefused {
        len,
        reason: tried.join("; "),
    })
}

/// Whether any of `host` lies in a mapping of a file.
///
/// On an H200 with driver 580, `vkAllocateMemory` importing a pointer into a file mapping
/// (shared or private, read-only) failed with `VK_ERROR_OUT_OF_DEVICE_MEMORY` as
/// `HOST_ALLOCATION`, and `vkGetMemoryHostPointerPropertiesEXT` with
/// `VK_ERROR_INITIALIZATION_FAILED` as `HOST_MAPPED_FOREIGN_MEMORY`. After that, the next
/// 256 KiB device allocation and an import of plain heap memory failed with
/// `VK_ERROR_OUT_OF_DEVICE_MEMORY` as well, which they did not in the same process
/// without the failed import. So such ranges are kept from that driver; lavapipe imports
/// them.
fn lies_in_a_file_mapping(host: &[u8]) -> bool {
    let start = host.as_ptr() as u64;
    !gpuhal_hal::host_mapping::file_mappings(start, start + host.len() as u64).is_empty()
}

fn empty_region(shared: &DeviceShared) -> Region {
    Region {
        device: shared.id,
        address: 0,
        len: 0,
        native: 0,
        native_offset: 0,
        kind: MemoryKind::HostPinned,
    }
}

/// Imports the aligned range around `host` as device memory with a buffer bound to it.
fn register(shared: &Arc<DeviceShared>, support: &HostImportSupport, host: &[u8]) -> Result<(Region, Registered)> {
    let align = support.alignment;
    let ptr = host.as_ptr() as u64;
    let start = ptr / align * align;
    let end = (ptr + host.len() as u64).div_ceil(align) * align;
    let size = end - start;
    let mut errors = Vec::new();
    // Anonymous memory first, then file mappings (an mmap'd model).
    for handle_type in [
        vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
        vk::ExternalMemoryHandleTypeFlags::HOST_MAPPED_FOREIGN_MEMORY_EXT,
    ] {
        match import_as(shared, support, start, size, handle_type) {
            Ok(raw) => {
                let offset = ptr - start;
                let region = Region {
                    device: shared.id,
                    address: shared.reported_address(&raw) + offset,
                    len: host.len() as u64,
                    native: ash::vk::Handle::as_raw(raw.buffer),
                    native_offset: offset,
                    kind: MemoryKind::HostPinned,
                };
                shared.register(raw.buffer, raw.size);
                return Ok((
                    region,
                    Registered {
                        shared: shared.clone(),
                        raw: Some(raw),
                    },
                ));
            }
            Err(err) => errors.push(format!("as {handle_type:?}: {err}")),
        }
    }
    Err(Error::invalid("import_host", errors.join("; ")))
}

fn import_as(
    shared: &DeviceShared,
    support: &HostImportSupport,
    start: u64,
    size: u64,
    handle_type: vk::ExternalMemoryHandleTypeFlags,
) -> Result<RawBuffer> {
    let what = || format!("importing {size} bytes of host memory at {start:#x}");
    let pointer = start as *const std::ffi::c_void;
    let mut host_props = vk::MemoryHostPointerPropertiesEXT::default();
    // SAFETY: the extension is enabled; `pointer` is aligned to minImportedHostPointerAlignment and the range it starts lies in mapped host memory (it covers a live slice, widened to whole alignment units).
    let result = unsafe {
        (support.functions.fp().get_memory_host_pointer_properties_ext)(
            shared.device.handle(),
            handle_type,
            pointer,
            &mut host_props,
        )
    };
    if result != vk::Result::SUCCESS {
        return Err(vk_error(what(), "vkGetMemoryHostPointerPropertiesEXT", result));
    }
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(buffer_usage(shared.buffer_device_address))
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .push_next(&mut external);
    // SAFETY: valid create info chain; destroyed below on failure or by the undo.
    let buffer = unsafe { shared.device.create_buffer(&info, None) }.vk("vkCreateBuffer", what)?;
    // SAFETY: `buffer` is live.
    let requirements = unsafe { shared.device.get_buffer_memory_requirements(buffer) };
    let bits = requirements.memory_type_bits & host_props.memory_type_bits;
    let destroy_buffer = || {
        // SAFETY: the buffer was created above and never used.
        unsafe { shared.device.destroy_buffer(buffer, None) }
    };
    let Some(type_index) = (0..32).find(|i| bits & (1 << i) != 0) else {
        destroy_buffer();
        return Err(Error::invalid(
            "import_host",
            "no memory type can both back a buffer and import this host pointer",
        ));
    };
    let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
        .handle_type(handle_type)
        .host_pointer(pointer.cast_mut());
    let mut flags = vk::MemoryAllocateFlagsInfo::default().flags(vk::MemoryAllocateFlags::DEVICE_ADDRESS);
    let mut alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(size)
        .memory_type_index(type_index)
        .push_next(&mut import);
    if shared.buffer_device_address {
        alloc = alloc.push_next(&mut flags);
    }
    // SAFETY: the import chain names an aligned host range of `size` bytes that stays mapped while the import lives (the `HostImport` borrows it).
    let memory = match unsafe { shared.device.allocate_memory(&alloc, None) } {
        Ok(memory) => memory,
        Err(result) => {
            destroy_buffer();
            return Err(vk_error(what(), "vkAllocateMemory", result));
        }
    };
    // SAFETY: fresh buffer and memory of a compatible type and sufficient size.
    if let Err(result) = unsafe { shared.device.bind_buffer_memory(buffer, memory, 0) } {
        destroy_buffer();
        // SAFETY: the memory was allocated above and is unused.
        unsafe { shared.device.free_memory(memory, None) };
        return Err(vk_error(what(), "vkBindBufferMemory", result));
    }
    Ok(RawBuffer {
        buffer,
        memory,
        size,
        mapped: None,
        device_address: shared.device_address(buffer),
        heap: None,
    })
}
