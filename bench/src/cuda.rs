//! The CUDA backend and the raw driver calls it replaces, measured in the same run
//! through cudarc's `driver::result` layer (the thinnest safe-ish layer over the driver).

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::{sys, CudaContext};
use gpuhal_cuda::{CudaBackend, CudaDevice};
use gpuhal_hal::{AsRegion, Device, MemoryKind, Stream};

use crate::harness::{each_us, ns_per_op, thread_cpu_time, Settings, Summary};
use crate::report::Report;
use crate::suite::{native_row_specs, run_steps, ChurnPlan, Step, SuiteOptions, GRAPH_OPS, HIT_SIZES};

/// Sizes on a GPU: the targets' 1 GiB Device copy; managed buffers of 512 MiB each, so
/// managed memory in use never passes 1 GiB.
pub const OPTIONS: SuiteOptions = SuiteOptions {
    device_copy_bytes: 1 << 30,
    handoff_consumer_bytes: 8 << 20,
    managed_copy_bytes: 512 << 20,
};

/// Bytes each small graph operation touches (as in the gpuhal graph benchmark).
const GRAPH_OP_BYTES: usize = 4096;

/// Opens the gpuhal CUDA device.
pub fn open(ordinal: u32) -> Result<CudaDevice> {
    CudaDevice::open(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
}

fn driver<T>(what: &str, result: std::result::Result<T, DriverError>) -> Result<T> {
    result.map_err(|err| anyhow!("{what}: {err:?}"))
}

/// A raw stream of the baselines, destroyed on drop.
struct RawStream(sys::CUstream);

impl Drop for RawStream {
    fn drop(&mut self) {
        // SAFETY: created by `stream::create`, destroyed only here, after every baseline synchronized its work.
        let _ = unsafe { result::stream::destroy(self.0) };
    }
}

/// Frees of the churn baseline that failed (a failed free cannot be reported from Drop).
static FAILED_FREES: AtomicU64 = AtomicU64::new(0);

/// One `cuMemAllocAsync` allocation, freed with `cuMemFreeAsync` on drop.
struct AsyncAllocation {
    pointer: sys::CUdeviceptr,
    stream: sys::CUstream,
}

impl Drop for AsyncAllocation {
    fn drop(&mut self) {
        // SAFETY: `pointer` came from `malloc_async` on `stream` (which outlives it) and is freed only here.
        if unsafe { result::free_async(self.pointer, self.stream) }.is_err() {
            FAILED_FREES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A `cuMemAlloc` allocation, freed on drop.
struct SyncAllocation(sys::CUdeviceptr);

impl SyncAllocation {
    fn new(bytes: usize) -> Result<Self> {
        // SAFETY: a plain device allocation; the pointer is owned by the returned value.
        driver("cuMemAlloc", unsafe { result::malloc_sync(bytes) }).map(SyncAllocation)
    }
}

impl Drop for SyncAllocation {
    fn drop(&mut self) {
        // SAFETY: from `malloc_sync`, freed only here, after the baselines synchronized the work that used it.
        let _ = unsafe { result::free_sync(self.0) };
    }
}

/// The raw driver baselines, on the device's primary context and a stream of their own.
pub struct Baselines {
    context: Arc<CudaContext>,
    stream: RawStream,
}

impl Baselines {
    /// Retains the primary context of `ordinal`, creates a stream, and sets the default
    /// memory pool's release threshold to the maximum (so `cuMemFreeAsync` keeps memory
    /// for reuse, the fastest configuration of the native stream-ordered allocator).
    pub fn open(ordinal: u32) -> Result<Baselines> {
        // cudarc's loader panics when libcuda is missing; ask first.
        if !gpuhal_cuda::driver_available() {
            return Err(anyhow!("no CUDA driver found: the native baselines need libcuda"));
        }
        let context = driver("retaining the primary context", CudaContext::new(ordinal as usize))?;
        let stream = RawStream(driver(
            "cuStreamCreate",
            result::stream::create(result::stream::StreamKind::NonBlocking),
        )?);
        // SAFETY: the device handle comes from a live context.
        let pool = driver("cuDeviceGetDefaultMemPool", unsafe {
            result::device::get_default_mem_pool(context.cu_device())
        })?;
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the release threshold attribute is a u64, and `threshold` is one.
        driver("setting the pool release threshold", unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast::<c_void>(),
            )
        })?;
        Ok(Baselines { context, stream })
    }

    fn bind(&self) -> Result<()> {
        driver("binding the context", self.context.bind_to_thread())
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the stream is live for as long as `self`.
        driver("cuStreamSynchronize", unsafe {
            result::stream::synchronize(self.stream.0)
        })
    }

    fn alloc_pairs(&self, settings: &Settings, report: &mut Report) -> Result<()> {
        let stream = self.stream.0;
        for (size, suffix, _) in HIT_SIZES {
            let size = size as usize;
            let pair = || -> Result<()> {
                // SAFETY: allocate then free the same pointer on one live stream.
                unsafe {
                    let pointer = driver("cuMemAllocAsync", result::malloc_async(stream, size))?;
                    driver("cuMemFreeAsync", result::free_async(black_box(pointer), stream))
                }
            };
            let summary = ns_per_op(settings, settings.iterations(20_000), 1, |n| {
                let start = Instant::now();
                for _ in 0..n {
                    pair()?;
                }
                let elapsed = start.elapsed();
                self.synchronize()?;
                Ok::<_, anyhow::Error>(elapsed)
            })?;
            put(report, &format!("hit.native.async.{suffix}"), summary, None);

            let summary = ns_per_op(settings, settings.iterations(300), 1, |n| {
                let start = Instant::now();
                for _ in 0..n {
                    drop(black_box(SyncAllocation::new(size)?));
                }
                Ok::<_, anyhow::Error>(start.elapsed())
            })?;
            put(report, &format!("hit.native.sync.{suffix}"), summary, None);
        }
        Ok(())
    }

    fn churn(&self, settings: &Settings, report: &mut Report) -> Result<()> {
        let stream = self.stream.0;
        FAILED_FREES.store(0, Ordering::Relaxed);
        let summary = ChurnPlan::random(0x5EED).run(settings, settings.iterations(20_000), |size| {
            // SAFETY: a stream-ordered allocation on a live stream, owned by the returned value.
            let pointer = driver("cuMemAllocAsync", unsafe {
                result::malloc_async(stream, size as usize)
            })?;
            Ok(AsyncAllocation { pointer, stream })
        })?;
        self.synchronize()?;
        let failed = FAILED_FREES.load(Ordering::Relaxed);
        let note = (failed > 0).then(|| format!("{failed} cuMemFreeAsync calls failed"));
        put(report, "churn.native.async.random", summary, note);
        Ok(())
    }

    fn events(&self, settings: &Settings, report: &mut Report) -> Result<()> {
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let summary = ns_per_op(settings, settings.iterations(20_000), 1, |n| {
            let start = Instant::now();
            for _ in 0..n {
                let event = driver("cuEventCreate", result::event::create(flags))?;
                // SAFETY: the event was just created and is not used again.
                driver("cuEventDestroy", unsafe { result::event::destroy(black_box(event)) })?;
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        })?;
        put(report, "event.native.create_destroy", summary, None);

        let event = driver("cuEventCreate", result::event::create(flags))?;
        let recorded = ns_per_op(settings, settings.iterations(50_000), 1, |n| {
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: the event and the stream are live until after the loop.
                driver("cuEventRecord", unsafe { result::event::record(event, self.stream.0) })?;
            }
            let elapsed = start.elapsed();
            self.synchronize()?;
            Ok::<_, anyhow::Error>(elapsed)
        });
        // SAFETY: the stream was synchronized; the event is not used again.
        let destroyed = unsafe { result::event::destroy(event) };
        put(report, "event.native.record", recorded?, None);
        driver("cuEventDestroy", destroyed)
    }

    /// Enqueues the graph benchmark's 100 small ops: fills and copies of 4 KiB.
    fn small_ops(&self, buffer: sys::CUdeviceptr) -> Result<()> {
        for op in 0..GRAPH_OPS {
            let at = buffer + (op * GRAPH_OP_BYTES) as u64;
            // SAFETY: every range lies inside `buffer` (GRAPH_OPS × GRAPH_OP_BYTES), which outlives the work.
            unsafe {
                if op % 2 == 0 {
                    driver(
                        "cuMemsetD8Async",
                        result::memset_d8_async(at, op as u8, GRAPH_OP_BYTES, self.stream.0),
                    )?;
                } else {
                    let from = at - GRAPH_OP_BYTES as u64;
                    driver(
                        "cuMemcpyDtoDAsync",
                        result::memcpy_dtod_async(at, from, GRAPH_OP_BYTES, self.stream.0),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn graphs(&self, settings: &Settings, report: &mut Report) -> Result<()> {
        let buffer = SyncAllocation::new(GRAPH_OPS * GRAPH_OP_BYTES)?;
        // SAFETY: capture on a live stream that no other thread uses.
        driver("cuStreamBeginCapture", unsafe {
            result::stream::begin_capture(
                self.stream.0,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })?;
        let captured = self.small_ops(buffer.0);
        // SAFETY: ends the capture begun above, whatever the ops returned.
        let graph = driver("cuStreamEndCapture", unsafe {
            result::stream::end_capture(self.stream.0)
        });
        captured?;
        let graph = graph?;
        // SAFETY: the graph was just captured.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        let exec = match exec {
            Ok(exec) => exec,
            Err(err) => {
                // SAFETY: the graph is not used again.
                let _ = unsafe { result::graph::destroy(graph) };
                return Err(anyhow!("cuGraphInstantiate: {err:?}"));
            }
        };
        let samples = settings.samples(500);
        let warmup = settings.samples(20);
        let cpu_of = |submit: &dyn Fn() -> Result<()>| {
            each_us(warmup, samples, || {
                let start = thread_cpu_time();
                submit()?;
                let spent = thread_cpu_time().saturating_sub(start);
                self.synchronize()?;
                Ok::<_, anyhow::Error>(spent)
            })
        };
        let eager = cpu_of(&|| self.small_ops(buffer.0));
        // SAFETY: exec and stream are live until after the measurement.
        let replay = cpu_of(&|| driver("cuGraphLaunch", unsafe { result::graph::launch(exec, self.stream.0) }));
        let synced = self.synchronize();
        // SAFETY: the stream is synchronized; neither handle is used again.
        unsafe {
            let _ = result::graph::exec_destroy(exec);
            let _ = result::graph::destroy(graph);
        }
        synced?;
        put(report, "graph.native.eager", eager?, None);
        put(report, "graph.native.replay", replay?, None);
        Ok(())
    }

    fn bandwidth(
        &self,
        device: &CudaDevice,
        settings: &Settings,
        options: &SuiteOptions,
        report: &mut Report,
    ) -> Result<()> {
        let size = settings.bytes(options.device_copy_bytes, 1 << 20);
        let copies = settings.iterations(5);
        let rate = |dst: sys::CUdeviceptr, src: sys::CUdeviceptr| -> Result<Summary> {
            let ns = ns_per_op(settings, copies, 1, |n| {
                self.synchronize()?;
                let start = Instant::now();
                for _ in 0..n {
                    // SAFETY: both ranges are `size` bytes of live device memory outliving the synchronize below.
                    driver("cuMemcpyDtoDAsync", unsafe {
                        result::memcpy_dtod_async(dst, src, size as usize, self.stream.0)
                    })?;
                }
                self.synchronize()?;
                Ok::<_, anyhow::Error>(start.elapsed())
            })?;
            Ok(ns.inverted(|ns| size as f64 / ns))
        };
        {
            let (src, dst) = (SyncAllocation::new(size as usize)?, SyncAllocation::new(size as usize)?);
            // SAFETY: `src` is `size` bytes of live device memory.
            driver("cuMemsetD8Async", unsafe {
                result::memset_d8_async(src.0, 0x5A, size as usize, self.stream.0)
            })?;
            put(report, "bw.native.raw", rate(dst.0, src.0)?, None);
            self.synchronize()?;
        }
        let stream = device.create_stream()?;
        let src = device.allocate(size, MemoryKind::Device, &stream)?;
        let dst = device.allocate(size, MemoryKind::Device, &stream)?;
        stream.fill(&src, 0, size, 0x5A)?;
        // The raw stream is about to use memory allocated in order on gpuhal's stream.
        stream.synchronize()?;
        let measured = rate(dst.region().address, src.region().address);
        self.synchronize()?;
        put(report, "bw.native.gpuhal_ptrs", measured?, None);
        drop((src, dst));
        stream.synchronize()?;
        device.allocator().trim();
        Ok(())
    }
}

/// The event target's overhead measured pair by pair: each batch times N gpuhal cycles
/// (acquire + record + release) and then N bare `cuEventRecord` of one raw event on the
/// same native stream, and the row is the median of the per-batch differences. The two
/// loops separately drift by more than the 30 ns budget over a run (the bare record's own
/// median moved between 150 and 340 ns from run to run on the H200 host), so only a
/// difference taken batch by batch, on the same stream at the same moment, can judge it.
fn paired_event_overhead(device: &CudaDevice, settings: &Settings, report: &mut Report) -> Result<()> {
    use gpuhal_hal::Event as _;
    let stream = device.create_stream()?;
    let raw_stream = stream.raw();
    let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
    let raw_event = driver("cuEventCreate", result::event::create(flags))?;
    for _ in 0..16 {
        device.event(false)?.record(&stream)?;
    }
    let iterations = settings.iterations(20_000);
    let batch = || -> Result<f64> {
        let start = Instant::now();
        for _ in 0..iterations {
            let event = device.event(false)?;
            event.record(&stream)?;
            drop(black_box(event));
        }
        let cycle = start.elapsed();
        stream.synchronize()?;
        let start = Instant::now();
        for _ in 0..iterations {
            // SAFETY: the event and the stream are live until after the loop.
            driver("cuEventRecord", unsafe { result::event::record(raw_event, raw_stream) })?;
        }
        let bare = start.elapsed();
        stream.synchronize()?;
        Ok((cycle.as_nanos() as f64 - bare.as_nanos() as f64) / iterations.max(1) as f64)
    };
    let measured = (|| {
        for _ in 0..settings.warmup_batches() {
            batch()?;
        }
        let values = (0..settings.batches()).map(|_| batch()).collect::<Result<Vec<f64>>>()?;
        Ok::<_, anyhow::Error>(Summary::of(&values).unwrap_or(Summary::single(f64::NAN)))
    })();
    // SAFETY: every batch synchronized the stream; the event is not used again.
    let destroyed = unsafe { result::event::destroy(raw_event) };
    put(report, "event.paired.overhead", measured?, None);
    driver("cuEventDestroy", destroyed)
}

/// Adds native row `id` with its label from [`native_row_specs`].
fn put(report: &mut Report, id: &str, summary: Summary, note: Option<String>) {
    let specs = native_row_specs(&OPTIONS);
    let (group, label, unit) = specs
        .iter()
        .find(|(spec_id, ..)| spec_id == id)
        .map_or(("native", id.to_string(), ""), |(_, group, label, unit)| {
            (*group, label.clone(), *unit)
        });
    match note {
        Some(note) => report.measured_with_note(id, group, &label, unit, summary, note),
        None => report.measured(id, group, &label, unit, summary),
    }
}

impl crate::Baselines<CudaBackend> for Baselines {
    fn run(&self, device: &CudaDevice, settings: &Settings, options: &SuiteOptions, report: &mut Report) -> Result<()> {
        self.bind()?;
        let steps: [Step; 6] = [
            ("cache-hit (native)", &|r| self.alloc_pairs(settings, r)),
            ("churn (native)", &|r| self.churn(settings, r)),
            ("events (native)", &|r| self.events(settings, r)),
            ("events (paired)", &|r| paired_event_overhead(device, settings, r)),
            ("graph replay (native)", &|r| self.graphs(settings, r)),
            ("bandwidth (native)", &|r| self.bandwidth(device, settings, options, r)),
        ];
        run_steps(&steps, settings, report, "baseline")
    }
}
