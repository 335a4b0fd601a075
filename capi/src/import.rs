//! Host import: existing host memory (an mmap'd model file) made usable by the device by
//! the cheapest path its policy allows.

use std::ffi::c_void;

use gpuhal::{DynDevice, HostImport, ImportPath, ImportPolicy};

use crate::device::DEVICES;
use crate::ffi::{host_slice, produce, read_in};
use crate::handles::{GpuhalDevice, GpuhalImport, GpuhalStream, Table};
use crate::status::{guard, GpuhalStatus, InFunction};
use crate::stream::stream;

/// The device reads the pageable host memory directly.
pub const GPUHAL_IMPORT_COHERENT: u32 = 0;
/// The memory was page-locked and mapped for the device.
pub const GPUHAL_IMPORT_REGISTERED: u32 = 1;
/// A device copy was made.
pub const GPUHAL_IMPORT_COPIED: u32 = 2;

/// Which paths an import may take, as `gpuhal::ImportPolicy`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalImportPolicy {
    /// Accept direct access to pageable memory where the device supports it.
    pub allow_coherent: bool,
    /// With the coherent path, prefetch the range towards the device.
    pub prefetch_coherent: bool,
    /// Accept page-locking and mapping the memory.
    pub allow_registered: bool,
    /// Accept a full device copy (off in the default policy).
    pub allow_copy: bool,
}

/// What an import produced.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalImportResult {
    /// The import, to release with `gpuhal_import_release`.
    pub import: GpuhalImport,
    /// `GPUHAL_IMPORT_*`: the path taken.
    pub path: u32,
    /// The device address of the imported bytes.
    pub device_address: u64,
}

/// Every live import. The host memory is the caller's, and stays borrowed until release.
pub static IMPORTS: Table<HostImport<'static>> = Table::new("import");

fn path_code(path: ImportPath) -> u32 {
    match path {
        ImportPath::Coherent => GPUHAL_IMPORT_COHERENT,
        ImportPath::Registered => GPUHAL_IMPORT_REGISTERED,
        ImportPath::Copied => GPUHAL_IMPORT_COPIED,
    }
}

/// Imports `len` bytes of host memory at `host` for device use by the cheapest path
/// `policy` allows (NULL: zero-copy paths only, never a copy). A refused copy is
/// `GPUHAL_STATUS_IMPORT_REFUSED`, with the reason.
///
/// # Safety
///
/// `host` is valid for reads of `len` bytes, and stays mapped and unchanged in size until
/// `gpuhal_import_release`; `policy` is NULL or valid for a read; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_import_host(
    device: GpuhalDevice,
    host: *const c_void,
    len: u64,
    policy: *const GpuhalImportPolicy,
    stream: GpuhalStream,
    out: *mut GpuhalImportResult,
) -> GpuhalStatus {
    const F: &str = "gpuhal_import_host";
    guard(F, || {
        let policy = if policy.is_null() {
            ImportPolicy::ZERO_COPY
        } else {
            // SAFETY: not null, and the caller passes it valid for a read.
            let c = unsafe { read_in(F, "policy", policy) }?;
            ImportPolicy {
                allow_coherent: c.allow_coherent,
                prefetch_coherent: c.prefetch_coherent,
                allow_registered: c.allow_registered,
                allow_copy: c.allow_copy,
            }
        };
        // SAFETY: the caller keeps `len` bytes at `host` readable until the import is
        // released, which is what the 'static borrow stands for here.
        let bytes: &'static [u8] = unsafe { host_slice(F, "host", host.cast(), len) }?;
        let make = || {
            let entry = DEVICES.get(F, device.id)?;
            let on = self::stream(F, stream)?;
            let import = entry.device.import_host(bytes, policy, &on.stream).in_function(F)?;
            let (path, device_address) = (path_code(import.path()), import.device_address());
            Ok(GpuhalImportResult {
                import: GpuhalImport {
                    id: IMPORTS.insert(import),
                },
                path,
                device_address,
            })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Undoes an import (unregisters, or frees the copy); the host memory is the caller's again.
#[no_mangle]
pub extern "C" fn gpuhal_import_release(import: GpuhalImport) -> GpuhalStatus {
    guard("gpuhal_import_release", || {
        IMPORTS.remove("gpuhal_import_release", import.id).map(drop)
    })
}
