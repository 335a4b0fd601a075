//! Tests against a real Vulkan driver (lavapipe in CI). Where no loader or usable device
//! is present every test is reported as ignored, with the reason, never as passed; with
//! `GPUHAL_REQUIRE_VULKAN=1` (CI, where lavapipe is installed) they run and fail instead.

use std::time::Duration;

use gpuhal_hal::{
    AsRegion, Capabilities, Device, Error, Event, Fence, Graph, GraphExec, ImportPath, ImportPolicy, MemoryKind, Stream,
};
use gpuhal_vulkan::{loader_available, VulkanDevice};

/// The device to test on. Only called by tests the harness runs, that is where a device
/// opened or `GPUHAL_REQUIRE_VULKAN=1` demands one (see [`skip_reason`]), so a missing
/// device here is a failure, said plainly.
fn device() -> VulkanDevice {
    if !loader_available() {
        panic!("GPUHAL_REQUIRE_VULKAN=1 but there is no Vulkan loader (libvulkan.so.1) on this machine");
    }
    match VulkanDevice::open(0) {
        Ok(device) => device,
        Err(err) => panic!("no usable Vulkan device: {err}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn open_reports_capabilities() {
    let device = device();
    let caps = device.capabilities();
    assert!(caps.contains(Capabilities::GRAPHS | Capabilities::TIMELINE_FENCE));
    assert!(!caps.contains(Capabilities::MANAGED));
    assert!(!caps.contains(Capabilities::PAGEABLE_ACCESS));
    assert_eq!(device.info().backend, "vulkan");
    let (free, total) = device.memory_info().unwrap();
    assert!(total > 0 && free <= total);
    eprintln!("{:?}", device);
}

fn bad_ordinal_is_a_clear_error() {
    let _device = device();
    let err = VulkanDevice::open(1000).expect_err("ordinal 1000 should not exist");
    assert!(err.to_string().contains("ordinal 1000"), "{err}");
}

fn write_read_copy_fill_roundtrip() {
    let device = device();
    let stream = device.create_stream().unwrap();
    for kind in [MemoryKind::Device, MemoryKind::HostPinned] {
        let a = device.allocate(10_000, kind, &stream).unwrap();
        let b = device.allocate(10_000, kind, &stream).unwrap();
        assert_ne!(a.address(), 0);
        assert_eq!(a.address() % 256, 0);
        let data = pattern(10_000, 3);
        stream.write(&a, 0, &data).unwrap();
        stream.copy(&a, 0, &b, 0, 10_000).unwrap();
        // Unaligned fill: head, body and tail.
        stream.fill(&b, 1, 9, 0xAB).unwrap();
        stream.fill(&b, 5001, 2, 0xCD).unwrap();
        let mut out = vec![0; 10_000];
        stream.read(&b, 0, &mut out).unwrap();
        let mut expected = data.clone();
        expected[1..10].fill(0xAB);
        expected[5001..5003].fill(0xCD);
        assert_eq!(out, expected, "{kind:?}");
        // Offsets on both sides.
        let mut part = vec![0; 100];
        stream.read(&a, 4321, &mut part).unwrap();
        assert_eq!(part, data[4321..4421]);
    }
}

fn large_transfer_is_chunked() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let len = (40 << 20) + 123;
    let buffer = device.allocate(len as u64, MemoryKind::Device, &stream).unwrap();
    let data = pattern(len, 7);
    stream.write(&buffer, 0, &data).unwrap();
    let mut out = vec![0; len];
    stream.read(&buffer, 0, &mut out).unwrap();
    assert!(out == data);
}

fn bad_input_is_an_error() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let a = device.allocate(1024, MemoryKind::Device, &stream).unwrap();
    assert!(matches!(stream.fill(&a, 1000, 100, 0), Err(Error::OutOfBounds { .. })));
    assert!(matches!(
        stream.write(&a, 1020, &[0; 8]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        device.allocate(16, MemoryKind::Managed, &stream),
        Err(Error::Unsupported { .. })
    ));
    let mut forged = a.region();
    forged.native ^= 0xdead_0000;
    assert!(stream.fill(&forged, 0, 4, 0).is_err());
    let zero = device.allocate(0, MemoryKind::Device, &stream).unwrap();
    assert_eq!(zero.address(), 0);
    stream.fill(&zero, 0, 0, 1).unwrap();
}

fn caching_reuses_and_frees_are_stream_ordered() {
    let device = device();
    let stream = device.create_stream().unwrap();
    for _ in 0..10 {
        let buffer = device.allocate(1 << 20, MemoryKind::Device, &stream).unwrap();
        stream.fill(&buffer, 0, 1 << 20, 1).unwrap();
    }
    let stats = device.memory_stats();
    assert_eq!(stats.native_allocations, 1, "{stats:?}");
    assert_eq!(stats.cache_hits, 9);
    stream.synchronize().unwrap();
    assert!(device.allocator().trim() > 0);
    assert_eq!(device.deferred_frees(), 0);
}

fn fences_order_streams_and_cpu() {
    let device = device();
    let fence = device.create_fence(0).unwrap();
    let go = device.create_fence(0).unwrap();
    let a = device.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let buffer = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    buffer.record_use(b.cache());
    // b waits for a CPU signal before filling; a is not blocked meanwhile.
    b.wait(&go, 1).unwrap();
    b.fill(&buffer, 0, 4096, 9).unwrap();
    b.signal(&fence, 2).unwrap();
    a.fill(&buffer, 0, 4096, 5).unwrap();
    a.synchronize().unwrap();
    assert_eq!(fence.value().unwrap(), 0);
    assert!(matches!(
        fence.wait(2, Duration::from_millis(50)),
        Err(Error::Timeout { target: 2, .. })
    ));
    // Enqueued signals count: a lower CPU signal is a regression.
    assert!(matches!(
        fence.signal(1),
        Err(Error::FenceRegressed {
            requested: 1,
            current: 2
        })
    ));
    go.signal(1).unwrap();
    fence.wait(2, Duration::from_secs(10)).unwrap();
    a.wait(&fence, 2).unwrap();
    let mut out = vec![0; 4096];
    a.read(&buffer, 0, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 9));
    assert!(matches!(
        fence.signal(1),
        Err(Error::FenceRegressed {
            requested: 1,
            current: 2
        })
    ));
    fence.signal(2).unwrap();
    a.signal(&fence, 2).unwrap();
    a.signal(&fence, 5).unwrap();
    fence.wait(5, Duration::from_secs(10)).unwrap();
}

fn cpu_signal_from_another_thread_releases_a_stream() {
    let device = device();
    let fence = device.create_fence(0).unwrap();
    let stream = device.create_stream().unwrap();
    let buffer = device.allocate(256, MemoryKind::Device, &stream).unwrap();
    stream.wait(&fence, 3).unwrap();
    stream.fill(&buffer, 0, 256, 4).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            fence.signal(3).unwrap();
        });
        let mut out = vec![0; 256];
        stream.read(&buffer, 0, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 4));
    });
}

fn events_order_and_are_pooled() {
    let device = device();
    let a = device.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let buffer = device.allocate(1 << 16, MemoryKind::Device, &a).unwrap();
    let never = device.event(false).unwrap();
    assert!(never.is_complete().unwrap());
    drop(never);
    for round in 0..20u8 {
        let event = device.event(false).unwrap();
        a.fill(&buffer, 0, 1 << 16, round).unwrap();
        event.record(&a).unwrap();
        b.wait_event(&event).unwrap();
        let mut out = vec![0; 16];
        b.read(&buffer, 100, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == round));
        assert!(event.is_complete().unwrap());
    }
    let stats = device.event_stats();
    assert_eq!(stats.native_created, 1, "{stats:?}");
    if device.capabilities().contains(Capabilities::TIMING_EVENTS) {
        let start = device.event(true).unwrap();
        let end = device.event(true).unwrap();
        start.record(&a).unwrap();
        a.fill(&buffer, 0, 1 << 16, 1).unwrap();
        end.record(&a).unwrap();
        end.synchronize().unwrap();
        let elapsed = start.elapsed(&end).unwrap();
        assert!(elapsed < Duration::from_secs(10));
    }
}

fn graphs_capture_replay_update() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let pool = device.graph_pool();
    let input = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let capture = |value: u8| {
        stream
            .capture(&pool, |s| {
                let out = device.allocate(4096, MemoryKind::Device, s)?;
                assert!(out.is_graph_allocation());
                s.fill(&input, 0, 4096, value)?;
                s.copy(&input, 0, &out, 0, 4096)?;
                Ok(out)
            })
            .unwrap()
    };
    let (graph, output) = capture(7);
    assert_eq!(graph.node_count(), 2);
    let mut exec = graph.instantiate().unwrap();
    for _ in 0..3 {
        exec.launch(&stream).unwrap();
    }
    let mut out = vec![0; 4096];
    stream.read(&output, 0, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 7));
    drop(output);
    let (graph2, output2) = capture(9);
    exec.update(&graph2).unwrap();
    exec.launch(&stream).unwrap();
    stream.read(&output2, 0, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 9));
    // Different shape.
    let (graph3, ()) = stream.capture(&pool, |s| s.fill(&input, 0, 16, 1)).unwrap();
    assert!(matches!(exec.update(&graph3), Err(Error::GraphUpdate { .. })));
    // Illegal during capture.
    stream.begin_capture(&pool).unwrap();
    assert!(matches!(stream.synchronize(), Err(Error::CaptureInvalidated { .. })));
    assert!(!stream.is_capturing());
    stream.fill(&input, 0, 16, 1).unwrap();
    stream.synchronize().unwrap();
}

fn host_import_paths() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let host: Vec<u8> = pattern(3 * 4096 + 17, 11);
    let slice = &host[5..];
    let registered = device.capabilities().contains(Capabilities::HOST_REGISTER);
    match device.import_host(slice, ImportPolicy::ZERO_COPY, &stream) {
        Ok(import) => {
            assert!(registered);
            assert_eq!(import.path(), ImportPath::Registered);
            let dst = device
                .allocate(slice.len() as u64, MemoryKind::Device, &stream)
                .unwrap();
            stream.copy(&import, 0, &dst, 0, slice.len() as u64).unwrap();
            let mut out = vec![0; slice.len()];
            stream.read(&dst, 0, &mut out).unwrap();
            assert_eq!(out, slice);
        }
        Err(Error::ImportRefused { reason, .. }) => {
            assert!(!registered);
            eprintln!("zero-copy import refused: {reason}");
        }
        Err(other) => panic!("{other}"),
    }
    let refused = ImportPolicy {
        allow_registered: false,
        ..ImportPolicy::ZERO_COPY
    };
    assert!(matches!(
        device.import_host(slice, refused, &stream),
        Err(Error::ImportRefused { .. })
    ));
    let copied = device
        .import_host(
            slice,
            ImportPolicy {
                allow_registered: false,
                ..ImportPolicy::ANY
            },
            &stream,
        )
        .unwrap();
    assert_eq!(copied.path(), ImportPath::Copied);
    let mut out = vec![0; slice.len()];
    stream.read(&copied, 0, &mut out).unwrap();
    assert_eq!(out, slice);
    assert_eq!(device.import_stats().copied_bytes, slice.len() as u64);
}

fn cross_stream_reuse_waits_for_the_other_stream() {
    let device = device();
    let a = device.create_stream().unwrap();
    let b = device.create_stream().unwrap();
    let fence = device.create_fence(0).unwrap();
    let buffer = device.allocate(1 << 20, MemoryKind::Device, &a).unwrap();
    let address = buffer.address();
    buffer.record_use(b.cache());
    b.wait(&fence, 1).unwrap();
    b.fill(&buffer, 0, 1 << 20, 1).unwrap();
    drop(buffer);
    let again = device.allocate(1 << 20, MemoryKind::Device, &a).unwrap();
    assert_ne!(again.address(), address, "reused while stream b may still use it");
    fence.signal(1).unwrap();
    b.synchronize().unwrap();
    drop(again);
}

/// Lists the tests for the harness (harness = false), so that a test with no device to run
/// on is reported as ignored, with the reason, instead of as passed.
fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let skip = skip_reason();
    if let Some(reason) = &skip {
        eprintln!("Vulkan tests skipped (reported as ignored): {reason}");
    }
    let trials = vec![
        vulkan_test("open_reports_capabilities", open_reports_capabilities),
        vulkan_test("bad_ordinal_is_a_clear_error", bad_ordinal_is_a_clear_error),
        vulkan_test("write_read_copy_fill_roundtrip", write_read_copy_fill_roundtrip),
        vulkan_test("large_transfer_is_chunked", large_transfer_is_chunked),
        vulkan_test("bad_input_is_an_error", bad_input_is_an_error),
        vulkan_test(
            "caching_reuses_and_frees_are_stream_ordered",
            caching_reuses_and_frees_are_stream_ordered,
        ),
        vulkan_test("fences_order_streams_and_cpu", fences_order_streams_and_cpu),
        vulkan_test(
            "cpu_signal_from_another_thread_releases_a_stream",
            cpu_signal_from_another_thread_releases_a_stream,
        ),
        vulkan_test("events_order_and_are_pooled", events_order_and_are_pooled),
        vulkan_test("graphs_capture_replay_update", graphs_capture_replay_update),
        vulkan_test("host_import_paths", host_import_paths),
        vulkan_test(
            "cross_stream_reuse_waits_for_the_other_stream",
            cross_stream_reuse_waits_for_the_other_stream,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// Why the tests cannot run here, or `None` when they can (or must: with
/// `GPUHAL_REQUIRE_VULKAN=1` they run, and fail without a device).
fn skip_reason() -> Option<String> {
    if std::env::var("GPUHAL_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
        return None;
    }
    if !loader_available() {
        return Some("no Vulkan loader (libvulkan.so.1) on this machine".into());
    }
    VulkanDevice::open(0)
        .err()
        .map(|err| format!("no usable Vulkan device: {err}"))
}

/// A test that needs a Vulkan device: ignored, with the reason, where there is none.
fn vulkan_test(name: &'static str, body: fn()) -> libtest_mimic::Trial {
    libtest_mimic::Trial::ignorable_test(name, move || match skip_reason() {
        Some(reason) => Ok(libtest_mimic::Completion::ignored_with(format!("skipped: {reason}"))),
        None => {
            body();
            Ok(libtest_mimic::Completion::Completed)
        }
    })
}
