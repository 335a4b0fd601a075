//! A kernel of your own, launched on gpuhal streams over gpuhal buffers, and a hand-off of
//! its output to a second stream by an event and `record_use`.
//!
//! `cargo run --example cuda_kernel --features cuda`. The kernel is PTX written by hand
//! (what `nvcc --ptx` or a JIT would give you), loaded with cudarc's driver API into the
//! context gpuhal opened, and launched on `CudaStream::raw()`, so it is ordered with
//! everything gpuhal enqueues on that stream. With no NVIDIA driver it says so and exits
//! successfully (`GPUHAL_REQUIRE_GPU=1` makes that a failure).

use std::error::Error;
use std::ffi::{c_void, CStr, CString};
use std::process::ExitCode;

use cudarc::driver::{result, sys};
use gpuhal::cuda::{driver_available, CudaBackend, CudaDevice, CudaStream};
use gpuhal::{Buffer, Device, Event, MemoryKind, Stream};

/// `scale_add(x, y, out, n, a)`: `out[i] = a * x[i] + y[i]` over `n` f32s, grid-stride.
const PTX: &CStr = c"
.version 7.0
.target sm_50
.address_size 64

.visible .entry scale_add(
    .param .u64 param_x,
    .param .u64 param_y,
    .param .u64 param_out,
    .param .u64 param_n,
    .param .f32 param_a
)
{
    .reg .pred %p<2>;
    .reg .f32 %f<5>;
    .reg .b32 %r<5>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [param_x];
    ld.param.u64 %rd2, [param_y];
    ld.param.u64 %rd3, [param_out];
    ld.param.u64 %rd4, [param_n];
    ld.param.f32 %f1, [param_a];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    cvt.u64.u32 %rd5, %r3;
    mad.wide.u32 %rd5, %r1, %r2, %rd5;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd6, %r4, %r2;
LOOP:
    setp.ge.u64 %p1, %rd5, %rd4;
    @%p1 bra DONE;
    shl.b64 %rd7, %rd5, 2;
    add.s64 %rd8, %rd1, %rd7;
    ld.global.f32 %f2, [%rd8];
    add.s64 %rd8, %rd2, %rd7;
    ld.global.f32 %f3, [%rd8];
    fma.rn.f32 %f4, %f1, %f2, %f3;
    add.s64 %rd9, %rd3, %rd7;
    st.global.f32 [%rd9], %f4;
    add.s64 %rd5, %rd5, %rd6;
    bra.uni LOOP;
DONE:
    ret;
}
";

const THREADS: u32 = 256;
const BLOCKS: u32 = 1024;

/// The loaded module and its kernel. Load and drop it with the device's context current
/// (`CudaDevice::bind`).
struct ScaleAdd {
    module: sys::CUmodule,
    function: sys::CUfunction,
}

impl ScaleAdd {
    fn load() -> Result<ScaleAdd, Box<dyn Error>> {
        // SAFETY: `PTX` is NUL-terminated and lives for the program; the driver copies it.
        let module = unsafe { result::module::load_data(PTX.as_ptr().cast()) }.map_err(failed("cuModuleLoadData"))?;
        // SAFETY: `module` was just loaded and is not unloaded before this returns.
        match unsafe { result::module::get_function(module, CString::new("scale_add")?) } {
            Ok(function) => Ok(ScaleAdd { module, function }),
            Err(error) => {
                // SAFETY: loaded above and not used after this.
                let _ = unsafe { result::module::unload(module) };
                Err(failed("cuModuleGetFunction")(error))
            }
        }
    }

    /// Enqueues `out = a * x + y` over `n` f32s on `stream`.
    fn launch(
        &self,
        stream: &CudaStream,
        x: &Buffer<CudaBackend>,
        y: &Buffer<CudaBackend>,
        out: &Buffer<CudaBackend>,
        n: u64,
        a: f32,
    ) -> Result<(), Box<dyn Error>> {
        // The kernel cannot check bounds: check them here.
        if [x, y, out].iter().any(|buffer| buffer.len() < n * 4) {
            return Err(format!("scale_add over {n} f32s needs buffers of at least {} bytes", n * 4).into());
        }
        let (mut x, mut y, mut out, mut n, mut a) = (x.address(), y.address(), out.address(), n, a);
        let mut params: [*mut c_void; 5] = [
            (&raw mut x).cast(),
            (&raw mut y).cast(),
            (&raw mut out).cast(),
            (&raw mut n).cast(),
            (&raw mut a).cast(),
        ];
        // SAFETY: `function` is live; each parameter points at a local of the type the PTX
        // declares (u64, u64, u64, u64, f32), which the driver copies before returning; the
        // three ranges were checked above and are live buffers of this device.
        unsafe {
            result::launch_kernel(
                self.function,
                (BLOCKS, 1, 1),
                (THREADS, 1, 1),
                0,
                stream.raw(),
                &mut params,
            )
        }
        .map_err(failed("cuLaunchKernel"))
    }
}

impl Drop for ScaleAdd {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by `load` and is unloaded once; work already
        // enqueued that uses it was synchronised by the caller's read.
        let _ = unsafe { result::module::unload(self.module) };
    }
}

/// Names the driver call that failed, with the driver's error.
fn failed(call: &'static str) -> impl Fn(result::DriverError) -> Box<dyn Error> {
    move |error| format!("{call} failed: {error:?}").into()
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn run() -> Result<(), Box<dyn Error>> {
    let device = CudaDevice::open(0)?;
    // cudarc's calls below act on the current context: make it gpuhal's.
    device.bind()?;
    let kernel = ScaleAdd::load()?;
    let (producer, consumer) = (device.create_stream()?, device.create_stream()?);

    let n: u64 = 1 << 20;
    let bytes = n * 4;
    let x = device.allocate(bytes, MemoryKind::Device, &producer)?;
    let y = device.allocate(bytes, MemoryKind::Device, &producer)?;
    let out = device.allocate(bytes, MemoryKind::Device, &producer)?;
    producer.write(&x, 0, &f32_bytes((0..n).map(|i| (i % 1000) as f32)))?;
    producer.write(&y, 0, &f32_bytes((0..n).map(|_| 1.0)))?;
    kernel.launch(&producer, &x, &y, &out, n, 2.0)?; // out = 2x + 1

    // Hand `out` and `x` to the consumer: the event orders its work after the producer's,
    // and `record_use` keeps their memory from being handed out again (to the producer's
    // next allocation, say) before the consumer's work has run.
    let ready = device.event(false)?;
    ready.record(&producer)?;
    consumer.wait_event(&ready)?;
    out.record_use(consumer.cache());
    x.record_use(consumer.cache());
    let result = device.allocate(bytes, MemoryKind::Device, &consumer)?;
    kernel.launch(&consumer, &out, &x, &result, n, 0.5)?; // result = 0.5 (2x + 1) + x = 2x + 0.5
    drop((out, x)); // safe with the consumer still running: the pool waits for it

    let mut host = vec![0; bytes as usize];
    consumer.read(&result, 0, &mut host)?;
    let wrong = host
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, chunk)| {
            let value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            value != 2.0 * (*i as u64 % 1000) as f32 + 0.5
        })
        .count();
    if wrong > 0 {
        return Err(format!("{wrong} of {n} results are wrong").into());
    }
    let stats = device.memory_stats();
    println!(
        "cuda_kernel on {}: {n} results of scale_add on two streams correct; live {} bytes, reserved {} bytes",
        device.info().name,
        stats.live_bytes,
        stats.reserved_bytes
    );
    Ok(())
}

fn main() -> ExitCode {
    if !driver_available() {
        if std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|value| value == "1") {
            eprintln!("cuda_kernel: GPUHAL_REQUIRE_GPU=1, but no NVIDIA driver was found");
            return ExitCode::FAILURE;
        }
        println!("cuda_kernel needs an NVIDIA GPU and driver, and found no driver: nothing to run");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cuda_kernel: {error}");
            ExitCode::FAILURE
        }
    }
}
