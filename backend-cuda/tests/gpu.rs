//! Tests on a real GPU.
//!
//! With no CUDA driver every GPU test is reported as ignored, with the reason ("skipped:
//! no CUDA driver found"), so `cargo test` stays green on machines without a GPU and never
//! counts a test that did not run as passed. Set `GPUHAL_REQUIRE_GPU=1` on a GPU host: a
//! missing driver then fails every test instead, so a run there cannot pass vacuously.

use std::time::{Duration, Instant};

use gpuhal_cuda::{driver_available, CudaBackend, CudaDevice};
use gpuhal_hal::{
    Advice, AsRegion, Capabilities, Device, Error, Event, Fence, Graph, GraphExec, ImportPath, ImportPolicy, Location,
    ManagedPolicy, MemoryKind, Stream,
};

/// The device under test. Only GPU tests call it, and the harness runs those only where a
/// driver was found or `GPUHAL_REQUIRE_GPU=1` demands one (see [`skip_reason`]), so a
/// missing driver here is a failure, said plainly.
fn device() -> CudaDevice {
    match CudaDevice::open(0) {
        Ok(device) => device,
        Err(err) => panic!("GPUHAL_REQUIRE_GPU=1 or a driver was found, but CUDA device 0 did not open: {err}"),
    }
}

fn open_without_driver_is_an_error_not_a_panic() {
    match CudaDevice::open(0) {
        Ok(device) => {
            assert!(driver_available());
            eprintln!("driver present: {:?}", device.info());
        }
        Err(err) => {
            assert!(!driver_available());
            let text = err.to_string();
            assert!(text.contains("CUDA driver"), "unclear error: {text}");
            eprintln!("no driver, as reported: {text}");
        }
    }
}

fn gpu_device_reports_capabilities_from_attributes() {
    let device = device();
    let caps = device.capabilities();
    eprintln!(
        "{:?}\ndriver {:?}\n{:?}\n{caps:?}",
        device.info(),
        gpuhal_cuda::driver_version(),
        device.attributes()
    );
    assert_eq!(device.info().backend, "cuda");
    assert!(caps.contains(Capabilities::GRAPHS));
    let (free, total) = device.memory_info().unwrap();
    assert!(free > 0 && free <= total && total == device.info().total_memory);
    assert!(CudaDevice::open(1000).is_err());
}

fn gpu_device_memory_round_trip_and_caching() {
    let device = device();
    let stream = device.create_stream().unwrap();
    for &len in &[1u64, 255, 4096, 1 << 20, (3 << 20) + 17] {
        let a = device.allocate(len, MemoryKind::Device, &stream).unwrap();
        let b = device.allocate(len, MemoryKind::Device, &stream).unwrap();
        assert_eq!(a.address() % 256, 0);
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        stream.write(&a, 0, &data).unwrap();
        stream.copy(&a, 0, &b, 0, len).unwrap();
        let mut out = vec![0u8; len as usize];
        stream.read(&b, 0, &mut out).unwrap();
        assert_eq!(out, data, "round trip of {len} bytes");
        stream.fill(&b, 0, len, 0xAB).unwrap();
        stream.read(&b, 0, &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0xAB));
    }
    drop(device.allocate(1 << 20, MemoryKind::Device, &stream).unwrap());
    let before = device.memory_stats();
    for _ in 0..100 {
        let a = device.allocate(1 << 20, MemoryKind::Device, &stream).unwrap();
        drop(a);
    }
    let after = device.memory_stats();
    assert_eq!(
        after.native_allocations, before.native_allocations,
        "the hit path called the driver"
    );
    assert!(after.cache_hits >= before.cache_hits + 100);
    // Zero-size buffers and bounds.
    let empty = device.allocate(0, MemoryKind::Device, &stream).unwrap();
    assert_eq!(empty.address(), 0);
    let small = device.allocate(16, MemoryKind::Device, &stream).unwrap();
    assert!(matches!(
        stream.write(&small, 8, &[0; 16]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(device.allocator().trim() > 0);
}

/// The types of a captured graph's nodes, through the driver directly.
fn node_types(graph: &gpuhal_cuda::CudaGraph) -> Vec<cudarc::driver::sys::CUgraphNodeType> {
    use cudarc::driver::sys;
    let mut count = 0usize;
    // SAFETY: the graph is live; a null node array asks for the count only.
    let status = unsafe { sys::cuGraphGetNodes(graph.raw(), std::ptr::null_mut(), &mut count) };
    assert_eq!(status, sys::CUresult::CUDA_SUCCESS, "cuGraphGetNodes (count)");
    let mut nodes = vec![std::ptr::null_mut(); count];
    // SAFETY: `nodes` has room for `count` handles.
    let status = unsafe { sys::cuGraphGetNodes(graph.raw(), nodes.as_mut_ptr(), &mut count) };
    assert_eq!(status, sys::CUresult::CUDA_SUCCESS, "cuGraphGetNodes");
    nodes
        .iter()
        .map(|&node| {
            let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: `node` belongs to the live graph; `kind` is a live out-pointer.
            let status = unsafe { sys::cuGraphNodeGetType(node, &mut kind) };
            assert_eq!(status, sys::CUresult::CUDA_SUCCESS, "cuGraphNodeGetType");
            kind
        })
        .collect()
}

/// Copies `len` bytes from offset 3 of `src` to offset 5 of `dst` (prefilled with 0xEE),
/// then fills `len` bytes from offset 1 of `dst` with 0x5A, eagerly or through a captured
/// and replayed graph, checking every byte of `dst` after each step.
fn check_small_ops(device: &CudaDevice, stream: &gpuhal_cuda::CudaStream, len: u64, captured: bool) {
    use cudarc::driver::sys::CUgraphNodeType as Node;
    let how = if captured { "captured" } else { "eager" };
    let limit = gpuhal_cuda::SMALL_OP_LIMIT;
    let total = len + 64;
    let src = device.allocate(total, MemoryKind::Device, stream).unwrap();
    let dst = device.allocate(total, MemoryKind::Device, stream).unwrap();
    let pattern: Vec<u8> = (0..total).map(|i| (i * 31 + 7) as u8).collect();
    stream.write(&src, 0, &pattern).unwrap();
    stream.fill(&dst, 0, total, 0xEE).unwrap();
    let pool = device.graph_pool();
    // Runs one op, directly or as a one-node graph whose node type is checked.
    let run = |op: &dyn Fn(&gpuhal_cuda::CudaStream) -> gpuhal_hal::Result<()>, large: Node| {
        if !captured {
            op(stream).unwrap();
            return;
        }
        let (graph, ()) = stream.capture(&pool, |s| op(s)).unwrap();
        let expected = if len <= limit {
            Node::CU_GRAPH_NODE_TYPE_KERNEL
        } else {
            large
        };
        assert_eq!(node_types(&graph), vec![expected], "{how} op of {len} bytes");
        graph.instantiate().unwrap().launch(stream).unwrap();
    };
    run(&|s| s.copy(&src, 3, &dst, 5, len), Node::CU_GRAPH_NODE_TYPE_MEMCPY);
    let mut out = vec![0u8; total as usize];
    stream.read(&dst, 0, &mut out).unwrap();
    for (i, &byte) in out.iter().enumerate() {
        let i = i as u64;
        let expected = if (5..5 + len).contains(&i) {
            pattern[(i - 2) as usize]
        } else {
            0xEE
        };
        assert_eq!(byte, expected, "{how} copy of {len} bytes: byte {i}");
    }
    let before = out.clone();
    run(&|s| s.fill(&dst, 1, len, 0x5A), Node::CU_GRAPH_NODE_TYPE_MEMSET);
    stream.read(&dst, 0, &mut out).unwrap();
    let end = len as usize + 1;
    assert_eq!(out[0], before[0], "{how} fill of {len} bytes wrote before its start");
    assert!(out[1..end].iter().all(|&b| b == 0x5A), "{how} fill of {len} bytes");
    assert_eq!(
        out[end..],
        before[end..],
        "{how} fill of {len} bytes wrote past its end"
    );
}

/// Small fills and copies are exact whether issued eagerly (memset/memcpy) or captured
/// (gpuhal's kernels, as kernel nodes), on both sides of the size limit.
fn gpu_small_fills_and_copies_go_through_kernels_and_stay_exact() {
    let device = device();
    assert!(
        device.small_op_kernels_error().is_none(),
        "the small-op kernels did not load: {:?}",
        device.small_op_kernels_error()
    );
    let stream = device.create_stream().unwrap();
    let limit = gpuhal_cuda::SMALL_OP_LIMIT;
    // Sizes on both sides of the kernel/memset boundary and of a thread block, at odd
    // offsets, so a kernel that writes a byte too many or too few shows up.
    for &len in &[1u64, 255, 256, 257, 4099, limit - 1, limit, limit + 1, 3 * limit + 5] {
        check_small_ops(&device, &stream, len, false);
        check_small_ops(&device, &stream, len, true);
    }
}

fn gpu_out_of_memory_is_an_error_with_stats() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let huge = device.info().total_memory * 4;
    match device.allocate(huge, MemoryKind::Device, &stream) {
        Err(err @ Error::OutOfMemory { .. }) => eprintln!("as expected: {err}"),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(device.memory_stats().oom_retries >= 1);
    // Still usable.
    let b = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    stream.fill(&b, 0, 4096, 1).unwrap();
    stream.synchronize().unwrap();
}

fn gpu_pinned_and_managed_memory() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let pinned = device.allocate(1 << 16, MemoryKind::HostPinned, &stream).unwrap();
    stream.fill(&pinned, 0, 1 << 16, 9).unwrap();
    let mut out = vec![0u8; 1 << 16];
    stream.read(&pinned, 0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 9));

    if !device.capabilities().contains(Capabilities::MANAGED_ADVICE) {
        eprintln!("skipped managed part: no MANAGED_ADVICE");
        return;
    }
    // Default policy: prefer device, accessed by host, prefetched (small).
    let managed = device.allocate(4 << 20, MemoryKind::Managed, &stream).unwrap();
    stream.synchronize().unwrap();
    let info = device.managed_range_info(&managed).unwrap();
    eprintln!("default policy: {info:?}");
    assert!(info.advice.contains(Advice::PREFER_DEVICE | Advice::ACCESSED_BY_HOST));
    assert_eq!(info.last_prefetch, Some(Location::Device));
    stream.fill(&managed, 0, 4 << 20, 5).unwrap();
    let mut out = vec![0u8; 4 << 20];
    stream.read(&managed, 100, &mut out[..1000]).unwrap();
    assert!(out[..1000].iter().all(|&x| x == 5));

    // No prefetch under a zero threshold; advice on demand.
    device.set_managed_policy(ManagedPolicy {
        prefetch_below: 0,
        ..ManagedPolicy::default()
    });
    let lazy = device.allocate(8 << 20, MemoryKind::Managed, &stream).unwrap();
    assert_eq!(device.managed_range_info(&lazy).unwrap().last_prefetch, None);
    device
        .advise(&lazy, Advice::READ_MOSTLY | Advice::ACCESSED_BY_DEVICE)
        .unwrap();
    device.prefetch(&lazy, Location::Host, &stream).unwrap();
    stream.synchronize().unwrap();
    let info = device.managed_range_info(&lazy).unwrap();
    eprintln!("after advise + prefetch to host: {info:?}");
    assert!(info.advice.contains(Advice::READ_MOSTLY | Advice::ACCESSED_BY_DEVICE));
    assert_eq!(info.last_prefetch, Some(Location::Host));
    let device_buffer = device.allocate(64, MemoryKind::Device, &stream).unwrap();
    assert!(matches!(
        device.advise(&device_buffer, Advice::READ_MOSTLY),
        Err(Error::InvalidArgument { .. })
    ));

    // The oversubscription guard refuses before the driver is asked.
    let (free, _) = device.memory_info().unwrap();
    let err = device
        .allocate(free + (1 << 30), MemoryKind::Managed, &stream)
        .unwrap_err();
    eprintln!("oversubscription guard: {err}");
    assert!(err.to_string().contains("free"), "{err}");
    device.set_managed_policy(ManagedPolicy::default());
}

fn gpu_events_pool_and_order_streams() {
    let device = device();
    let a = device.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let buffer = device.allocate(1 << 20, MemoryKind::Device, &a).unwrap();
    let out = device.allocate(1 << 20, MemoryKind::Device, &b).unwrap();
    // Warm up, then a loop that records and waits creates no native events.
    for _ in 0..4 {
        let e = device.event(false).unwrap();
        e.record(&a).unwrap();
        b.wait_event(&e).unwrap();
    }
    let created = device.event_stats().native_created;
    for i in 0..200u32 {
        a.fill(&buffer, 0, 1 << 20, i as u8).unwrap();
        let e = device.event(false).unwrap();
        e.record(&a).unwrap();
        b.wait_event(&e).unwrap();
        buffer.record_use(b.cache());
        b.copy(&buffer, 0, &out, 0, 1 << 20).unwrap();
    }
    assert_eq!(
        device.event_stats().native_created,
        created,
        "steady state created events"
    );
    let mut host = vec![0u8; 1 << 20];
    b.read(&out, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 199));

    let never = device.event(false).unwrap();
    assert!(never.is_complete().unwrap());
    never.synchronize().unwrap();

    let start = device.event(true).unwrap();
    let end = device.event(true).unwrap();
    start.record(&a).unwrap();
    for _ in 0..10 {
        a.fill(&buffer, 0, 1 << 20, 1).unwrap();
    }
    end.record(&a).unwrap();
    end.synchronize().unwrap();
    assert!(end.is_complete().unwrap());
    let elapsed = start.elapsed(&end).unwrap();
    eprintln!("10 fills of 1 MiB: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1));
    assert!(never.elapsed(&end).is_err());
}

/// The context current on the calling thread, through the driver directly.
fn current_context() -> cudarc::driver::sys::CUcontext {
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer for the duration of the call.
    let status = unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut ctx) };
    assert_eq!(status, cudarc::driver::sys::CUresult::CUDA_SUCCESS, "cuCtxGetCurrent");
    ctx
}

/// Records, queries and waits for an event after a slow fill on `stream`, and checks it
/// really waited for the fill.
fn record_and_wait_after_a_fill(device: &CudaDevice, stream: &gpuhal_cuda::CudaStream, what: &str) {
    let buffer = device.allocate(256 << 20, MemoryKind::Device, stream).unwrap();
    let event = device.event(false).unwrap();
    for value in 1..=8 {
        stream.fill(&buffer, 0, 256 << 20, value).unwrap();
    }
    event
        .record(stream)
        .unwrap_or_else(|err| panic!("record with {what}: {err}"));
    let _ = event
        .is_complete()
        .unwrap_or_else(|err| panic!("query with {what}: {err}"));
    event
        .synchronize()
        .unwrap_or_else(|err| panic!("synchronize with {what}: {err}"));
    assert!(event.is_complete().unwrap(), "{what}: complete after synchronize");
    let mut tail = [0u8; 64];
    // The read is stream-ordered too; it shows the fills the event covered finished.
    stream.read(&buffer, (256 << 20) - 64, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 8), "{what}: the last fill landed");
}

/// Event record, query and wait go to the driver without making the device's context
/// current first (each handle names its context): they must work on a thread where no
/// context is current, and where another context is current, and leave that one current.
fn gpu_events_need_no_current_context() {
    let device = std::sync::Arc::new(device());
    let stream = std::sync::Arc::new(device.create_stream().unwrap());
    let (d, s) = (device.clone(), stream.clone());
    std::thread::spawn(move || {
        assert!(
            current_context().is_null(),
            "a new thread starts with no current context"
        );
        record_and_wait_after_a_fill(&d, &s, "no current context");
    })
    .join()
    .unwrap();

    let (d, s) = (device.clone(), stream.clone());
    std::thread::spawn(move || {
        let mut other = std::ptr::null_mut();
        // SAFETY: `other` is a valid out-pointer; the new context is destroyed below.
        let status = unsafe { cudarc::driver::sys::cuCtxCreate_v2(&mut other, 0, 0) };
        assert_eq!(status, cudarc::driver::sys::CUresult::CUDA_SUCCESS, "cuCtxCreate");
        assert_eq!(current_context(), other);
        // Only the event calls are under test: allocate and fill bind the device's context.
        let buffer = d.allocate(256 << 20, MemoryKind::Device, &s).unwrap();
        for value in 1..=8 {
            s.fill(&buffer, 0, 256 << 20, value).unwrap();
        }
        let event = d.event(false).unwrap();
        // SAFETY: `other` was created above and is not in use by any other thread.
        let status = unsafe { cudarc::driver::sys::cuCtxSetCurrent(other) };
        assert_eq!(status, cudarc::driver::sys::CUresult::CUDA_SUCCESS, "cuCtxSetCurrent");
        event
            .record(&s)
            .unwrap_or_else(|err| panic!("record with another context current: {err}"));
        let _ = event.is_complete().unwrap();
        event.synchronize().unwrap();
        assert!(event.is_complete().unwrap());
        assert_eq!(
            current_context(),
            other,
            "event calls left the caller's context current"
        );
        let mut tail = [0u8; 64];
        s.read(&buffer, (256 << 20) - 64, &mut tail).unwrap();
        assert!(
            tail.iter().all(|&b| b == 8),
            "another context current: the last fill landed"
        );
        drop(buffer);
        // SAFETY: no object of `other` remains; it was created by this thread.
        let status = unsafe { cudarc::driver::sys::cuCtxDestroy_v2(other) };
        assert_eq!(status, cudarc::driver::sys::CUresult::CUDA_SUCCESS, "cuCtxDestroy");
    })
    .join()
    .unwrap();
}

fn gpu_fences_are_timelines() {
    let device = device();
    let fence = device.create_fence(0).unwrap();
    fence.signal(1).unwrap();
    fence.signal(1).unwrap();
    assert!(matches!(fence.signal(0), Err(Error::FenceRegressed { .. })));
    assert_eq!(fence.value().unwrap(), 1);
    let t = Instant::now();
    assert!(matches!(
        fence.wait(2, Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    fence.signal(2).unwrap();
    fence.wait(2, Duration::from_millis(10)).unwrap();

    if !device.capabilities().contains(Capabilities::TIMELINE_FENCE) {
        eprintln!("skipped stream part: no TIMELINE_FENCE");
        return;
    }
    let s = device.create_stream().unwrap();
    let buffer = device.allocate(4096, MemoryKind::Device, &s).unwrap();
    // The stream waits on the device for a CPU signal of `gate`, then signals `done`.
    let gate = device.create_fence(0).unwrap();
    let done = device.create_fence(0).unwrap();
    s.wait(&gate, 1).unwrap();
    s.fill(&buffer, 0, 4096, 42).unwrap();
    s.signal(&done, 1).unwrap();
    assert!(matches!(s.signal(&done, 0), Err(Error::FenceRegressed { .. })));
    // A CPU signal below a value already enqueued regresses too.
    assert!(matches!(done.signal(0), Err(Error::FenceRegressed { .. })));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(done.value().unwrap(), 0, "the stream ran past its fence wait");
    let t = Instant::now();
    gate.signal(1).unwrap();
    done.wait(1, Duration::from_secs(5)).unwrap();
    eprintln!(
        "CPU signal -> stream releases -> stream signals -> CPU sees it: {:?}",
        t.elapsed()
    );
    let mut host = vec![0u8; 4096];
    s.read(&buffer, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 42));

    // Dropping a fence a stream still waits on releases the stream (no hang at teardown).
    let orphan = device.create_fence(0).unwrap();
    s.wait(&orphan, 100).unwrap();
    drop(orphan);
    s.synchronize().unwrap();

    // Across two streams: b waits for a's signal.
    let a = device.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let x = device.allocate(1 << 20, MemoryKind::Device, &a).unwrap();
    let y = device.allocate(1 << 20, MemoryKind::Device, &b).unwrap();
    a.fill(&x, 0, 1 << 20, 77).unwrap();
    a.signal(&fence, 10).unwrap();
    b.wait(&fence, 10).unwrap();
    x.record_use(b.cache());
    b.copy(&x, 0, &y, 0, 1 << 20).unwrap();
    let mut host = vec![0u8; 1 << 20];
    b.read(&y, 0, &mut host).unwrap();
    assert!(host.iter().all(|&v| v == 77));
}

fn gpu_graphs_capture_replay_update() {
    let device = device();
    let s = device.create_stream().unwrap();
    let pool = device.graph_pool();
    let out = device.allocate(1 << 16, MemoryKind::Device, &s).unwrap();
    let capture = |value: u8, fills: usize| {
        s.capture(&pool, |s| {
            let scratch = device.allocate(1 << 16, MemoryKind::Device, s)?;
            assert!(scratch.is_graph_allocation());
            for _ in 0..fills {
                s.fill(&scratch, 0, 1 << 16, value)?;
            }
            s.copy(&scratch, 0, &out, 0, 1 << 16)?;
            Ok(())
        })
        .unwrap()
        .0
    };
    let g1 = capture(11, 1);
    assert_eq!(g1.node_count(), 2);
    let mut exec = g1.instantiate().unwrap();
    let mut host = vec![0u8; 1 << 16];
    s.fill(&out, 0, 1 << 16, 0).unwrap();
    exec.launch(&s).unwrap();
    s.read(&out, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 11));

    let g2 = capture(22, 1);
    exec.update(&g2).unwrap();
    exec.launch(&s).unwrap();
    s.read(&out, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 22));
    eprintln!("graph pool after two captures: {:?}", pool.stats());
    assert!(pool.stats().reserved_bytes <= 2 << 16);

    let g3 = capture(33, 3);
    assert!(matches!(exec.update(&g3), Err(Error::GraphUpdate { .. })));
    exec.launch(&s).unwrap();
    s.read(&out, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 22), "a failed update changed the exec");

    // Illegal operations during capture abandon it and leave the stream usable.
    for op in ["synchronize", "read", "write"] {
        s.begin_capture(&pool).unwrap();
        s.fill(&out, 0, 16, 1).unwrap();
        let result = match op {
            "synchronize" => s.synchronize(),
            "read" => s.read(&out, 0, &mut host[..16]),
            _ => s.write(&out, 0, &[1; 16]),
        };
        assert!(
            matches!(result, Err(Error::CaptureInvalidated { .. })),
            "{op}: {result:?}"
        );
        assert!(!s.is_capturing());
        s.fill(&out, 0, 1 << 16, 5).unwrap();
        s.read(&out, 0, &mut host).unwrap();
        assert!(
            host.iter().all(|&x| x == 5),
            "{op}: stream unusable after abandoned capture"
        );
    }
    assert!(matches!(s.end_capture(), Err(Error::CaptureState(_))));
    // A stream dropped mid-capture abandons the capture.
    let t = device.create_stream().unwrap();
    t.begin_capture(&pool).unwrap();
    t.fill(&out, 0, 16, 1).unwrap();
    drop(t);
    s.synchronize().unwrap();
}

fn gpu_graph_pool_is_shared_across_captures() {
    let device = device();
    let s = device.create_stream().unwrap();
    let pool = device.graph_pool();
    let mut graphs = Vec::new();
    for batch in (1..=4u64).rev() {
        let (graph, output) = s
            .capture(&pool, |s| {
                let tmp = device.allocate(batch << 20, MemoryKind::Device, s)?;
                let output = device.allocate(1 << 16, MemoryKind::Device, s)?;
                s.fill(&tmp, 0, batch << 20, batch as u8)?;
                s.copy(&tmp, 0, &output, 0, 1 << 16)?;
                Ok(output)
            })
            .unwrap();
        graphs.push((graph.instantiate().unwrap(), output, batch));
    }
    let stats = pool.stats();
    eprintln!("4 captures (4,3,2,1 MiB + outputs): {stats:?}");
    assert!(
        stats.reserved_bytes < (4 << 20) + (1 << 20),
        "captures did not share the pool"
    );
    let mut host = vec![0u8; 1 << 16];
    for (exec, output, batch) in &graphs {
        exec.launch(&s).unwrap();
        s.read(output, 0, &mut host).unwrap();
        assert!(host.iter().all(|&x| x == *batch as u8));
    }
}

fn gpu_host_import_paths() {
    let device = device();
    let s = device.create_stream().unwrap();
    let caps = device.capabilities();
    let data: Vec<u8> = (0..(3 << 20) + 123).map(|i: u32| (i % 251) as u8).collect();
    let host = &data[77..];
    let check = |import: &gpuhal_hal::HostImport<'_>| {
        let copy = device.allocate(import.len(), MemoryKind::Device, &s).unwrap();
        s.copy(import, 0, &copy, 0, import.len()).unwrap();
        let mut out = vec![0u8; import.len() as usize];
        s.read(&copy, 0, &mut out).unwrap();
        assert_eq!(out, host);
    };

    let import = device.import_host(host, ImportPolicy::ZERO_COPY, &s).unwrap();
    eprintln!("default import path: {:?} (caps {caps:?})", import.path());
    check(&import);
    drop(import);

    if caps.contains(Capabilities::HOST_REGISTER) {
        let policy = ImportPolicy {
            allow_coherent: false,
            ..ImportPolicy::ZERO_COPY
        };
        let import = device.import_host(host, policy, &s).unwrap();
        assert_eq!(import.path(), ImportPath::Registered);
        check(&import);
        drop(import);
        // Registering again after the drop works: the drop unregistered.
        let import = device.import_host(host, policy, &s).unwrap();
        assert_eq!(import.path(), ImportPath::Registered);
    }

    let none = ImportPolicy {
        allow_coherent: false,
        allow_registered: false,
        allow_copy: false,
        prefetch_coherent: false,
    };
    let err = device.import_host(host, none, &s).unwrap_err();
    eprintln!("refused: {err}");
    assert!(matches!(err, Error::ImportRefused { .. }));
    let text = err.to_string();
    assert!(text.contains("coherent") && text.contains("registered") && text.contains("copy"));

    let copy_only = ImportPolicy {
        allow_copy: true,
        ..none
    };
    let import = device.import_host(host, copy_only, &s).unwrap();
    assert_eq!(import.path(), ImportPath::Copied);
    check(&import);
    let stats = device.import_stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.copied, 1);
    assert_eq!(stats.copied_bytes, host.len() as u64);
    assert_eq!(stats.refused, 1);
}

fn gpu_works_from_other_threads() {
    let device = device();
    let device = &device;
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            scope.spawn(move || {
                let s = device.create_stream().unwrap();
                for i in 0..50u8 {
                    let b = device.allocate(4096 * (1 + t as u64), MemoryKind::Device, &s).unwrap();
                    s.fill(&b, 0, b.len(), i ^ t).unwrap();
                    let mut out = vec![0u8; 64];
                    s.read(&b, 100, &mut out).unwrap();
                    assert!(out.iter().all(|&x| x == i ^ t));
                }
            });
        }
    });
    let foreign = CudaDevice::open(0).unwrap();
    let s = foreign.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let buffer = device.allocate(64, MemoryKind::Device, &b).unwrap();
    assert!(matches!(s.fill(&buffer, 0, 64, 0), Err(Error::ForeignHandle { .. })));
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Costs of the paths that matter, printed for the record (medians of 1000 runs).
fn gpu_timings() {
    let device = device();
    let s = device.create_stream().unwrap();
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..100 {
            f();
        }
        median(
            (0..1000)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .collect(),
        )
    };
    let hit = time(&mut || drop(device.allocate(1 << 20, MemoryKind::Device, &s).unwrap()));
    let raw_pool = device.allocator().native();
    let miss = time(&mut || {
        use gpuhal_hal::pool::Allocator;
        let block = raw_pool
            .allocate(1 << 20, MemoryKind::Device, Some(s.handle()))
            .unwrap();
        raw_pool.free(block, Some(s.handle())).unwrap();
    });
    let event = time(&mut || {
        let e = device.event(false).unwrap();
        e.record(&s).unwrap();
        e.is_complete().unwrap();
    });
    let fence = device.create_fence(0).unwrap();
    let mut v = 0;
    let fence_roundtrip = time(&mut || {
        v += 1;
        s.signal(&fence, v).unwrap();
        fence.wait(v, Duration::from_secs(1)).unwrap();
    });
    eprintln!(
        "timings (median): cache hit alloc+free 1 MiB {hit:?}; native cuMemAllocFromPoolAsync+cuMemFreeAsync {miss:?}; \
         pooled event acquire+record+query {event:?}; stream fence signal -> CPU sees it {fence_roundtrip:?}"
    );
    assert!(hit < miss, "the cache hit path is slower than the driver");
    let _ = CudaBackend;
    let _ = AsRegion::region(&device.allocate(1, MemoryKind::Device, &s).unwrap());
}

/// Eight threads with their own streams repeat the same sizes: the caches must serve
/// most of the requests.
fn gpu_threads_with_repeated_sizes_hit_their_caches() {
    let device = device();
    let streams: Vec<_> = (0..8).map(|_| device.create_stream().unwrap()).collect();
    let before = device.memory_stats();
    std::thread::scope(|scope| {
        for (index, stream) in streams.iter().enumerate() {
            let device = &device;
            scope.spawn(move || {
                for round in 0..20u64 {
                    let size = (1 + index as u64 % 4) * 16 * 1024 + index as u64 * 512 + 7;
                    let a = device.allocate(size, MemoryKind::Device, stream).unwrap();
                    let b = device.allocate(size, MemoryKind::Device, stream).unwrap();
                    stream.fill(&a, 0, size, round as u8).unwrap();
                    stream.copy(&a, 0, &b, 0, size).unwrap();
                    let mut out = vec![0u8; 16];
                    stream.read(&b, 0, &mut out).unwrap();
                    assert!(out.iter().all(|&x| x == round as u8));
                }
            });
        }
    });
    let after = device.memory_stats();
    eprintln!("before {before:?}\nafter  {after:?}");
    assert!(
        after.cache_hits - before.cache_hits >= 8 * 19,
        "eight threads of repeated sizes made {} cache hits",
        after.cache_hits - before.cache_hits
    );
}

/// Maps `len` bytes of `file` read-only, shared or private.
fn map_read_only(file: &std::fs::File, len: usize, shared: bool) -> *mut libc::c_void {
    use std::os::fd::AsRawFd;
    let sharing = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    // SAFETY: maps `len` bytes of an open file read-only; the caller unmaps it.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, sharing, file.as_raw_fd(), 0) };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    map
}

/// Whether `path` is on tmpfs.
fn on_tmpfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` a writable statfs.
    let status = unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) };
    // SAFETY: statfs returned 0, so it filled `stats`.
    status == 0 && unsafe { stats.assume_init() }.f_type == libc::TMPFS_MAGIC
}

/// A read-only mmap'd file (how model weights arrive) imports by registration when mapped
/// `MAP_SHARED`. Mapped `MAP_PRIVATE` from a disk filesystem, registration hangs driver
/// 580, so gpuhal must not attempt it: the import is refused with the reason (and the
/// remedy) when copying is not allowed, and copied when it is, and it returns promptly.
fn gpu_host_import_of_a_read_only_mmap() {
    let device = device();
    if !device.capabilities().contains(Capabilities::HOST_REGISTER) {
        eprintln!("skipped: no HOST_REGISTER");
        return;
    }
    let s = device.create_stream().unwrap();
    let len = (2 << 20) + 100;
    let contents: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let path = std::env::temp_dir().join(format!("gpuhal-cuda-import-{}", std::process::id()));
    std::fs::write(&path, &contents).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let on_disk = !on_tmpfs(&path);
    eprintln!(
        "{} is on {}",
        path.display(),
        if on_disk { "a disk filesystem" } else { "tmpfs" }
    );
    let registered_only = ImportPolicy {
        allow_coherent: false,
        ..ImportPolicy::ZERO_COPY
    };
    let copy_allowed = ImportPolicy {
        allow_copy: true,
        ..registered_only
    };
    let read_back = |import: &gpuhal_hal::HostImport<'_>| {
        let copy = device.allocate(len as u64, MemoryKind::Device, &s).unwrap();
        s.copy(import, 0, &copy, 0, len as u64).unwrap();
        let mut out = vec![0u8; len];
        s.read(&copy, 0, &mut out).unwrap();
        assert!(
            out == contents,
            "bytes read back through a {:?} import differ",
            import.path()
        );
    };
    for shared in [true, false] {
        let map = map_read_only(&file, len, shared);
        // SAFETY: the mapping is `len` readable bytes and lives until the munmap below.
        let host = unsafe { std::slice::from_raw_parts(map as *const u8, len) };
        let started = Instant::now();
        let import = device.import_host(host, registered_only, &s);
        eprintln!("shared {shared}: {import:?} in {:?}", started.elapsed());
        if shared || !on_disk {
            let import = import.unwrap();
            assert_eq!(import.path(), ImportPath::Registered);
            read_back(&import);
        } else {
            match import {
                Err(Error::ImportRefused { reason, .. }) => {
                    assert!(
                        reason.contains("MAP_SHARED") && reason.contains("not attempted"),
                        "{reason}"
                    )
                }
                other => panic!("a private read-only file mapping on disk imported as {other:?}"),
            }
            let import = device.import_host(host, copy_allowed, &s).unwrap();
            assert_eq!(import.path(), ImportPath::Copied);
            read_back(&import);
        }
        // SAFETY: every import that borrowed the mapping has been dropped.
        assert_eq!(unsafe { libc::munmap(map, len) }, 0);
    }
    let _ = std::fs::remove_file(&path);
}

/// Lists the tests for the harness: `cargo test` runs this `main` (harness = false), so a
/// GPU test can be reported as ignored, with the reason, when there is no driver, instead
/// of as passed.
/// A framework's own streams, adopted: a stream it created, the null stream, the legacy and
/// the per-thread default stream. Each caches like a gpuhal stream, orders gpuhal's work with
/// the framework's, and is left alive when the gpuhal stream drops.
fn gpu_adopted_streams_cache_and_are_not_destroyed() {
    use cudarc::driver::sys;
    let device = device();
    let mut own: sys::CUstream = std::ptr::null_mut();
    // `device()` bound the primary context on this thread; gpuhal binds it again per call.
    drop(device.create_stream().unwrap());
    // SAFETY: `own` is a valid out-pointer; the context is current on this thread.
    let status = unsafe { sys::cuStreamCreate(&mut own, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) };
    assert_eq!(status, sys::CUresult::CUDA_SUCCESS, "cuStreamCreate");
    let raws = [
        ("framework stream", own),
        ("null stream", std::ptr::null_mut()),
        ("legacy default stream", gpuhal_cuda::LEGACY_DEFAULT_STREAM),
        ("per-thread default stream", gpuhal_cuda::PER_THREAD_DEFAULT_STREAM),
    ];
    for (what, raw) in raws {
        // SAFETY: every handle above outlives the adopted stream and its buffers (`own` is
        // destroyed at the end of the test, the special handles always exist).
        let stream = unsafe { device.adopt_stream(raw) }.unwrap();
        assert!(!stream.is_owned());
        assert_eq!(stream.raw(), raw, "{what}");
        let before = device.memory_stats();
        for _ in 0..10 {
            let buffer = device.allocate(1 << 20, MemoryKind::Device, &stream).unwrap();
            stream.fill(&buffer, 0, 1 << 20, 0x5A).unwrap();
            let mut host = vec![0u8; 1 << 20];
            stream.read(&buffer, 0, &mut host).unwrap();
            assert!(host.iter().all(|&b| b == 0x5A), "{what}: fill read back");
        }
        let after = device.memory_stats();
        assert_eq!(
            after.cache_misses - before.cache_misses,
            1,
            "{what}: one miss, then hits"
        );
        assert_eq!(after.cache_hits - before.cache_hits, 9, "{what}");
        drop(stream);
        // The native stream still works after gpuhal let go of it.
        // SAFETY: `raw` is alive (see above).
        let status = unsafe { sys::cuStreamSynchronize(raw) };
        assert_eq!(
            status,
            sys::CUresult::CUDA_SUCCESS,
            "{what} usable after the gpuhal stream dropped"
        );
    }
    // SAFETY: no gpuhal stream or buffer refers to `own` any more.
    let status = unsafe { sys::cuStreamDestroy_v2(own) };
    assert_eq!(status, sys::CUresult::CUDA_SUCCESS, "cuStreamDestroy");
}

/// Growable segments: whole granules mapped, data intact across streams, and a released
/// block unmapped only after its stream has passed its last use (then free again).
fn gpu_growable_segments_map_and_unmap_in_stream_order() {
    let config = gpuhal_hal::PoolConfig {
        segments: gpuhal_hal::SegmentStrategy::Growable,
        ..Default::default()
    };
    let device = CudaDevice::open_with(0, config).expect("opening with growable segments");
    let memory = device.allocator().native();
    let granule = memory.mapping_granularity().expect("growable segments in use");
    eprintln!("mapping granularity {granule} bytes");
    let stream = device.create_stream().unwrap();
    let other = device.create_stream().unwrap();
    let small: Vec<_> = (0..8)
        .map(|_| device.allocate(64 << 10, MemoryKind::Device, &stream).unwrap())
        .collect();
    assert_eq!(
        device.memory_stats().native_allocations,
        1,
        "small buffers share a granule"
    );
    assert_eq!(memory.mapped_bytes(), granule);
    for (i, buffer) in small.iter().enumerate() {
        stream.fill(buffer, 0, buffer.len(), i as u8 + 1).unwrap();
    }
    let copy = device.allocate(64 << 10, MemoryKind::Device, &other).unwrap();
    let done = device.event(false).unwrap();
    done.record(&stream).unwrap();
    other.wait_event(&done).unwrap();
    other.copy(&small[3], 0, &copy, 0, 64 << 10).unwrap();
    let mut host = vec![0u8; 64 << 10];
    other.read(&copy, 0, &mut host).unwrap();
    assert!(host.iter().all(|&b| b == 4), "data through a segment across streams");
    drop((small, copy));
    stream.synchronize().unwrap();
    other.synchronize().unwrap();
    device.allocator().trim();

    let size: u64 = 256 << 20;
    let (free_before, _) = device.memory_info().unwrap();
    let big = device.allocate(size, MemoryKind::Device, &stream).unwrap();
    let (free_live, _) = device.memory_info().unwrap();
    assert!(free_before - free_live >= size, "{size} bytes mapped show as used");
    for round in 0..400u32 {
        stream.fill(&big, 0, size, round as u8).unwrap();
    }
    let last = device.event(false).unwrap();
    last.record(&stream).unwrap();
    drop(big);
    assert!(device.allocator().trim() >= size);
    let mapped = memory.mapped_bytes();
    if !last.is_complete().unwrap() {
        assert!(
            mapped >= size,
            "unmapped while the stream still used it ({mapped} bytes mapped)"
        );
    } else {
        eprintln!("the fills finished before the check; stream order not observed this run");
    }
    stream.synchronize().unwrap();
    let (free_after, _) = device.memory_info().unwrap();
    assert_eq!(memory.mapped_bytes(), 0, "everything unmapped once the stream is done");
    assert!(
        free_after + (8 << 20) >= free_before,
        "free {free_after} after, {free_before} before"
    );
}

/// A released block's physical memory serves the next block on its stream at once,
/// whatever its size: the device holds no more than the largest of the two, even while
/// the stream is still using the first.
fn gpu_growable_segments_reuse_released_chunks_on_their_stream() {
    let config = gpuhal_hal::PoolConfig {
        segments: gpuhal_hal::SegmentStrategy::Growable,
        reserve_floor: 0,
        ..Default::default()
    };
    let device = CudaDevice::open_with(0, config).expect("opening with growable segments");
    let memory = device.allocator().native();
    let stream = device.create_stream().unwrap();
    let first = device.allocate(96 << 20, MemoryKind::Device, &stream).unwrap();
    for round in 0..200u32 {
        stream.fill(&first, 0, first.len(), round as u8).unwrap();
    }
    let last = device.event(false).unwrap();
    last.record(&stream).unwrap();
    drop(first);
    // Trim gives back what is done; the fills are still running, so the memory stays
    // with the stream for its next block.
    assert!(device.allocator().trim() >= 96 << 20);
    let before = memory.segment_stats().expect("growable");
    let second = device.allocate(80 << 20, MemoryKind::Device, &stream).unwrap();
    let after = memory.segment_stats().expect("growable");
    eprintln!("before {before:?}\nafter {after:?}");
    if last.is_complete().unwrap() && after.handles_created > before.handles_created {
        eprintln!("the fills finished before the allocation; same-stream reuse not observed this run");
    } else {
        assert_eq!(after.handles_created, before.handles_created, "no new physical memory");
        assert!(
            after.reused_bytes - before.reused_bytes >= 80 << 20,
            "80 MiB of the first block reused"
        );
    }
    assert!(after.physical_bytes <= 96 << 20, "{} bytes held", after.physical_bytes);
    stream.fill(&second, 0, second.len(), 0x5a).unwrap();
    let mut host = vec![0u8; 1 << 20];
    stream.read(&second, second.len() - (1 << 20), &mut host).unwrap();
    assert!(
        host.iter().all(|&b| b == 0x5a),
        "the reused memory holds the new block's data"
    );
    drop(second);
    device.allocator().trim();
    stream.synchronize().unwrap();
    device.memory_info().unwrap();
    assert_eq!(memory.mapped_bytes(), 0, "everything released once the stream is done");
}

/// Sleep gives back the physical memory of live buffers and restores the kept ones on
/// wake; prints the time each took for 1 GiB kept and 1 GiB discarded.
fn gpu_sleep_and_wake_keep_one_gib() {
    let config = gpuhal_hal::PoolConfig {
        segments: gpuhal_hal::SegmentStrategy::Growable,
        ..Default::default()
    };
    let device = CudaDevice::open_with(0, config).expect("opening with growable segments");
    let stream = device.create_stream().unwrap();
    let gib: u64 = 1 << 30;
    let weights = device.allocate(gib, MemoryKind::Device, &stream).unwrap();
    let kv_cache = device.allocate(gib, MemoryKind::Device, &stream).unwrap();
    let pattern: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 251) as u8).collect();
    for part in 0..(gib / pattern.len() as u64) {
        stream.write(&weights, part * pattern.len() as u64, &pattern).unwrap();
    }
    stream.fill(&kv_cache, 0, gib, 3).unwrap();
    stream.synchronize().unwrap();
    let (free_awake, _) = device.memory_info().unwrap();
    let started = std::time::Instant::now();
    let slept = device.allocator().sleep(&[&weights]).unwrap();
    let sleep_time = started.elapsed();
    let (free_asleep, _) = device.memory_info().unwrap();
    assert_eq!(slept.kept_bytes, gib);
    assert!(slept.released_bytes >= 2 * gib, "{slept:?}");
    assert!(
        free_asleep >= free_awake + 2 * gib - (64 << 20),
        "free {free_awake} awake, {free_asleep} asleep"
    );
    assert_eq!(device.memory_stats().asleep_bytes, 2 * gib);
    let started = std::time::Instant::now();
    let woken = device.allocator().wake().unwrap();
    let wake_time = started.elapsed();
    assert_eq!((woken.restored_bytes, woken.mapped_bytes), (gib, 2 * gib));
    eprintln!(
        "sleep: released {} MiB, kept {} MiB in {:.1} ms; wake: mapped {} MiB, restored {} MiB in {:.1} ms",
        slept.released_bytes >> 20,
        slept.kept_bytes >> 20,
        sleep_time.as_secs_f64() * 1e3,
        woken.mapped_bytes >> 20,
        woken.restored_bytes >> 20,
        wake_time.as_secs_f64() * 1e3
    );
    let mut host = vec![0u8; pattern.len()];
    for part in [0, gib / pattern.len() as u64 - 1] {
        stream.read(&weights, part * pattern.len() as u64, &mut host).unwrap();
        assert!(host == pattern, "kept bytes restored (part {part})");
    }
    stream.fill(&kv_cache, 0, gib, 4).unwrap();
    stream.read(&kv_cache, gib - pattern.len() as u64, &mut host).unwrap();
    assert!(host.iter().all(|&b| b == 4), "the discarded buffer is memory again");
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    if skip_reason().is_some() {
        let why = CudaDevice::open(0).err().map(|err| err.to_string()).unwrap_or_default();
        eprintln!("GPU tests skipped (reported as ignored): {why}");
    }
    let trials = vec![
        libtest_mimic::Trial::test("open_without_driver_is_an_error_not_a_panic", || {
            open_without_driver_is_an_error_not_a_panic();
            Ok(())
        }),
        gpu_test(
            "gpu_device_reports_capabilities_from_attributes",
            gpu_device_reports_capabilities_from_attributes,
        ),
        gpu_test(
            "gpu_device_memory_round_trip_and_caching",
            gpu_device_memory_round_trip_and_caching,
        ),
        gpu_test(
            "gpu_small_fills_and_copies_go_through_kernels_and_stay_exact",
            gpu_small_fills_and_copies_go_through_kernels_and_stay_exact,
        ),
        gpu_test(
            "gpu_out_of_memory_is_an_error_with_stats",
            gpu_out_of_memory_is_an_error_with_stats,
        ),
        gpu_test("gpu_pinned_and_managed_memory", gpu_pinned_and_managed_memory),
        gpu_test("gpu_events_pool_and_order_streams", gpu_events_pool_and_order_streams),
        gpu_test("gpu_events_need_no_current_context", gpu_events_need_no_current_context),
        gpu_test("gpu_fences_are_timelines", gpu_fences_are_timelines),
        gpu_test("gpu_graphs_capture_replay_update", gpu_graphs_capture_replay_update),
        gpu_test(
            "gpu_graph_pool_is_shared_across_captures",
            gpu_graph_pool_is_shared_across_captures,
        ),
        gpu_test("gpu_host_import_paths", gpu_host_import_paths),
        gpu_test("gpu_works_from_other_threads", gpu_works_from_other_threads),
        gpu_test("gpu_timings", gpu_timings),
        gpu_test(
            "gpu_threads_with_repeated_sizes_hit_their_caches",
            gpu_threads_with_repeated_sizes_hit_their_caches,
        ),
        gpu_test(
            "gpu_host_import_of_a_read_only_mmap",
            gpu_host_import_of_a_read_only_mmap,
        ),
        gpu_test(
            "gpu_adopted_streams_cache_and_are_not_destroyed",
            gpu_adopted_streams_cache_and_are_not_destroyed,
        ),
        gpu_test(
            "gpu_growable_segments_map_and_unmap_in_stream_order",
            gpu_growable_segments_map_and_unmap_in_stream_order,
        ),
        gpu_test(
            "gpu_growable_segments_reuse_released_chunks_on_their_stream",
            gpu_growable_segments_reuse_released_chunks_on_their_stream,
        ),
        gpu_test("gpu_sleep_and_wake_keep_one_gib", gpu_sleep_and_wake_keep_one_gib),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// Why GPU tests cannot run here, or `None` when they can (or must: with
/// `GPUHAL_REQUIRE_GPU=1` they run and fail without a driver).
fn skip_reason() -> Option<&'static str> {
    let required = std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if required || driver_available() {
        None
    } else {
        Some("skipped: no CUDA driver found")
    }
}

/// A test that needs the GPU: ignored, with the reason, where there is no driver.
fn gpu_test(name: &'static str, body: fn()) -> libtest_mimic::Trial {
    libtest_mimic::Trial::ignorable_test(name, move || match skip_reason() {
        Some(reason) => Ok(libtest_mimic::Completion::ignored_with(reason)),
        None => {
            body();
            Ok(libtest_mimic::Completion::Completed)
        }
    })
}
