//! Host import: making existing host memory (an mmap'd model file) usable by the device
//! by the cheapest path the platform and the policy allow, and saying which was taken.
//!
//! 1. `Coherent`: the device reads pageable host memory directly (HMM, or a coherent
//!    platform such as Grace Hopper / Grace Blackwell); the device address is the host
//!    address. Optionally prefetched towards the device.
//! 2. `Registered`: `cuMemHostRegister` page-locks and maps the range (the exact range
//!    first, the enclosing page-aligned range as the fallback; read-only first where the
//!    device supports it, writable as the fallback), undone when the import drops. Not
//!    attempted for a private read-only mapping of a file on disk, which hangs the driver
//!    (see [`register_hazard`]).
//! 3. `Copied`: a device copy, only when the policy allows it. On platforms where
//!    registration returns `CUDA_ERROR_NOT_SUPPORTED` a silent copy duplicated whole
//!    models; here a refused copy is an [`Error::ImportRefused`] that lists every path
//!    tried and what each returned.

use std::sync::Arc;

use gpuhal_hal::host_mapping::file_mappings;
use gpuhal_hal::{
    check_device, Capabilities, Error, HostImport, ImportPath, ImportPolicy, ImportStats, Location, MemoryKind, Region,
    Result, Stream as _,
};
use parking_lot::Mutex;

use crate::context::Context;
use crate::device::CudaDevice;
use crate::raw;
use crate::stream::CudaStream;

/// Undoes a registration when the import drops.
struct Registration {
    ctx: Arc<Context>,
    base: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            let _ = raw::mem_host_unregister(self.base);
        }
    }
}

/// Why registering `start..end` would hang the driver, or `None` when nothing says so.
///
/// On an H100 and an H200 with driver 580 (CUDA 13.0, Linux 6.x), `cuMemHostRegister` of
/// a private (`MAP_PRIVATE`), read-only mapping of a file on a disk filesystem (ext4) did
/// not return: still running when killed after 8 s (H200) and 30 s (H100), with and
/// without `CU_MEMHOSTREGISTER_READ_ONLY`, with the pages faulted in or not. The same file
/// mapped `MAP_SHARED` registered in under a millisecond, as did a private read-only
/// mapping of a tmpfs file. A hung call cannot be recovered, so such ranges are not
/// offered to the driver at all.
fn register_hazard(start: u64, end: u64) -> Option<String> {
    let mapping = file_mappings(start, end)
        .into_iter()
        .find(|mapping| mapping.private && !mapping.writable && !mapping.on_tmpfs)?;
    Some(format!(
        "the range lies in a private read-only mapping of {} (MAP_PRIVATE, PROT_READ, on a disk \
         filesystem), which cuMemHostRegister did not return from on driver 580; map the file \
         MAP_SHARED to import it by registration",
        mapping.path
    ))
}

/// Imports `host` for `device`; see the module documentation for the order of paths.
pub(crate) fn import_host<'a>(
    device: &CudaDevice,
    host: &'a [u8],
    policy: ImportPolicy,
    stream: &CudaStream,
    stats: &Mutex<ImportStats>,
) -> Result<HostImport<'a>> {
    check_device("import_host", "stream", device.id_inner(), stream.device_id_inner())?;
    let len = host.len() as u64;
    let start = host.as_ptr() as u64;
    let caps = device.capabilities_inner();
    let region = |address: u64, kind: MemoryKind| Region {
        device: device.id_inner(),
        address,
        len,
        native: 0,
        native_offset: 0,
        kind,
    };
    if len == 0 {
        if !(policy.allow_coherent || policy.allow_registered || policy.allow_copy) {
            stats.lock().refused += 1;
            return Err(Error::ImportRefused {
                len,
                reason: "the policy allows no path".into(),
            });
        }
        return Ok(HostImport::new(
            region(0, MemoryKind::HostPinned),
            ImportPath::Coherent,
            Box::new(()),
        ));
    }
    device.bind()?;
    let mut tried: Vec<String> = Vec::new();

    if !policy.allow_coherent {
        tried.push("coherent: not allowed by the policy".into());
    } else if !caps.contains(Capabilities::PAGEABLE_ACCESS) {
        tried.push("coherent: the device cannot read pageable host memory (PAGEABLE_MEMORY_ACCESS is 0)".into());
    } else {
        if policy.prefetch_coherent {
            // A prefetch only moves pages early; the import is valid without it.
            let _ = device.memory().prefetch(start, len, Location::Device, stream.handle());
        }
        stats.lock().coherent += 1;
        tracing::info!(len, path = "coherent", "host import");
        return Ok(HostImport::new(
            region(start, MemoryKind::Managed),
            ImportPath::Coherent,
            Box::new(()),
        ));
    }

    if !policy.allow_registered {
        tried.push("registered: not allowed by the policy".into());
    } else if !caps.contains(Capabilities::HOST_REGISTER) {
        tried.push("registered: the device reports no host register support (HOST_REGISTER_SUPPORTED is 0)".into());
    } else if let Some(why) = register_hazard(start, start + len) {
        tried.push(format!("registered: not attempted: {why}"));
    } else {
        let page = raw::page_size();
        let base = start & !(page - 1);
        let end = (start + len).div_ceil(page) * page;
        let plain =
            cudarc::driver::sys::CU_MEMHOSTREGISTER_DEVICEMAP | cudarc::driver::sys::CU_MEMHOSTREGISTER_PORTABLE;
        let read_only = plain | cudarc::driver::sys::CU_MEMHOSTREGISTER_READ_ONLY;
        // The exact range first: registering the enclosing pages makes the driver treat
        // neighbouring heap memory in those pages as registered, and copies into a
        // neighbour that straddles the range's end then fail. The page-aligned range is
        // the fallback for drivers that insist on alignment. Read-only first where the
        // device supports it (the import only borrows the bytes, and a read-only mmap
        // cannot be pinned writable), writable as the fallback.
        let mut flag_order = vec![(plain, "")];
        if device.read_only_register() {
            flag_order.insert(0, (read_only, " read-only"));
        }
        let mut ranges = vec![(start, start + len, "")];
        if (base, end) != (start, start + len) {
            ranges.push((base, end, " (page-aligned)"));
        }
        let attempts: Vec<(u64, u64, &str, u32, &str)> = ranges
            .iter()
            .flat_map(|&(from, to, range)| {
                flag_order
                    .iter()
                    .map(move |&(flags, how)| (from, to, range, flags, how))
            })
            .collect();
        for (base, end, range, flags, how) in attempts {
            match raw::mem_host_register(base, end - base, flags) {
                Err(native) => {
                    tried.push(format!(
                        "registered: {}{how} of {} bytes at {base:#x}{range} returned {} ({})",
                        native.call,
                        end - base,
                        native.name,
                        native.code
                    ));
                    if native.name == "CUDA_ERROR_NOT_SUPPORTED" {
                        break;
                    }
                }
                Ok(()) => {
                    let undo = Registration {
                        ctx: device.ctx().clone(),
                        base,
                    };
                    match raw::mem_host_get_device_pointer(base) {
                        Ok(mapped) => {
                            stats.lock().registered += 1;
                            tracing::info!(len, path = "registered", refused = ?tried, "host import");
                            return Ok(HostImport::new(
                                region(mapped + (start - base), MemoryKind::HostPinned),
                                ImportPath::Registered,
                                Box::new(undo),
                            ));
                        }
                        Err(native) => {
                            tried.push(format!(
                                "registered: registration succeeded but {} returned {} ({})",
                                native.call, native.name, native.code
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }

    if policy.allow_copy {
        tracing::warn!(len, path = "copied", refused = ?tried, "host import copies to the device");
        let buffer = gpuhal_hal::Device::allocate(device, len, MemoryKind::Device, stream)?;
        stream.write(&buffer, 0, host)?;
        let address = buffer.address();
        {
            let mut stats = stats.lock();
            stats.copied += 1;
            stats.copied_bytes += len;
        }
        return Ok(HostImport::new(
            Region {
                native: gpuhal_hal::AsRegion::region(&buffer).native,
                ..region(address, MemoryKind::Device)
            },
            ImportPath::Copied,
            Box::new(buffer),
        ));
    }
    tried.push(format!(
        "copy: not allowed by the policy (ImportPolicy::allow_copy is false; it would duplicate all {len} bytes on the device)"
    ));
    stats.lock().refused += 1;
    tracing::warn!(len, refused = ?tried, "host import refused");
    Err(Error::ImportRefused {
        len,
        reason: format!("paths tried on device {}: {}", device.ordinal(), tried.join("; ")),
    })
}
