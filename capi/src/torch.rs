//! PyTorch's pluggable allocator (`torch.cuda.memory.CUDAPluggableAllocator`): the
//! `malloc(size, device, stream)` and `free(ptr, size, device, stream)` it calls, one
//! gpuhal device per torch device index, torch's streams adopted on first use.
//!
//! Configured from the environment when a device is first used:
//! - `GPUHAL_BACKEND`: the backend to open (default `cuda`; `mock:coherent` … for tests).
//! - `GPUHAL_MEMORY_KIND`: `device` (default, stream-ordered) or `managed` (with the
//!   device's default managed policy: the vLLM GH200 case).
//! - `GPUHAL_MEMORY_LIMIT`: bytes the allocator may reserve, with an optional suffix
//!   (`K`, `M`, `G`, `KiB`, `MiB`, `GiB`: powers of 1024).
//! - `GPUHAL_RESERVE_SLACK`: the allocator's reserve slack, a fraction (`inf` keeps every
//!   idle block).
//! - `GPUHAL_RESERVE_FLOOR`: bytes of idle cache kept above peak live (same suffixes as the
//!   limit; the allocator's default when unset).
//! - `GPUHAL_SEGMENTS`: `native` (default: the backend's stream-ordered pool) or
//!   `growable` (virtual-memory segments gpuhal maps itself, so device memory follows what
//!   gpuhal reserves; see `gpuhal::SegmentStrategy`).
//!
//! torch's free path cannot report an error: a failed free is counted (see
//! [`gpuhal_torch_error_counts`]) and logged once to stderr, never aborts.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use gpuhal::{AnyGraphPool, DynBuffer, DynDevice, DynStream, MemoryKind};
use parking_lot::{Mutex, RwLock};

use crate::device::{DeviceEntry, GpuhalMemoryStats, DEVICES};
use crate::ffi::write_out;
use crate::handles::GpuhalDevice;
use crate::memory::{allocate, take, unknown_pointer};
use crate::sleep::{sleep, write_optional, GpuhalSleepReport, GpuhalWakeReport};
use crate::status::{guard, Failure, GpuhalStatus, InFunction};
use crate::stream::StreamEntry;

/// Torch device indices gpuhal serves (as many as a host has GPUs, with room to spare).
const MAX_DEVICES: usize = 64;

/// What the environment asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchConfig {
    /// Backend name, as `gpuhal_device_open` takes it.
    pub backend: String,
    /// The memory kind torch's tensors get.
    pub kind: MemoryKind,
    /// The allocator's memory limit.
    pub memory_limit: Option<u64>,
    /// The allocator's reserve slack, when set.
    pub reserve_slack: Option<f64>,
    /// The allocator's reserve floor, when set.
    pub reserve_floor: Option<u64>,
    /// Where device memory comes from.
    pub segments: gpuhal::SegmentStrategy,
}

impl TorchConfig {
    /// Reads the `GPUHAL_*` variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<TorchConfig, String> {
        let kind = match var("GPUHAL_MEMORY_KIND").as_deref().map(str::trim) {
            None | Some("") | Some("device") => MemoryKind::Device,
            Some("managed") => MemoryKind::Managed,
            Some(other) => return Err(format!("GPUHAL_MEMORY_KIND={other:?}: expected `device` or `managed`")),
        };
        let memory_limit = match var("GPUHAL_MEMORY_LIMIT") {
            Some(text) if !text.trim().is_empty() => {
                Some(parse_bytes(&text).map_err(|why| format!("GPUHAL_MEMORY_LIMIT={text:?}: {why}"))?)
            }
            _ => None,
        };
        let reserve_floor = match var("GPUHAL_RESERVE_FLOOR") {
            Some(text) if !text.trim().is_empty() => {
                Some(parse_bytes(&text).map_err(|why| format!("GPUHAL_RESERVE_FLOOR={text:?}: {why}"))?)
            }
            _ => None,
        };
        let segments = match var("GPUHAL_SEGMENTS") {
            Some(text) if !text.trim().is_empty() => gpuhal::SegmentStrategy::parse(&text)
                .ok_or_else(|| format!("GPUHAL_SEGMENTS={text:?}: expected `native` or `growable`"))?,
            _ => gpuhal::SegmentStrategy::Native,
        };
        let reserve_slack = match var("GPUHAL_RESERVE_SLACK") {
            Some(text) if !text.trim().is_empty() => {
                let slack: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("GPUHAL_RESERVE_SLACK={text:?}: expected a fraction such as 0.05, or inf"))?;
                if slack.is_nan() || slack < 0.0 {
                    return Err(format!("GPUHAL_RESERVE_SLACK={text:?}: must be >= 0"));
                }
                Some(slack)
            }
            _ => None,
        };
        Ok(TorchConfig {
            backend: var("GPUHAL_BACKEND")
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| "cuda".into()),
            kind,
            memory_limit,
            reserve_slack,
            reserve_floor,
            segments,
        })
    }
}

/// Bytes from `"8GiB"`, `"512M"`, `"1048576"` (suffixes are powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| "expected a number of bytes".to_string())?;
    let shift = match suffix.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "unknown suffix {other:?} (use K, M, G, T or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| "does not fit in 64 bits".to_string())
}

/// One torch device index, served by one gpuhal device.
struct TorchDevice {
    device_id: u64,
    entry: Arc<DeviceEntry>,
    kind: MemoryKind,
    /// torch's streams by their raw handle, adopted (or, on a backend with no native
    /// streams, created) on first use.
    streams: RwLock<HashMap<usize, Arc<StreamEntry>>>,
    /// Graph pools by torch's `MempoolId_t` (two integers): a capture's allocations go to
    /// its pool, and captures sharing an id share the pool.
    pools: Mutex<HashMap<(u64, u64), AnyGraphPool>>,
    malloc_errors: AtomicU64,
    free_errors: AtomicU64,
    logged_free_error: AtomicBool,
}

static CONFIG: OnceLock<Result<TorchConfig, String>> = OnceLock::new();
static TORCH_DEVICES: [OnceLock<Result<TorchDevice, String>>; MAX_DEVICES] = [const { OnceLock::new() }; MAX_DEVICES];
/// Frees whose device index gpuhal never served (or out of range).
static STRAY_FREE_ERRORS: AtomicU64 = AtomicU64::new(0);

fn config() -> Result<&'static TorchConfig, Failure> {
    CONFIG
        .get_or_init(|| TorchConfig::from_vars(|name| std::env::var(name).ok()))
        .as_ref()
        .map_err(|why| Failure::invalid("gpuhal torch allocator", why))
}

fn index(function: &str, device: c_int) -> Result<usize, Failure> {
    usize::try_from(device)
        .ok()
        .filter(|&index| index < MAX_DEVICES)
        .ok_or_else(|| Failure::invalid(function, format!("device index {device} is outside 0..{MAX_DEVICES}")))
}

/// The gpuhal device serving torch device `device`, opened on first use.
fn torch_device(function: &str, device: c_int) -> Result<&'static TorchDevice, Failure> {
    let index = index(function, device)?;
    let config = config()?;
    TORCH_DEVICES[index]
        .get_or_init(|| open(config, index).map_err(|failure| failure.message))
        .as_ref()
        .map_err(|why| {
            Failure::new(
                GpuhalStatus::Native,
                format!("{function}: torch device {device}: {why}"),
            )
        })
}

fn open(config: &TorchConfig, index: usize) -> Result<TorchDevice, Failure> {
    const F: &str = "gpuhal torch allocator";
    let ordinal = u32::try_from(index).map_err(|_| Failure::invalid(F, "device index"))?;
    let pool = gpuhal::PoolConfig {
        segments: config.segments,
        ..gpuhal::PoolConfig::default()
    };
    let device_id = DeviceEntry::open_with(F, &config.backend, ordinal, pool)?;
    let entry = DEVICES.get(F, device_id)?;
    entry.device.set_memory_limit(config.memory_limit);
    if let Some(slack) = config.reserve_slack {
        entry.device.set_reserve_slack(slack);
    }
    if let Some(floor) = config.reserve_floor {
        entry.device.set_reserve_floor(floor);
    }
    Ok(TorchDevice {
        device_id,
        entry,
        kind: config.kind,
        streams: RwLock::new(HashMap::new()),
        pools: Mutex::new(HashMap::new()),
        malloc_errors: AtomicU64::new(0),
        free_errors: AtomicU64::new(0),
        logged_free_error: AtomicBool::new(false),
    })
}

impl TorchDevice {
    fn stream(&self, function: &str, raw: *mut c_void) -> Result<Arc<StreamEntry>, Failure> {
        let key = raw as usize;
        if let Some(stream) = self.streams.read().get(&key) {
            return Ok(stream.clone());
        }
        let mut streams = self.streams.write();
        if let Some(stream) = streams.get(&key) {
            return Ok(stream.clone());
        }
        // SAFETY: torch hands its allocator live streams of this device's primary context
        // (or the default-stream handles), and keeps them for the life of the process.
        let stream = match unsafe { self.entry.device.adopt_stream(raw) } {
            Ok(stream) => stream,
            // A backend with no native streams (the mock): a stream of gpuhal's own stands
            // for each distinct handle, so the same paths run in tests.
            Err(_) if self.entry.device.backend() != "cuda" => {
                self.entry.device.create_stream().in_function(function)?
            }
            Err(err) => return Err(Failure::from(err)),
        };
        let entry = Arc::new(StreamEntry {
            stream,
            device: self.entry.clone(),
            device_id: self.device_id,
        });
        streams.insert(key, entry.clone());
        Ok(entry)
    }

    fn count_free_error(&self, failure: &Failure) {
        self.free_errors.fetch_add(1, Ordering::Relaxed);
        if !self.logged_free_error.swap(true, Ordering::Relaxed) {
            eprintln!(
                "gpuhal: {} (the free was ignored; later free errors are only counted, see \
                 gpuhal_torch_error_counts)",
                failure.message
            );
        }
    }
}

fn malloc(
    function: &str,
    size: isize,
    device: c_int,
    stream: *mut c_void,
    pool: Option<(u64, u64)>,
) -> Result<*mut c_void, Failure> {
    let torch = torch_device(function, device)?;
    let result = (|| {
        let size = u64::try_from(size).map_err(|_| Failure::invalid(function, format!("size {size} is negative")))?;
        let on = torch.stream(function, stream)?;
        match pool {
            Some(id) => {
                let pool = torch
                    .pools
                    .lock()
                    .entry(id)
                    .or_insert_with(|| torch.entry.device.graph_pool())
                    .clone();
                on.stream.route_allocations(Some(&pool)).in_function(function)?;
                let address = allocate(function, &torch.entry, size, torch.kind, &on);
                on.stream.route_allocations(None).in_function(function)?;
                address
            }
            None => {
                // A capture's allocations must stay with its graph: from the cache they
                // would be handed to eager work while the graph still replays over them.
                if size > 0 && on.stream.is_capturing_natively().in_function(function)? {
                    return Err(Failure::new(
                        GpuhalStatus::Capture,
                        format!(
                            "{function}: {size} bytes asked for on stream {stream:p}, which is being captured, but \
                             torch did not route the capture to a pool: install the allocate-to-pool hooks \
                             (gpuhal.torch.enable does, with the C++ shim built)"
                        ),
                    ));
                }
                allocate(function, &torch.entry, size, torch.kind, &on)
            }
        }
    })();
    if result.is_err() {
        torch.malloc_errors.fetch_add(1, Ordering::Relaxed);
    }
    result.map(|address| address as *mut c_void)
}

/// torch's `malloc(size, device, stream)`: `size` bytes on torch device `device`, ordered
/// on `stream` (a `cudaStream_t`). NULL on failure, with `gpuhal_last_error_message` set
/// (an out-of-memory message carries the allocator's statistics); NULL also for size 0.
#[no_mangle]
pub extern "C" fn gpuhal_torch_malloc(size: isize, device: c_int, stream: *mut c_void) -> *mut c_void {
    let mut address = std::ptr::null_mut();
    guard("gpuhal_torch_malloc", || {
        address = malloc("gpuhal_torch_malloc", size, device, stream, None)?;
        Ok(())
    });
    address
}

/// As `gpuhal_torch_malloc`, from the graph pool torch's `MempoolId_t`
/// `{pool_first, pool_second}` names (created on first use): what torch's
/// `beginAllocateToPool` asks for while `torch.cuda.graph` captures. Captures that share
/// an id share the pool's memory.
#[no_mangle]
pub extern "C" fn gpuhal_torch_malloc_in_pool(
    size: isize,
    device: c_int,
    stream: *mut c_void,
    pool_first: u64,
    pool_second: u64,
) -> *mut c_void {
    let mut address = std::ptr::null_mut();
    guard("gpuhal_torch_malloc_in_pool", || {
        address = malloc(
            "gpuhal_torch_malloc_in_pool",
            size,
            device,
            stream,
            Some((pool_first, pool_second)),
        )?;
        Ok(())
    });
    address
}

/// torch's `releasePool(device, mempool_id)`: gpuhal lets go of the pool; its memory
/// returns to the device's cache once the last buffer drawn from it is freed.
#[no_mangle]
pub extern "C" fn gpuhal_torch_release_pool(device: c_int, pool_first: u64, pool_second: u64) {
    const F: &str = "gpuhal_torch_release_pool";
    guard(F, || {
        let torch = torch_device(F, device)?;
        drop(torch.pools.lock().remove(&(pool_first, pool_second)));
        Ok(())
    });
}

/// torch's `empty_cache()`: releases every served device's idle cached memory.
#[no_mangle]
pub extern "C" fn gpuhal_torch_empty_cache() {
    guard("gpuhal_torch_empty_cache", || {
        for torch in TORCH_DEVICES
            .iter()
            .filter_map(|slot| slot.get().and_then(|opened| opened.as_ref().ok()))
        {
            torch.entry.device.trim();
        }
        Ok(())
    });
}

/// torch's `free(ptr, size, device, stream)`: frees what `gpuhal_torch_malloc` returned,
/// stream-ordered on the stream it was allocated on. Never fails: a pointer gpuhal did not
/// hand out, a double free or another device's pointer is counted and logged once, and the
/// allocator keeps serving.
#[no_mangle]
pub extern "C" fn gpuhal_torch_free(ptr: *mut c_void, size: isize, device: c_int, stream: *mut c_void) {
    const F: &str = "gpuhal_torch_free";
    // torch passes what it allocated with; gpuhal's table knows both.
    let _ = (size, stream);
    if ptr.is_null() {
        return;
    }
    guard(F, || {
        let torch = match torch_device(F, device) {
            Ok(torch) => torch,
            Err(failure) => {
                STRAY_FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
                return Err(failure);
            }
        };
        take(F, torch.device_id, &torch.entry, ptr as u64)
            .map(drop)
            .inspect_err(|failure| {
                torch.count_free_error(failure);
            })
    });
}

/// torch's `record_stream(ptr, stream)` (`tensor.record_stream`): the allocation at `ptr`
/// is not reused until `stream`'s work so far has completed. Errors are counted as free
/// errors are.
#[no_mangle]
pub extern "C" fn gpuhal_torch_record_stream(ptr: *mut c_void, stream: *mut c_void) {
    const F: &str = "gpuhal_torch_record_stream";
    guard(F, || {
        let address = ptr as u64;
        let torch = TORCH_DEVICES
            .iter()
            .filter_map(|slot| slot.get().and_then(|opened| opened.as_ref().ok()))
            .find(|torch| torch.entry.allocations.holds(address))
            .ok_or_else(|| {
                STRAY_FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
                Failure::new(
                    GpuhalStatus::UnknownPointer,
                    format!("{F}: pointer {address:#x} was not handed out by gpuhal's torch allocator"),
                )
            })?;
        let result = (|| {
            let on = torch.stream(F, stream)?;
            let located = torch
                .entry
                .allocations
                .locate(address, 0)
                .ok_or_else(|| unknown_pointer(F, torch.device_id, &torch.entry, address))?;
            located.buffer.record_use(&on.stream).in_function(F)
        })();
        result.inspect_err(|failure| torch.count_free_error(failure))
    });
}

/// The statistics of the gpuhal device serving torch device `device`.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_memory_stats(device: c_int, out: *mut GpuhalMemoryStats) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_memory_stats";
    guard(F, || {
        let stats = torch_device(F, device)?.entry.device.memory_stats().into();
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "out", out, stats) }
    })
}

/// The memory report (JSON) of the gpuhal device serving torch device `device`; see
/// [`gpuhal_memory_report_json`](crate::report::gpuhal_memory_report_json).
///
/// # Safety
///
/// `out` is valid for a write; `len` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_memory_report_json(
    device: c_int,
    out: *mut *mut std::ffi::c_char,
    len: *mut usize,
) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_memory_report_json";
    guard(F, || {
        let report = torch_device(F, device)?.entry.device.memory_report();
        // SAFETY: the caller passes `out` and `len` as the contract says.
        unsafe { crate::report::write_json(F, &report, out, len) }
    })
}

/// Errors torch's allocator calls could not report: `malloc_errors` (also returned as
/// NULL) and `free_errors` (frees and record_stream calls that failed, plus those for a
/// device index gpuhal never served). Either pointer may be null.
///
/// # Safety
///
/// Each pointer is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_error_counts(
    device: c_int,
    malloc_errors: *mut u64,
    free_errors: *mut u64,
) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_error_counts";
    guard(F, || {
        let torch = torch_device(F, device)?;
        let counts = [
            (malloc_errors, torch.malloc_errors.load(Ordering::Relaxed)),
            (
                free_errors,
                torch.free_errors.load(Ordering::Relaxed) + STRAY_FREE_ERRORS.load(Ordering::Relaxed),
            ),
        ];
        for (out, count) in counts {
            if !out.is_null() {
                // SAFETY: not null, and the caller passes it valid for a write.
                unsafe { write_out(F, "count", out, count) }?;
            }
        }
        Ok(())
    })
}

/// `gpuhal_sleep` on the gpuhal device serving torch device `device`: `keep` holds `count`
/// tensor data pointers (`tensor.data_ptr()`) whose allocations keep their contents; every
/// other allocation's memory is released and reads back undefined after
/// [`gpuhal_torch_wake`]. Needs `GPUHAL_SEGMENTS=growable` (`GPUHAL_STATUS_UNSUPPORTED`
/// otherwise). `out` may be NULL.
///
/// # Safety
///
/// `keep` is valid for reads of `count` pointers (or `count` is 0); `out` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_sleep(
    device: c_int,
    keep: *const *const c_void,
    count: usize,
    out: *mut GpuhalSleepReport,
) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_sleep";
    guard(F, || {
        let torch = torch_device(F, device)?;
        // SAFETY: the caller passes `count` readable pointers at `keep`.
        let report = unsafe { sleep(F, torch.device_id, &torch.entry, keep, count) }?;
        // SAFETY: the caller passes `out` null or valid for a write.
        unsafe { write_optional(F, out, report) }
    })
}

/// `gpuhal_wake` on the gpuhal device serving torch device `device`. `out` may be NULL.
///
/// # Safety
///
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_wake(device: c_int, out: *mut GpuhalWakeReport) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_wake";
    guard(F, || {
        let report: GpuhalWakeReport = torch_device(F, device)?.entry.device.wake().in_function(F)?.into();
        // SAFETY: the caller passes `out` null or valid for a write.
        unsafe { write_optional(F, out, report) }
    })
}

/// The gpuhal device serving torch device `device` (opened now if torch has not used it
/// yet), for the generic functions: `gpuhal_trim`, limits, `gpuhal_free` … Do not close it.
///
/// # Safety
///
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gpuhal_torch_device(device: c_int, out: *mut GpuhalDevice) -> GpuhalStatus {
    const F: &str = "gpuhal_torch_device";
    guard(F, || {
        let torch = torch_device(F, device)?;
        // SAFETY: the caller passes it valid for a write (null is refused).
        unsafe { write_out(F, "out", out, GpuhalDevice { id: torch.device_id }) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert!(parse_bytes("8 parsecs").unwrap_err().contains("suffix"));
        assert!(parse_bytes("99999999999999T").unwrap_err().contains("64 bits"));
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn config_reads_kind_limit_and_slack() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let config = TorchConfig::from_vars(vars(&[
            ("GPUHAL_MEMORY_KIND", "managed"),
            ("GPUHAL_MEMORY_LIMIT", "2GiB"),
            ("GPUHAL_RESERVE_SLACK", "inf"),
            ("GPUHAL_RESERVE_FLOOR", "0"),
            ("GPUHAL_SEGMENTS", "growable"),
        ]))
        .unwrap();
        assert_eq!(config.segments, gpuhal::SegmentStrategy::Growable);
        assert_eq!(config.backend, "cuda");
        assert_eq!(config.kind, MemoryKind::Managed);
        assert_eq!(config.memory_limit, Some(2 << 30));
        assert_eq!(config.reserve_slack, Some(f64::INFINITY));
        assert_eq!(config.reserve_floor, Some(0));
        let bad = TorchConfig::from_vars(vars(&[("GPUHAL_MEMORY_KIND", "pinned")])).unwrap_err();
        assert!(bad.contains("GPUHAL_MEMORY_KIND") && bad.contains("pinned"), "{bad}");
        assert!(TorchConfig::from_vars(vars(&[("GPUHAL_RESERVE_SLACK", "-1")])).is_err());
        let bad = TorchConfig::from_vars(vars(&[("GPUHAL_SEGMENTS", "huge")])).unwrap_err();
        assert!(bad.contains("GPUHAL_SEGMENTS"), "{bad}");
    }
}
