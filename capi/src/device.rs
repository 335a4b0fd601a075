//! Devices: open by backend name, close, what they are, their statistics and limits.

use std::ffi::c_char;

use gpuhal::{Advice, AnyDevice, DynDevice, EventStats, ImportStats, ManagedPolicy, MemoryStats};

use crate::allocations::Allocations;
use crate::ffi::{produce, read_in, read_str, write_out};
use crate::handles::{GpuhalDevice, Table};
use crate::status::{guard, Failure, GpuhalStatus, InFunction};

/// An open device and what it handed out to C.
pub struct DeviceEntry {
    /// The device.
    pub device: AnyDevice,
    /// Buffers handed out by pointer and not yet freed.
    pub allocations: Allocations,
}

/// Every open device.
pub static DEVICES: Table<DeviceEntry> = Table::new("device");

impl DeviceEntry {
    /// Opens `backend`'s device `ordinal` and registers it; returns its handle id.
    pub fn open(function: &str, backend: &str, ordinal: u32) -> Result<u64, Failure> {
        Self::open_with(function, backend, ordinal, gpuhal::PoolConfig::default())
    }

    /// [`open`](Self::open) with `config` for the device's caching allocator.
    pub fn open_with(function: &str, backend: &str, ordinal: u32, config: gpuhal::PoolConfig) -> Result<u64, Failure> {
        let device = AnyDevice::open_with(backend, ordinal, config).in_function(function)?;
        Ok(Self::register(device))
    }

    /// Registers an opened device; returns its handle id.
    pub fn register(device: AnyDevice) -> u64 {
        DEVICES.insert(DeviceEntry {
            device,
            allocations: Allocations::default(),
        })
    }
}

/// `GpuhalOpenOptions::segments`: device memory from the backend's stream-ordered pool
/// (the default).
pub const GPUHAL_SEGMENTS_NATIVE: u32 = 0;
/// `GpuhalOpenOptions::segments`: growable virtual-memory segments gpuhal maps itself
/// (needed by `gpuhal_sleep`).
pub const GPUHAL_SEGMENTS_GROWABLE: u32 = 1;

/// How `gpuhal_device_open_with` opens a device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuhalOpenOptions {
    /// `GPUHAL_SEGMENTS_*`: where device memory comes from.
    pub segments: u32,
    /// Serve device memory from an exportable pool, so `gpuhal_export` can share it with
    /// another process or device.
    pub sharing: bool,
}

/// What a device is.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalDeviceInfo {
    /// The backend's name, NUL-terminated ("cuda", "vulkan", "mock").
    pub backend: [c_char; 16],
    /// The device's name (GPU model or mock profile), NUL-terminated, cut to fit.
    pub name: [c_char; 128],
    /// The ordinal it was opened with.
    pub ordinal: u32,
    /// `GPUHAL_CAP_*` bits: what the device can do, as read from it.
    pub capabilities: u32,
    /// Total device memory in bytes.
    pub total_memory: u64,
}

/// Allocator statistics, as `gpuhal::MemoryStats` (same names and meanings).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuhalMemoryStats {
    /// Bytes handed out and not yet returned (as requested).
    pub live_bytes: u64,
    /// Buffers handed out and not yet returned.
    pub live_count: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Bytes held from the native API, live or idle.
    pub reserved_bytes: u64,
    /// Native allocations currently held.
    pub reserved_count: u64,
    /// Highest `reserved_bytes` seen.
    pub peak_reserved_bytes: u64,
    /// Bytes held idle in the cache.
    pub cached_bytes: u64,
    /// Blocks held idle in the cache.
    pub cached_count: u64,
    /// Blocks freed while another stream may still use them.
    pub pending_count: u64,
    /// Native allocation calls made.
    pub native_allocations: u64,
    /// Native free calls made.
    pub native_frees: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that needed a native allocation.
    pub cache_misses: u64,
    /// Native allocations retried after releasing the cache.
    pub oom_retries: u64,
    /// Requests refused with out-of-memory.
    pub oom_errors: u64,
    /// Native frees that failed.
    pub failed_frees: u64,
    /// Bytes of device memory asleep (`gpuhal_sleep`): released, addresses kept.
    pub asleep_bytes: u64,
}

impl From<MemoryStats> for GpuhalMemoryStats {
    fn from(s: MemoryStats) -> Self {
        GpuhalMemoryStats {
            live_bytes: s.live_bytes,
            live_count: s.live_count,
            peak_live_bytes: s.peak_live_bytes,
            reserved_bytes: s.reserved_bytes,
            reserved_count: s.reserved_count,
            peak_reserved_bytes: s.peak_reserved_bytes,
            cached_bytes: s.cached_bytes,
            cached_count: s.cached_count,
            pending_count: s.pending_count,
            native_allocations: s.native_allocations,
            native_frees: s.native_frees,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
            oom_retries: s.oom_retries,
            oom_errors: s.oom_errors,
            failed_frees: s.failed_frees,
            asleep_bytes: s.asleep_bytes,
        }
    }
}

/// Event pool counters, as `gpuhal::EventStats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuhalEventStats {
    /// Native events that exist now.
    pub native_live: u64,
    /// Native events created since the device opened.
    pub native_created: u64,
    /// Events handed out by the pool.
    pub acquired: u64,
    /// Events idle in the pool.
    pub idle: u64,
}

impl From<EventStats> for GpuhalEventStats {
    fn from(s: EventStats) -> Self {
        GpuhalEventStats {
            native_live: s.native_live,
            native_created: s.native_created,
            acquired: s.acquired,
            idle: s.idle,
        }
    }
}

/// Host import counters, as `gpuhal::ImportStats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuhalImportStats {
    /// Imports served by direct (coherent) access.
    pub coherent: u64,
    /// Imports served by page-locking and mapping.
    pub registered: u64,
    /// Imports served by a device copy.
    pub copied: u64,
    /// Bytes duplicated on the device by copies.
    pub copied_bytes: u64,
    /// Imports refused by their policy.
    pub refused: u64,
}

impl From<ImportStats> for GpuhalImportStats {
    fn from(s: ImportStats) -> Self {
        GpuhalImportStats {
            coherent: s.coherent,
            registered: s.registered,
            copied: s.copied,
            copied_bytes: s.copied_bytes,
            refused: s.refused,
        }
    }
}

/// The policy applied to new managed allocations, as `gpuhal::ManagedPolicy`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuhalManagedPolicy {
    /// `GPUHAL_ADVICE_*` bits applied to every new managed allocation.
    pub advice: u32,
    /// Allocations smaller than this are prefetched to the device when made; 0: never.
    pub prefetch_below: u64,
    /// Allow a managed allocation larger than the device's free memory.
    pub allow_oversubscription: bool,
}

/// The device's default managed policy (prefer the device, host access without migration,
/// prefetch below 2 GiB): the vLLM GH200 case.
pub fn managed_policy_to_c(policy: ManagedPolicy) -> GpuhalManagedPolicy {
    GpuhalManagedPolicy {
        advice: policy.advice.bits(),
        prefetch_below: policy.prefetch_below,
        allow_oversubscription: policy.allow_oversubscription,
    }
}

fn managed_policy_from_c(function: &str, policy: GpuhalManagedPolicy) -> Result<ManagedPolicy, Failure> {
    let advice = Advice::from_bits(policy.advice).ok_or_else(|| {
        Failure::invalid(
            function,
            format!(
                "advice bits {:#x} include bits that name no GPUHAL_ADVICE_*",
                policy.advice
            ),
        )
    })?;
    Ok(ManagedPolicy {
        advice,
        prefetch_below: policy.prefetch_below,
        allow_oversubscription: policy.allow_oversubscription,
    })
}

fn copy_c_string<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    // Cut at a character boundary so the copy stays valid UTF-8, leaving room for the NUL.
    let mut end = text.len().min(N - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (slot, byte) in out.iter_mut().zip(&text.as_bytes()[..end]) {
        *slot = *byte as c_char;
    }
    out
}

pub(crate) fn device(function: &str, handle: GpuhalDevice) -> Result<std::sync::Arc<DeviceEntry>, Failure> {
    DEVICES.get(function, handle.id)
}

/// Opens device `ordinal` of `backend`: `"cuda"`, `"vulkan"`, `"mock"`, or a mock profile
/// (`"mock:discrete"`, `"mock:coherent"`, `"mock:minimal"`).
///
/// # Safety
///
/// `backend` is a NUL-terminated string; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_device_open(
    backend: *const c_char,
    ordinal: u32,
    out: *mut GpuhalDevice,
) -> GpuhalStatus {
    const F: &str = "gpuhal_device_open";
    guard(F, || {
        // SAFETY: the caller passes a NUL-terminated string (null is refused).
        let backend = unsafe { read_str(F, "backend", backend) }?;
        let make = || {
            Ok(GpuhalDevice {
                id: DeviceEntry::open(F, backend, ordinal)?,
            })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// `gpuhal_device_open` with `options` (NULL: the defaults, as `gpuhal_device_open`):
/// growable segments (`GPUHAL_CAP_GROWABLE_SEGMENTS`) and sharing (`GPUHAL_CAP_IPC`); a
/// device without the capability asked for is `GPUHAL_STATUS_UNSUPPORTED`.
///
/// # Safety
///
/// `backend` is a NUL-terminated string; `options` is NULL or valid for a read; `out` is
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_device_open_with(
    backend: *const c_char,
    ordinal: u32,
    options: *const GpuhalOpenOptions,
    out: *mut GpuhalDevice,
) -> GpuhalStatus {
    const F: &str = "gpuhal_device_open_with";
    guard(F, || {
        // SAFETY: the caller passes a NUL-terminated string (null is refused).
        let backend = unsafe { read_str(F, "backend", backend) }?;
        let options = if options.is_null() {
            GpuhalOpenOptions::default()
        } else {
            // SAFETY: not null, and the caller passes it valid for a read.
            unsafe { read_in(F, "options", options) }?
        };
        let segments = match options.segments {
            GPUHAL_SEGMENTS_NATIVE => gpuhal::SegmentStrategy::Native,
            GPUHAL_SEGMENTS_GROWABLE => gpuhal::SegmentStrategy::Growable,
            other => {
                return Err(Failure::invalid(
                    F,
                    format!("segments {other} is neither GPUHAL_SEGMENTS_NATIVE (0) nor _GROWABLE (1)"),
                ))
            }
        };
        let config = gpuhal::PoolConfig {
            segments,
            ..gpuhal::PoolConfig::default()
        };
        let make = || {
            let device = if options.sharing {
                AnyDevice::open_shared(backend, ordinal, config)
            } else {
                AnyDevice::open_with(backend, ordinal, config)
            }
            .in_function(F)?;
            Ok(GpuhalDevice {
                id: DeviceEntry::register(device),
            })
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused before anything is made).
        unsafe { produce(F, out, make) }
    })
}

/// Closes a device. Its outstanding allocations are freed (stream-ordered); streams and
/// other objects made from it keep working until they are destroyed.
#[no_mangle]
pub extern "C" fn gpuhal_device_close(device: GpuhalDevice) -> GpuhalStatus {
    guard("gpuhal_device_close", || {
        DEVICES.remove("gpuhal_device_close", device.id).map(drop)
    })
}

/// What the device is.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_device_info(device: GpuhalDevice, out: *mut GpuhalDeviceInfo) -> GpuhalStatus {
    const F: &str = "gpuhal_device_info";
    guard(F, || {
        let entry = self::device(F, device)?;
        let info = entry.device.info();
        let value = GpuhalDeviceInfo {
            backend: copy_c_string(info.backend),
            name: copy_c_string(&info.name),
            ordinal: info.ordinal,
            capabilities: entry.device.capabilities().bits(),
            total_memory: info.total_memory,
        };
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, value) }
    })
}

/// The device's allocator statistics.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_memory_stats(device: GpuhalDevice, out: *mut GpuhalMemoryStats) -> GpuhalStatus {
    const F: &str = "gpuhal_memory_stats";
    guard(F, || {
        let stats = self::device(F, device)?.device.memory_stats().into();
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, stats) }
    })
}

/// The device's event pool counters.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_event_stats(device: GpuhalDevice, out: *mut GpuhalEventStats) -> GpuhalStatus {
    const F: &str = "gpuhal_event_stats";
    guard(F, || {
        let stats = self::device(F, device)?.device.event_stats().into();
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, stats) }
    })
}

/// The device's host import counters.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_import_stats(device: GpuhalDevice, out: *mut GpuhalImportStats) -> GpuhalStatus {
    const F: &str = "gpuhal_import_stats";
    guard(F, || {
        let stats = self::device(F, device)?.device.import_stats().into();
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, stats) }
    })
}

/// Refuses allocations that would take reserved memory past `bytes` (0: no limit).
#[no_mangle]
pub extern "C" fn gpuhal_set_memory_limit(device: GpuhalDevice, bytes: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_set_memory_limit";
    guard(F, || {
        self::device(F, device)?
            .device
            .set_memory_limit((bytes != 0).then_some(bytes));
        Ok(())
    })
}

/// Releases idle cached blocks beyond `bytes` (`UINT64_MAX`: no limit).
#[no_mangle]
pub extern "C" fn gpuhal_set_cache_limit(device: GpuhalDevice, bytes: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_set_cache_limit";
    guard(F, || {
        self::device(F, device)?
            .device
            .set_cache_limit((bytes != u64::MAX).then_some(bytes));
        Ok(())
    })
}

/// Sets the allocator's reserve slack (a fraction of peak live memory; infinity keeps
/// every idle block). Negative or NaN is refused.
#[no_mangle]
pub extern "C" fn gpuhal_set_reserve_slack(device: GpuhalDevice, slack: f64) -> GpuhalStatus {
    const F: &str = "gpuhal_set_reserve_slack";
    guard(F, || {
        if slack.is_nan() || slack < 0.0 {
            return Err(Failure::invalid(F, format!("slack {slack} is not a fraction >= 0")));
        }
        self::device(F, device)?.device.set_reserve_slack(slack);
        Ok(())
    })
}

/// Sets the allocator's reserve floor: bytes of idle cache kept above peak live memory
/// whatever the slack says.
#[no_mangle]
pub extern "C" fn gpuhal_set_reserve_floor(device: GpuhalDevice, bytes: u64) -> GpuhalStatus {
    const F: &str = "gpuhal_set_reserve_floor";
    guard(F, || {
        self::device(F, device)?.device.set_reserve_floor(bytes);
        Ok(())
    })
}

/// Releases idle cached memory; `released` (may be null) receives the bytes released.
///
/// # Safety
///
/// `released` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_trim(device: GpuhalDevice, released: *mut u64) -> GpuhalStatus {
    const F: &str = "gpuhal_trim";
    guard(F, || {
        let bytes = self::device(F, device)?.device.trim();
        if released.is_null() {
            return Ok(());
        }
        // SAFETY: not null, and the caller passes it valid for a write.
        unsafe { write_out(F, "released", released, bytes) }
    })
}

/// Free and total device memory, as the device reports them.
///
/// # Safety
///
/// `free` and `total` are valid for writes.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_device_memory_info(
    device: GpuhalDevice,
    free: *mut u64,
    total: *mut u64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_device_memory_info";
    guard(F, || {
        let (free_bytes, total_bytes) = self::device(F, device)?.device.memory_info().in_function(F)?;
        // SAFETY: the caller passes both valid for writes (null is refused).
        unsafe { write_out(F, "free", free, free_bytes) }?;
        // SAFETY: as above.
        unsafe { write_out(F, "total", total, total_bytes) }
    })
}

/// Waits for all work on the device.
#[no_mangle]
pub extern "C" fn gpuhal_device_synchronize(device: GpuhalDevice) -> GpuhalStatus {
    const F: &str = "gpuhal_device_synchronize";
    guard(F, || self::device(F, device)?.device.synchronize().in_function(F))
}

/// The policy applied to new managed allocations.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_managed_policy(device: GpuhalDevice, out: *mut GpuhalManagedPolicy) -> GpuhalStatus {
    const F: &str = "gpuhal_managed_policy";
    guard(F, || {
        let policy = managed_policy_to_c(self::device(F, device)?.device.managed_policy());
        // SAFETY: the caller passes `out` valid for a write (null is refused).
        unsafe { write_out(F, "out", out, policy) }
    })
}

/// Replaces the managed policy for allocations made from now on.
///
/// # Safety
///
/// `policy` is valid for a read.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_set_managed_policy(
    device: GpuhalDevice,
    policy: *const GpuhalManagedPolicy,
) -> GpuhalStatus {
    const F: &str = "gpuhal_set_managed_policy";
    guard(F, || {
        // SAFETY: the caller passes `policy` valid for a read (null is refused).
        let policy = managed_policy_from_c(F, unsafe { read_in(F, "policy", policy) }?)?;
        self::device(F, device)?.device.set_managed_policy(policy);
        Ok(())
    })
}
