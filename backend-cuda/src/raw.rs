//! The FFI edge: one thin wrapper per driver call, each turning the status into a
//! [`NativeError`](gpuhal_hal::NativeError) named after the call. This is the only file
//! with `unsafe` driver calls.
//!
//! Handles (`CUstream`, `CUevent` …) reach these functions only from the crate's owning
//! types, which create them here and destroy them once, on drop; device addresses come
//! from the allocator or from host memory the caller borrows. Calls that read or write
//! host memory take Rust slices and do not return before the driver is done with them.

use std::ffi::{c_int, c_uint, c_void};
use std::ptr;

use cudarc::driver::sys::{self, CUresult};

use crate::error::{check, NativeResult};

pub(crate) use sys::{
    CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUgraph, CUgraphExec,
    CUgraphExecUpdateResult, CUmemLocation, CUmem_advise, CUmem_range_attribute, CUmemoryPool, CUmodule, CUstream,
};

/// `cuInit(0)`.
pub(crate) fn init() -> NativeResult<()> {
    // SAFETY: cuInit takes no pointers and may be called any number of times.
    check("cuInit", unsafe { sys::cuInit(0) })
}

/// The driver's CUDA version, e.g. 13000.
pub(crate) fn driver_version() -> NativeResult<i32> {
    let mut version: c_int = 0;
    // SAFETY: the out-pointer is a live local.
    check("cuDriverGetVersion", unsafe { sys::cuDriverGetVersion(&mut version) })?;
    Ok(version)
}

/// Number of devices.
pub(crate) fn device_count() -> NativeResult<i32> {
    let mut count: c_int = 0;
    // SAFETY: the out-pointer is a live local.
    check("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut count) })?;
    Ok(count)
}

/// The device of an ordinal.
pub(crate) fn device_get(ordinal: i32) -> NativeResult<CUdevice> {
    let mut device: CUdevice = 0;
    // SAFETY: the out-pointer is a live local; the driver validates the ordinal.
    check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, ordinal) })?;
    Ok(device)
}

/// The device's marketing name.
pub(crate) fn device_name(device: CUdevice) -> NativeResult<String> {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is live and its length is passed; the driver NUL-terminates.
    check("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr().cast(), name.len() as c_int, device)
    })?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Total device memory in bytes.
pub(crate) fn device_total_mem(device: CUdevice) -> NativeResult<u64> {
    let mut bytes: usize = 0;
    // SAFETY: the out-pointer is a live local.
    check("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut bytes, device)
    })?;
    Ok(bytes as u64)
}

/// A device attribute.
pub(crate) fn device_attribute(device: CUdevice, attribute: CUdevice_attribute) -> NativeResult<i32> {
    let mut value: c_int = 0;
    // SAFETY: the out-pointer is a live local.
    check("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(&mut value, attribute, device)
    })?;
    Ok(value)
}

/// Retains the device's primary context.
pub(crate) fn primary_ctx_retain(device: CUdevice) -> NativeResult<CUcontext> {
    let mut ctx: CUcontext = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuDevicePrimaryCtxRetain", unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut ctx, device)
    })?;
    Ok(ctx)
}

/// Releases one retain of the device's primary context.
pub(crate) fn primary_ctx_release(device: CUdevice) -> NativeResult<()> {
    // SAFETY: paired with a successful `primary_ctx_retain` by the caller.
    check("cuDevicePrimaryCtxRelease", unsafe {
        sys::cuDevicePrimaryCtxRelease_v2(device)
    })
}

/// The calling thread's current context (null when none).
pub(crate) fn ctx_get_current() -> NativeResult<CUcontext> {
    let mut ctx: CUcontext = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut ctx) })?;
    Ok(ctx)
}

/// Makes `ctx` current on the calling thread.
pub(crate) fn ctx_set_current(ctx: CUcontext) -> NativeResult<()> {
    // SAFETY: `ctx` is a retained primary context, alive while its owner is.
    check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(ctx) })
}

/// Waits for all work in the current context.
pub(crate) fn ctx_synchronize() -> NativeResult<()> {
    // SAFETY: no arguments.
    check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
}

/// Free and total memory of the current context's device.
pub(crate) fn mem_get_info() -> NativeResult<(u64, u64)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the out-pointers are live locals.
    check("cuMemGetInfo", unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
    Ok((free as u64, total as u64))
}

/// A memory pool of pinned device memory on device `ordinal`.
pub(crate) fn mem_pool_create(ordinal: i32) -> NativeResult<CUmemoryPool> {
    // SAFETY: an all-zero CUmemPoolProps is a valid (empty) value of this plain C struct.
    let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
    props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
    props.location = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ordinal,
    };
    let mut pool: CUmemoryPool = ptr::null_mut();
    // SAFETY: `props` and the out-pointer are live locals.
    check("cuMemPoolCreate", unsafe { sys::cuMemPoolCreate(&mut pool, &props) })?;
    Ok(pool)
}

/// Sets the pool's release threshold (bytes kept reserved across synchronisations).
pub(crate) fn mem_pool_set_release_threshold(pool: CUmemoryPool, bytes: u64) -> NativeResult<()> {
    let mut value: u64 = bytes;
    // SAFETY: the attribute takes a cuuint64_t, passed by pointer to a live local.
    check("cuMemPoolSetAttribute", unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut value as *mut u64).cast(),
        )
    })
}

/// Destroys a memory pool.
pub(crate) fn mem_pool_destroy(pool: CUmemoryPool) -> NativeResult<()> {
    // SAFETY: `pool` came from `mem_pool_create` and is destroyed once, by its owner.
    check("cuMemPoolDestroy", unsafe { sys::cuMemPoolDestroy(pool) })
}

/// Stream-ordered allocation from `pool`.
pub(crate) fn mem_alloc_from_pool_async(size: u64, pool: CUmemoryPool, stream: CUstream) -> NativeResult<CUdeviceptr> {
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: the out-pointer is a live local; pool and stream are owned, live handles.
    check("cuMemAllocFromPoolAsync", unsafe {
        sys::cuMemAllocFromPoolAsync(&mut dptr, size as usize, pool, stream)
    })?;
    Ok(dptr)
}

/// Stream-ordered free.
pub(crate) fn mem_free_async(dptr: CUdeviceptr, stream: CUstream) -> NativeResult<()> {
    // SAFETY: `dptr` is a stream-ordered allocation the caching pool no longer hands out.
    check("cuMemFreeAsync", unsafe { sys::cuMemFreeAsync(dptr, stream) })
}

/// Properties of pinned device memory on device `ordinal`, for the virtual-memory calls.
fn device_allocation_prop(ordinal: i32) -> sys::CUmemAllocationProp {
    // SAFETY: an all-zero CUmemAllocationProp is a valid (empty) value of this plain C struct.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
    prop.location = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ordinal,
    };
    prop
}

/// The granularity physical device memory is created and mapped in (`MINIMUM`).
pub(crate) fn mem_allocation_granularity(ordinal: i32) -> NativeResult<u64> {
    let prop = device_allocation_prop(ordinal);
    let mut granularity = 0usize;
    // SAFETY: `prop` and the out-pointer are live locals.
    check("cuMemGetAllocationGranularity", unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut granularity,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    })?;
    Ok(granularity as u64)
}

/// Reserves `size` bytes of device address space (no memory behind it).
pub(crate) fn mem_address_reserve(size: u64, alignment: u64) -> NativeResult<CUdeviceptr> {
    let mut dptr: CUdeviceptr = 0;
    with_relaxed_capture_mode(|| {
        // SAFETY: the out-pointer is a live local; no fixed address is asked for.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut dptr, size as usize, alignment as usize, 0, 0)
        })
    })?;
    Ok(dptr)
}

/// Frees an address range from `mem_address_reserve`, once nothing is mapped in it.
pub(crate) fn mem_address_free(dptr: CUdeviceptr, size: u64) -> NativeResult<()> {
    // SAFETY: the range was reserved by `mem_address_reserve` and is freed once, by its owner.
    check("cuMemAddressFree", unsafe {
        sys::cuMemAddressFree(dptr, size as usize)
    })
}

/// Creates `size` bytes of physical device memory on device `ordinal`.
pub(crate) fn mem_create(size: u64, ordinal: i32) -> NativeResult<u64> {
    let prop = device_allocation_prop(ordinal);
    let mut handle: sys::CUmemGenericAllocationHandle = 0;
    with_relaxed_capture_mode(|| {
        // SAFETY: `prop` and the out-pointer are live locals.
        check("cuMemCreate", unsafe {
            sys::cuMemCreate(&mut handle, size as usize, &prop, 0)
        })
    })?;
    Ok(handle)
}

/// Releases physical memory from `mem_create` (freed once no mapping uses it).
pub(crate) fn mem_release(handle: u64) -> NativeResult<()> {
    // SAFETY: `handle` came from `mem_create` and is released once, by its owner.
    check("cuMemRelease", unsafe { sys::cuMemRelease(handle) })
}

/// Maps all of `handle` (`size` bytes) at `dptr`, inside a reserved range (the driver
/// maps handles whole: its offset argument must be 0). Nothing can use the range until
/// [`mem_set_access_read_write`] has been called on it.
pub(crate) fn mem_map(dptr: CUdeviceptr, size: u64, handle: u64) -> NativeResult<()> {
    // SAFETY: `dptr..dptr + size` lies in a range this crate reserved and has nothing mapped.
    with_relaxed_capture_mode(|| check("cuMemMap", unsafe { sys::cuMemMap(dptr, size as usize, 0, handle, 0) }))
}

/// Makes the mapped range `dptr..dptr + size` (one mapping or several back to back)
/// readable and writable by device `ordinal`.
pub(crate) fn mem_set_access_read_write(dptr: CUdeviceptr, size: u64, ordinal: i32) -> NativeResult<()> {
    let access = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ordinal,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    with_relaxed_capture_mode(|| {
        // SAFETY: `access` is a live local describing one device; the range is mapped.
        check("cuMemSetAccess", unsafe {
            sys::cuMemSetAccess(dptr, size as usize, &access, 1)
        })
    })
}

/// Copies `len` bytes from device address `src` to page-locked host memory at `host`
/// and returns once the copy has completed.
pub(crate) fn memcpy_dtoh_pinned(host: u64, src: CUdeviceptr, len: u64) -> NativeResult<()> {
    // SAFETY: `host` is a live `mem_host_alloc` allocation of at least `len` bytes owned by the caller, with no Rust reference into it; the copy is synchronous.
    check("cuMemcpyDtoH", unsafe {
        sys::cuMemcpyDtoH_v2(host as *mut c_void, src, len as usize)
    })
}

/// Copies `len` bytes from page-locked host memory at `host` to device address `dst` and
/// returns once the copy has completed.
pub(crate) fn memcpy_htod_pinned(dst: CUdeviceptr, host: u64, len: u64) -> NativeResult<()> {
    // SAFETY: `host` is a live `mem_host_alloc` allocation of at least `len` bytes owned by the caller; the copy is synchronous.
    check("cuMemcpyHtoD", unsafe {
        sys::cuMemcpyHtoD_v2(dst, host as *const c_void, len as usize)
    })
}

/// Unmaps `dptr..dptr + size`; the caller has waited for every use of the range.
pub(crate) fn mem_unmap(dptr: CUdeviceptr, size: u64) -> NativeResult<()> {
    // SAFETY: the range was mapped by `mem_map` and no work that uses it is pending.
    with_relaxed_capture_mode(|| check("cuMemUnmap", unsafe { sys::cuMemUnmap(dptr, size as usize) }))
}

/// Non-stream-ordered device allocation.
pub(crate) fn mem_alloc(size: u64) -> NativeResult<CUdeviceptr> {
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: the out-pointer is a live local.
    with_relaxed_capture_mode(|| check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut dptr, size as usize) }))?;
    Ok(dptr)
}

/// Runs `body` with this thread's stream capture mode relaxed, then restores the mode.
///
/// A capture in global mode on this thread (PyTorch's default) forbids calls such as
/// `cuMemAlloc`, `cuMemAllocManaged` and `cuMemAdvise`, and is invalidated by them. The
/// allocator's native allocations outside the stream order are not part of any capture, so
/// they are made in relaxed mode, as PyTorch's own allocator does.
pub(crate) fn with_relaxed_capture_mode<R>(body: impl FnOnce() -> R) -> R {
    let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: `mode` is a live local the driver reads and overwrites with the old mode.
    let swapped = unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) } == sys::CUresult::CUDA_SUCCESS;
    let result = body();
    if swapped {
        // SAFETY: as above; this puts the thread's previous mode back.
        unsafe { sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
    }
    result
}

/// Frees a `mem_alloc` or `mem_alloc_managed` allocation.
pub(crate) fn mem_free(dptr: CUdeviceptr) -> NativeResult<()> {
    // SAFETY: `dptr` is an allocation no longer handed out, never dereferenced through a Rust reference.
    check("cuMemFree", unsafe { sys::cuMemFree_v2(dptr) })
}

/// Managed memory, attached globally.
pub(crate) fn mem_alloc_managed(size: u64) -> NativeResult<CUdeviceptr> {
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: the out-pointer is a live local.
    check("cuMemAllocManaged", unsafe {
        sys::cuMemAllocManaged(
            &mut dptr,
            size as usize,
            sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL as c_uint,
        )
    })?;
    Ok(dptr)
}

/// Page-locked host memory; returns the host pointer as an integer.
pub(crate) fn mem_host_alloc(size: u64, flags: u32) -> NativeResult<u64> {
    let mut host: *mut c_void = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuMemHostAlloc", unsafe {
        sys::cuMemHostAlloc(&mut host, size as usize, flags)
    })?;
    Ok(host as u64)
}

/// Frees `mem_host_alloc` memory.
pub(crate) fn mem_free_host(host: u64) -> NativeResult<()> {
    // SAFETY: `host` came from `mem_host_alloc`, freed once by its owner; no Rust reference into it outlives that.
    check("cuMemFreeHost", unsafe { sys::cuMemFreeHost(host as *mut c_void) })
}

/// The device address of mapped (allocated or registered) host memory.
pub(crate) fn mem_host_get_device_pointer(host: u64) -> NativeResult<CUdeviceptr> {
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: the out-pointer is a live local; the driver validates `host`.
    check("cuMemHostGetDevicePointer", unsafe {
        sys::cuMemHostGetDevicePointer_v2(&mut dptr, host as *mut c_void, 0)
    })?;
    Ok(dptr)
}

/// Page-locks and maps `len` bytes of host memory at `host`.
///
/// The caller keeps the memory alive (it borrows it) and unregisters before the borrow
/// ends; with `CU_MEMHOSTREGISTER_READ_ONLY` the device cannot write it.
pub(crate) fn mem_host_register(host: u64, len: u64, flags: u32) -> NativeResult<()> {
    // SAFETY: the caller borrows the host range for as long as it stays registered; registering changes no bytes.
    check("cuMemHostRegister", unsafe {
        sys::cuMemHostRegister_v2(host as *mut c_void, len as usize, flags)
    })
}

/// Undoes `mem_host_register`.
pub(crate) fn mem_host_unregister(host: u64) -> NativeResult<()> {
    // SAFETY: `host` is the start of a range registered by `mem_host_register`.
    check("cuMemHostUnregister", unsafe {
        sys::cuMemHostUnregister(host as *mut c_void)
    })
}

/// A memory location: device `ordinal`, or the host.
pub(crate) fn location(device: Option<i32>) -> CUmemLocation {
    match device {
        Some(ordinal) => sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ordinal,
        },
        None => sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST,
            id: 0,
        },
    }
}

/// Applies one piece of advice to a managed (or pageable) range.
pub(crate) fn mem_advise(dptr: CUdeviceptr, len: u64, advice: CUmem_advise, to: CUmemLocation) -> NativeResult<()> {
    // SAFETY: advice changes placement, never contents; the driver validates the range.
    check("cuMemAdvise_v2", unsafe {
        sys::cuMemAdvise_v2(dptr, len as usize, advice, to)
    })
}

/// Prefetches a managed (or pageable, where the device can access it) range.
pub(crate) fn mem_prefetch_async(dptr: CUdeviceptr, len: u64, to: CUmemLocation, stream: CUstream) -> NativeResult<()> {
    // SAFETY: migration keeps contents; the driver validates the range.
    check("cuMemPrefetchAsync_v2", unsafe {
        sys::cuMemPrefetchAsync_v2(dptr, len as usize, to, 0, stream)
    })
}

/// Reads range attributes made of 32-bit integers (`out.len()` of them).
pub(crate) fn mem_range_attribute(
    dptr: CUdeviceptr,
    len: u64,
    attribute: CUmem_range_attribute,
    out: &mut [i32],
) -> NativeResult<()> {
    // SAFETY: `out` is a live, writable buffer of exactly the size passed.
    check("cuMemRangeGetAttribute", unsafe {
        sys::cuMemRangeGetAttribute(
            out.as_mut_ptr().cast(),
            std::mem::size_of_val(out),
            attribute,
            dptr,
            len as usize,
        )
    })
}

/// A non-blocking stream.
pub(crate) fn stream_create() -> NativeResult<CUstream> {
    let mut stream: CUstream = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuStreamCreate", unsafe {
        sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint)
    })?;
    Ok(stream)
}

/// Destroys a stream (its pending work still completes).
pub(crate) fn stream_destroy(stream: CUstream) -> NativeResult<()> {
    // SAFETY: `stream` is owned and destroyed once, when its last holder drops.
    check("cuStreamDestroy", unsafe { sys::cuStreamDestroy_v2(stream) })
}

/// Waits for the stream's work.
pub(crate) fn stream_synchronize(stream: CUstream) -> NativeResult<()> {
    // SAFETY: `stream` is a live owned handle.
    check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(stream) })
}

/// Whether the stream is capturing (an invalidated capture counts as capturing: it
/// still has to be ended).
pub(crate) fn stream_is_capturing(stream: CUstream) -> NativeResult<bool> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the out-pointer is a live local.
    check("cuStreamIsCapturing", unsafe {
        sys::cuStreamIsCapturing(stream, &mut status)
    })?;
    Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// Starts a relaxed-mode capture (so non-stream-ordered allocations stay legal).
pub(crate) fn stream_begin_capture(stream: CUstream) -> NativeResult<()> {
    // SAFETY: `stream` is a live owned handle.
    check("cuStreamBeginCapture", unsafe {
        sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
    })
}

/// Ends a capture. On failure the partial graph, if the driver returned one, is
/// destroyed here.
pub(crate) fn stream_end_capture(stream: CUstream) -> NativeResult<CUgraph> {
    let mut graph: CUgraph = ptr::null_mut();
    // SAFETY: the out-pointer is a live local; `stream` is a live owned handle.
    let status = unsafe { sys::cuStreamEndCapture(stream, &mut graph) };
    match check("cuStreamEndCapture", status) {
        Ok(()) => Ok(graph),
        Err(err) => {
            if !graph.is_null() {
                let _ = graph_destroy(graph);
            }
            Err(err)
        }
    }
}

/// Copies `data` to device address `dst` in `stream` order and returns once the copy
/// has completed (so `data` is no longer needed).
pub(crate) fn memcpy_htod(dst: CUdeviceptr, data: &[u8], stream: CUstream) -> NativeResult<()> {
    // SAFETY: `data` is borrowed for the call and the stream is synchronised before returning, so no read outlives it.
    check("cuMemcpyHtoDAsync", unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst, data.as_ptr().cast(), data.len(), stream)
    })?;
    stream_synchronize(stream)
}

/// Copies from device address `src` into `out` after the stream's earlier work and
/// returns once the copy has completed.
pub(crate) fn memcpy_dtoh(out: &mut [u8], src: CUdeviceptr, stream: CUstream) -> NativeResult<()> {
    // SAFETY: `out` is borrowed for the call and the stream is synchronised before returning, so no write outlives it.
    check("cuMemcpyDtoHAsync", unsafe {
        sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), src, out.len(), stream)
    })?;
    stream_synchronize(stream)
}

/// Device-to-device (unified addressing) copy in stream order.
pub(crate) fn memcpy_async(dst: CUdeviceptr, src: CUdeviceptr, len: u64, stream: CUstream) -> NativeResult<()> {
    // SAFETY: both ranges are device memory bounds-checked by the caller; no Rust reference aliases them.
    check("cuMemcpyAsync", unsafe {
        sys::cuMemcpyAsync(dst, src, len as usize, stream)
    })
}

/// Sets `len` bytes at `dst` to `value` in stream order.
pub(crate) fn memset_d8_async(dst: CUdeviceptr, value: u8, len: u64, stream: CUstream) -> NativeResult<()> {
    // SAFETY: the range is device-accessible memory bounds-checked by the caller.
    check("cuMemsetD8Async", unsafe {
        sys::cuMemsetD8Async(dst, value, len as usize, stream)
    })
}

/// Loads a module from a NUL-terminated PTX image (the driver compiles it for the device
/// of the current context).
pub(crate) fn module_load_data(image: &std::ffi::CStr) -> NativeResult<CUmodule> {
    let mut module: CUmodule = ptr::null_mut();
    // SAFETY: the out-pointer is a live local; `image` is NUL-terminated and outlives the call (the driver copies it).
    check("cuModuleLoadData", unsafe {
        sys::cuModuleLoadData(&mut module, image.as_ptr().cast())
    })?;
    Ok(module)
}

/// Unloads a module.
pub(crate) fn module_unload(module: CUmodule) -> NativeResult<()> {
    // SAFETY: `module` is owned and unloaded once.
    check("cuModuleUnload", unsafe { sys::cuModuleUnload(module) })
}

/// A kernel of a loaded module, by name.
pub(crate) fn module_get_function(module: CUmodule, name: &std::ffi::CStr) -> NativeResult<CUfunction> {
    let mut function: CUfunction = ptr::null_mut();
    // SAFETY: the out-pointer is a live local; `name` is NUL-terminated; `module` is live.
    check("cuModuleGetFunction", unsafe {
        sys::cuModuleGetFunction(&mut function, module, name.as_ptr())
    })?;
    Ok(function)
}

/// Launches `function` on a one-dimensional grid. `params` holds a pointer to each kernel
/// argument, in order, each of the type the kernel declares.
pub(crate) fn launch_kernel(
    function: CUfunction,
    blocks: u32,
    threads: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> NativeResult<()> {
    // `params` holds pointers to live locals of the types the kernel declares, copied by the driver before it returns.
    // SAFETY: `function` is a live kernel; `params` is as above; the ranges it names were bounds-checked by the caller.
    check("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            function,
            blocks,
            1,
            1,
            threads,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            ptr::null_mut(),
        )
    })
}

/// A new event; `timing` false creates it with `CU_EVENT_DISABLE_TIMING`.
pub(crate) fn event_create(timing: bool) -> NativeResult<CUevent> {
    let flags = if timing {
        sys::CUevent_flags::CU_EVENT_DEFAULT
    } else {
        sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
    };
    let mut event: CUevent = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuEventCreate", unsafe {
        sys::cuEventCreate(&mut event, flags as c_uint)
    })?;
    Ok(event)
}

/// Destroys an event.
pub(crate) fn event_destroy(event: CUevent) -> NativeResult<()> {
    // SAFETY: `event` is owned by the event pool and destroyed once.
    check("cuEventDestroy", unsafe { sys::cuEventDestroy_v2(event) })
}

/// Records `event` at the current end of `stream`'s work.
pub(crate) fn event_record(event: CUevent, stream: CUstream) -> NativeResult<()> {
    // SAFETY: both are live owned handles.
    check("cuEventRecord", unsafe { sys::cuEventRecord(event, stream) })
}

/// Whether the work before `event` has completed.
pub(crate) fn event_query(event: CUevent) -> NativeResult<bool> {
    // SAFETY: `event` is a live owned handle.
    let status = unsafe { sys::cuEventQuery(event) };
    match status {
        CUresult::CUDA_SUCCESS => Ok(true),
        CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        other => Err(crate::error::native_error("cuEventQuery", other)),
    }
}

/// Waits on the CPU for the work before `event`.
pub(crate) fn event_synchronize(event: CUevent) -> NativeResult<()> {
    // SAFETY: `event` is a live owned handle.
    check("cuEventSynchronize", unsafe { sys::cuEventSynchronize(event) })
}

/// Milliseconds between two completed timing events.
pub(crate) fn event_elapsed_ms(start: CUevent, end: CUevent) -> NativeResult<f32> {
    let mut ms: f32 = 0.0;
    // SAFETY: the out-pointer is a live local; both events are live owned handles.
    check("cuEventElapsedTime", unsafe {
        sys::cuEventElapsedTime(&mut ms, start, end)
    })?;
    Ok(ms)
}

/// Makes `stream`'s later work wait for `event`.
pub(crate) fn stream_wait_event(stream: CUstream, event: CUevent) -> NativeResult<()> {
    // SAFETY: both are live owned handles.
    check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(stream, event, 0) })
}

/// Enqueues a 64-bit write of `value` to device-accessible address `addr`.
pub(crate) fn stream_write_value64(stream: CUstream, addr: CUdeviceptr, value: u64) -> NativeResult<()> {
    // SAFETY: `addr` is the aligned device address of a mapped host counter whose fence the caller keeps alive.
    check("cuStreamWriteValue64", unsafe {
        sys::cuStreamWriteValue64_v2(stream, addr, value, 0)
    })
}

/// Makes `stream` wait until the 64-bit value at `addr` is at least `value`.
pub(crate) fn stream_wait_value64_geq(stream: CUstream, addr: CUdeviceptr, value: u64) -> NativeResult<()> {
    // SAFETY: `addr` is the device address of a mapped host counter owned by a fence.
    check("cuStreamWaitValue64", unsafe {
        sys::cuStreamWaitValue64_v2(
            stream,
            addr,
            value,
            sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as c_uint,
        )
    })
}

/// Destroys a graph.
pub(crate) fn graph_destroy(graph: CUgraph) -> NativeResult<()> {
    // SAFETY: `graph` is owned and destroyed once.
    check("cuGraphDestroy", unsafe { sys::cuGraphDestroy(graph) })
}

/// Number of nodes in a graph.
pub(crate) fn graph_node_count(graph: CUgraph) -> NativeResult<usize> {
    let mut count: usize = 0;
    // SAFETY: a null node array asks only for the count, written to a live local.
    check("cuGraphGetNodes", unsafe {
        sys::cuGraphGetNodes(graph, ptr::null_mut(), &mut count)
    })?;
    Ok(count)
}

/// Instantiates a graph.
pub(crate) fn graph_instantiate(graph: CUgraph) -> NativeResult<CUgraphExec> {
    let mut exec: CUgraphExec = ptr::null_mut();
    // SAFETY: the out-pointer is a live local; `graph` is a live owned handle.
    check("cuGraphInstantiateWithFlags", unsafe {
        sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
    })?;
    Ok(exec)
}

/// Destroys an executable graph.
pub(crate) fn graph_exec_destroy(exec: CUgraphExec) -> NativeResult<()> {
    // SAFETY: `exec` is owned and destroyed once.
    check("cuGraphExecDestroy", unsafe { sys::cuGraphExecDestroy(exec) })
}

/// Enqueues a replay.
pub(crate) fn graph_launch(exec: CUgraphExec, stream: CUstream) -> NativeResult<()> {
    // SAFETY: both are live owned handles.
    check("cuGraphLaunch", unsafe { sys::cuGraphLaunch(exec, stream) })
}

/// Updates `exec` with `graph`'s parameters. The inner result is the driver's verdict
/// when the graphs differ in shape.
pub(crate) fn graph_exec_update(
    exec: CUgraphExec,
    graph: CUgraph,
) -> NativeResult<Result<(), (CUresult, CUgraphExecUpdateResult)>> {
    // SAFETY: an all-zero result info (null nodes, SUCCESS) is a valid value.
    let mut info: sys::CUgraphExecUpdateResultInfo = unsafe { std::mem::zeroed() };
    // SAFETY: the out-pointer is a live local; both handles are live and owned.
    let status = unsafe { sys::cuGraphExecUpdate_v2(exec, graph, &mut info) };
    match status {
        CUresult::CUDA_SUCCESS => Ok(Ok(())),
        CUresult::CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE => Ok(Err((status, info.result))),
        other => Err(crate::error::native_error("cuGraphExecUpdate_v2", other)),
    }
}

/// The host's page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Whether the driver library can be loaded (no symbol is resolved).
pub(crate) fn library_present() -> bool {
    // SAFETY: loading the library runs its initialisers, as any use of the driver does first; no symbol is called.
    unsafe { sys::is_culib_present() }
}

// Sharing with other processes and devices: exportable pools, interprocess events, peer
// access.

/// A memory pool of pinned device memory on device `ordinal` whose allocations can be
/// exported to other processes through a POSIX file descriptor.
pub(crate) fn mem_pool_create_exportable(ordinal: i32) -> NativeResult<CUmemoryPool> {
    // SAFETY: an all-zero CUmemPoolProps is a valid (empty) value of this plain C struct.
    let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
    props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    props.location = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ordinal,
    };
    let mut pool: CUmemoryPool = ptr::null_mut();
    // SAFETY: `props` and the out-pointer are live locals.
    check("cuMemPoolCreate", unsafe { sys::cuMemPoolCreate(&mut pool, &props) })?;
    Ok(pool)
}

/// A new file descriptor for an exportable pool; the caller owns (and closes) it.
pub(crate) fn mem_pool_export_fd(pool: CUmemoryPool) -> NativeResult<std::os::fd::OwnedFd> {
    let mut fd: c_int = -1;
    // SAFETY: for POSIX_FILE_DESCRIPTOR the driver writes an int through the pointer, a live local.
    check("cuMemPoolExportToShareableHandle", unsafe {
        sys::cuMemPoolExportToShareableHandle(
            (&mut fd as *mut c_int).cast(),
            pool,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    if fd < 0 {
        return Err(crate::error::native_error(
            "cuMemPoolExportToShareableHandle",
            CUresult::CUDA_ERROR_INVALID_HANDLE,
        ));
    }
    // SAFETY: the driver just created `fd` for the caller, and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The export data naming the pool allocation that starts at `dptr`.
pub(crate) fn mem_pool_export_pointer(dptr: CUdeviceptr) -> NativeResult<[u8; 64]> {
    // SAFETY: an all-zero export data is a valid value of this plain byte array struct.
    let mut data: sys::CUmemPoolPtrExportData = unsafe { std::mem::zeroed() };
    // SAFETY: the out-pointer is a live local; the driver validates `dptr`.
    check("cuMemPoolExportPointer", unsafe {
        sys::cuMemPoolExportPointer(&mut data, dptr)
    })?;
    Ok(data.reserved)
}

/// Opens another process's exportable pool from its file descriptor (the descriptor
/// stays the caller's).
pub(crate) fn mem_pool_import_fd(fd: std::os::fd::BorrowedFd<'_>) -> NativeResult<CUmemoryPool> {
    let raw_fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut pool: CUmemoryPool = ptr::null_mut();
    // SAFETY: for POSIX_FILE_DESCRIPTOR the handle is the descriptor itself passed as a pointer-sized value; the out-pointer is a live local.
    check("cuMemPoolImportFromShareableHandle", unsafe {
        sys::cuMemPoolImportFromShareableHandle(
            &mut pool,
            raw_fd as isize as *mut c_void,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    Ok(pool)
}

/// Maps the allocation `data` names from an imported pool; free it with `mem_free`.
pub(crate) fn mem_pool_import_pointer(pool: CUmemoryPool, data: &[u8; 64]) -> NativeResult<CUdeviceptr> {
    let mut export = sys::CUmemPoolPtrExportData { reserved: *data };
    let mut dptr: CUdeviceptr = 0;
    // SAFETY: the export data and the out-pointer are live locals; `pool` is a live imported pool.
    check("cuMemPoolImportPointer", unsafe {
        sys::cuMemPoolImportPointer(&mut dptr, pool, &mut export)
    })?;
    Ok(dptr)
}

/// Lets device `ordinal` read and write the allocations of `pool`.
pub(crate) fn mem_pool_set_access(pool: CUmemoryPool, ordinal: i32) -> NativeResult<()> {
    let access = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ordinal,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: `access` is a live local describing one device; `pool` is a live pool.
    check("cuMemPoolSetAccess", unsafe {
        sys::cuMemPoolSetAccess(pool, &access, 1)
    })
}

/// An event other processes can open (`CU_EVENT_INTERPROCESS`, no timing) and its handle.
pub(crate) fn ipc_event_create() -> NativeResult<(CUevent, [u8; 64])> {
    let flags =
        sys::CUevent_flags::CU_EVENT_INTERPROCESS as c_uint | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint;
    let mut event: CUevent = ptr::null_mut();
    // SAFETY: the out-pointer is a live local.
    check("cuEventCreate", unsafe { sys::cuEventCreate(&mut event, flags) })?;
    // SAFETY: an all-zero handle is a valid value of this plain byte array struct.
    let mut handle: sys::CUipcEventHandle = unsafe { std::mem::zeroed() };
    // SAFETY: the out-pointer is a live local; `event` was just created with the interprocess flag.
    let got = check("cuIpcGetEventHandle", unsafe {
        sys::cuIpcGetEventHandle(&mut handle, event)
    });
    if let Err(err) = got {
        let _ = event_destroy(event);
        return Err(err);
    }
    Ok((event, handle.reserved.map(|b| b as u8)))
}

/// Opens an interprocess event from its handle; destroy it with `event_destroy`.
pub(crate) fn ipc_event_open(data: &[u8; 64]) -> NativeResult<CUevent> {
    let handle = sys::CUipcEventHandle {
        reserved: data.map(|b| b as std::ffi::c_char),
    };
    let mut event: CUevent = ptr::null_mut();
    // SAFETY: the out-pointer is a live local; the handle is passed by value and validated by the driver.
    check("cuIpcOpenEventHandle", unsafe {
        sys::cuIpcOpenEventHandle(&mut event, handle)
    })?;
    Ok(event)
}

/// Whether `device` can be given access to `peer`'s memory.
pub(crate) fn device_can_access_peer(device: CUdevice, peer: CUdevice) -> NativeResult<bool> {
    let mut can: c_int = 0;
    // SAFETY: the out-pointer is a live local; the driver validates both devices.
    check("cuDeviceCanAccessPeer", unsafe {
        sys::cuDeviceCanAccessPeer(&mut can, device, peer)
    })?;
    Ok(can != 0)
}

/// Gives the current context access to `peer`'s memory; already enabled is success.
pub(crate) fn ctx_enable_peer_access(peer: CUcontext) -> NativeResult<()> {
    // SAFETY: `peer` is a retained primary context, alive while its owner is.
    let status = unsafe { sys::cuCtxEnablePeerAccess(peer, 0) };
    match status {
        CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok(()),
        other => check("cuCtxEnablePeerAccess", other),
    }
}

/// The size of the allocation that starts at `dptr`.
pub(crate) fn mem_get_address_range(dptr: CUdeviceptr) -> NativeResult<u64> {
    let (mut base, mut size): (CUdeviceptr, usize) = (0, 0);
    // SAFETY: the out-pointers are live locals; the driver validates `dptr`.
    check("cuMemGetAddressRange", unsafe {
        sys::cuMemGetAddressRange_v2(&mut base, &mut size, dptr)
    })?;
    Ok((size as u64).saturating_sub(dptr - base))
}
