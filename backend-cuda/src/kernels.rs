//! Small fills and copies as kernels of gpuhal's own.
//!
//! A captured `cuMemsetD8Async` or `cuMemcpyAsync` becomes a memset or memcpy graph node,
//! and `cuGraphLaunch` pays for those per node (about 0.75 µs each on an H100 with driver
//! 580), so a replay of 100 small ops saved only ~4x of the CPU time of issuing them
//! eagerly. Kernel nodes are much cheaper to launch from a graph (straight-line graphs of
//! kernels launch in near-constant time on recent drivers). Ops up to
//! [`SMALL_OP_LIMIT`] bytes on a capturing stream, which are bound by launch cost rather
//! than bandwidth, go through the two byte-wise kernels below; larger ones keep the copy
//! engines' memset and memcpy, which run at full bandwidth. Eager ops keep memset and
//! memcpy at every size: issued one by one, a kernel launch costs more CPU than they do.
//!
//! The kernels ship as PTX text, compiled by the driver for whatever device it runs on,
//! so nothing needs a CUDA toolkit at build time. If the driver cannot load them, streams
//! fall back to memset and memcpy for every size.

use std::ffi::{c_void, CStr};

use gpuhal_hal::NativeError;

use crate::error::NativeResult;
use crate::raw::{self, CUdeviceptr, CUfunction, CUmodule, CUstream};

/// Largest fill or copy, in bytes, that a capturing stream records as a kernel of
/// gpuhal's rather than as a memset/memcpy node.
pub const SMALL_OP_LIMIT: u64 = 64 << 10;

/// Threads per block of both kernels.
const THREADS: u32 = 256;

/// `gpuhal_fill_bytes(dst, len, value)` and `gpuhal_copy_bytes(dst, src, len)`: one byte
/// per thread, grid-stride. PTX ISA 7.0 for `sm_50` and newer, which every driver gpuhal
/// supports can compile.
const PTX: &CStr = c"
.version 7.0
.target sm_50
.address_size 64

.visible .entry gpuhal_fill_bytes(
    .param .u64 param_dst,
    .param .u64 param_len,
    .param .u32 param_value
)
{
    .reg .pred %p<2>;
    .reg .b16 %rs<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<6>;

    ld.param.u64 %rd1, [param_dst];
    ld.param.u64 %rd2, [param_len];
    ld.param.u32 %r1, [param_value];
    cvt.u16.u32 %rs1, %r1;
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    cvt.u64.u32 %rd3, %r4;
    mad.wide.u32 %rd3, %r2, %r3, %rd3;
    mov.u32 %r5, %nctaid.x;
    mul.wide.u32 %rd4, %r5, %r3;
FILL_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra FILL_DONE;
    add.s64 %rd5, %rd1, %rd3;
    st.global.u8 [%rd5], %rs1;
    add.s64 %rd3, %rd3, %rd4;
    bra.uni FILL_LOOP;
FILL_DONE:
    ret;
}

.visible .entry gpuhal_copy_bytes(
    .param .u64 param_dst,
    .param .u64 param_src,
    .param .u64 param_len
)
{
    .reg .pred %p<2>;
    .reg .b16 %rs<2>;
    .reg .b32 %r<5>;
    .reg .b64 %rd<9>;

    ld.param.u64 %rd1, [param_dst];
    ld.param.u64 %rd2, [param_src];
    ld.param.u64 %rd3, [param_len];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    cvt.u64.u32 %rd4, %r3;
    mad.wide.u32 %rd4, %r1, %r2, %rd4;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd5, %r4, %r2;
COPY_LOOP:
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra COPY_DONE;
    add.s64 %rd6, %rd2, %rd4;
    ld.global.u8 %rs1, [%rd6];
    add.s64 %rd7, %rd1, %rd4;
    st.global.u8 [%rd7], %rs1;
    add.s64 %rd4, %rd4, %rd5;
    bra.uni COPY_LOOP;
COPY_DONE:
    ret;
}
";

/// The loaded module and its two kernels, for one context. Unloaded by the context
/// that owns it, after every stream and graph using it is gone.
pub(crate) struct SmallOpKernels {
    module: CUmodule,
    fill: CUfunction,
    copy: CUfunction,
}

// SAFETY: module and function handles are usable from any thread; only thread-safe driver calls receive them.
unsafe impl Send for SmallOpKernels {}
// SAFETY: as above.
unsafe impl Sync for SmallOpKernels {}

impl SmallOpKernels {
    /// Loads the kernels into the current context.
    pub(crate) fn load() -> NativeResult<SmallOpKernels> {
        let module = raw::module_load_data(PTX)?;
        let functions = raw::module_get_function(module, c"gpuhal_fill_bytes")
            .and_then(|fill| Ok((fill, raw::module_get_function(module, c"gpuhal_copy_bytes")?)));
        match functions {
            Ok((fill, copy)) => Ok(SmallOpKernels { module, fill, copy }),
            Err(err) => {
                // The lookup's error is the one to report.
                let _ = raw::module_unload(module);
                Err(err)
            }
        }
    }

    /// Whether an op of `len` bytes should go through a kernel.
    #[inline]
    pub(crate) fn takes(len: u64) -> bool {
        len <= SMALL_OP_LIMIT
    }

    /// Sets `len` (≤ [`SMALL_OP_LIMIT`]) bytes at `dst` to `value`, in stream order.
    pub(crate) fn fill(&self, dst: CUdeviceptr, len: u64, value: u8, stream: CUstream) -> NativeResult<()> {
        let (mut dst, mut len, mut value) = (dst, len, u32::from(value));
        let mut params: [*mut c_void; 3] = [(&raw mut dst).cast(), (&raw mut len).cast(), (&raw mut value).cast()];
        raw::launch_kernel(self.fill, blocks_for(len)?, THREADS, stream, &mut params)
    }

    /// Copies `len` (≤ [`SMALL_OP_LIMIT`]) bytes from `src` to `dst`, in stream order.
    pub(crate) fn copy(&self, dst: CUdeviceptr, src: CUdeviceptr, len: u64, stream: CUstream) -> NativeResult<()> {
        let (mut dst, mut src, mut len) = (dst, src, len);
        let mut params: [*mut c_void; 3] = [(&raw mut dst).cast(), (&raw mut src).cast(), (&raw mut len).cast()];
        raw::launch_kernel(self.copy, blocks_for(len)?, THREADS, stream, &mut params)
    }

    /// Unloads the module; the context must be current.
    pub(crate) fn unload(&self) -> NativeResult<()> {
        raw::module_unload(self.module)
    }
}

/// One thread per byte, for ops up to [`SMALL_OP_LIMIT`].
fn blocks_for(len: u64) -> NativeResult<u32> {
    if len > SMALL_OP_LIMIT {
        return Err(NativeError {
            call: "cuLaunchKernel",
            code: -1,
            name: format!("SMALL_OP_TOO_LARGE ({len} bytes > {SMALL_OP_LIMIT})"),
        });
    }
    Ok(len.div_ceil(u64::from(THREADS)).max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_per_byte_up_to_the_limit() {
        assert_eq!(blocks_for(1).ok(), Some(1));
        assert_eq!(blocks_for(256).ok(), Some(1));
        assert_eq!(blocks_for(257).ok(), Some(2));
        assert_eq!(blocks_for(SMALL_OP_LIMIT).ok(), Some((SMALL_OP_LIMIT / 256) as u32));
        assert!(blocks_for(SMALL_OP_LIMIT + 1).is_err());
        assert!(SmallOpKernels::takes(4096) && !SmallOpKernels::takes(SMALL_OP_LIMIT + 1));
    }
}
