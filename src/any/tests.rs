use std::time::Duration;

use super::*;

#[test]
fn unknown_backend_is_an_error_listing_the_compiled_ones() {
    let error = AnyDevice::open("opencl", 0).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error:?}");
    for backend in COMPILED_BACKENDS {
        assert!(message.contains(backend), "{message}");
    }
}

#[cfg(feature = "mock")]
mod mock {
    use gpuhal_mock::{MockBackend, Profile};

    use super::*;

    #[test]
    fn round_trip_through_the_facade() -> Result<()> {
        let device = AnyDevice::mock(Profile::Discrete)?;
        assert_eq!(device.backend(), "mock");
        assert!(device.capabilities().contains(Capabilities::STREAM_ORDERED_ALLOC));
        let stream = device.create_stream()?;
        let source = device.allocate(4096, MemoryKind::Device, &stream)?;
        let copy = device.allocate(4096, MemoryKind::Device, &stream)?;
        assert_eq!(source.len(), 4096);
        assert_eq!(source.address() % 256, 0, "allocations are at least 256-byte aligned");

        let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        stream.write(&source, 0, &pattern)?;
        stream.copy(&source, 0, &copy, 0, 4096)?;
        stream.fill(&copy, 100, 50, 0xAB)?;
        let mut back = vec![0; 4096];
        stream.read(&copy, 0, &mut back)?;

        let mut expected = pattern.clone();
        expected[100..150].fill(0xAB);
        assert_eq!(back, expected);

        let stats = device.memory_stats();
        assert_eq!(stats.live_count, 2);
        assert_eq!(stats.live_bytes, 8192);

        // Freed on this stream, the block is reused at once: a cache hit, no native call.
        drop(copy);
        let native_before = device.memory_stats().native_allocations;
        let again = device.allocate(4096, MemoryKind::Device, &stream)?;
        let stats = device.memory_stats();
        assert_eq!(stats.native_allocations, native_before);
        assert!(stats.cache_hits >= 1, "{stats:?}");
        drop(again);
        Ok(())
    }

    #[test]
    fn events_and_fences_order_two_streams() -> Result<()> {
        let device = AnyDevice::mock(Profile::Discrete)?;
        let producer = device.create_stream()?;
        let consumer = device.create_stream()?;
        let buffer = device.allocate(64, MemoryKind::Device, &producer)?;

        producer.fill(&buffer, 0, 64, 9)?;
        let filled = device.event(false)?;
        filled.record(&producer)?;
        consumer.wait_event(&filled)?;
        buffer.record_use(&consumer)?;
        let mut seen = [0; 64];
        consumer.read(&buffer, 0, &mut seen)?;
        assert_eq!(seen, [9; 64]);
        filled.synchronize()?;
        assert!(filled.is_complete()?);

        // The consumer waits on `go` before it signals `done`, so `done` stays behind
        // until the producer signals `go`.
        let go = device.create_fence(0)?;
        let done = device.create_fence(0)?;
        consumer.wait(&go, 1)?;
        consumer.signal(&done, 1)?;
        assert!(matches!(
            done.wait(1, Duration::from_millis(50)),
            Err(Error::Timeout { .. })
        ));
        producer.signal(&go, 1)?;
        done.wait(1, Duration::from_secs(10))?;
        assert_eq!(done.value()?, 1);
        go.signal(2)?;
        assert_eq!(go.value()?, 2);
        assert!(matches!(go.signal(1), Err(Error::FenceRegressed { .. })));
        Ok(())
    }

    #[test]
    fn open_by_name_chooses_the_profile() -> Result<()> {
        let coherent = AnyDevice::open("mock:coherent", 3)?;
        assert!(coherent.capabilities().contains(Capabilities::PAGEABLE_ACCESS));
        assert_eq!(coherent.info().ordinal, 3);
        let minimal = AnyDevice::open("mock:minimal", 0)?;
        assert!(!minimal.capabilities().contains(Capabilities::MANAGED));
        assert!(AnyDevice::open("mock:tpu", 0).is_err());
        Ok(())
    }

    #[test]
    fn native_handles_come_back_out() -> Result<()> {
        let device = AnyDevice::mock(Profile::Coherent)?;
        let native = device
            .native::<MockBackend>()
            .expect("a mock device holds a mock device");
        assert_eq!(native.info().id, device.info().id);
        let stream = device.create_stream()?;
        assert_eq!(stream.native::<MockBackend>().map(|s| s.id()), Some(stream.id()));
        Ok(())
    }

    /// Two devices of one backend: the backend's own check refuses the foreign handle.
    /// That is `ForeignHandle`, not `BackendMismatch`: the facade does not relabel it.
    #[test]
    fn a_stream_of_another_mock_device_is_a_foreign_handle() -> Result<()> {
        let first = AnyDevice::mock(Profile::Discrete)?;
        let second = AnyDevice::mock(Profile::Discrete)?;
        let second_stream = second.create_stream()?;
        let error = first.allocate(64, MemoryKind::Device, &second_stream).unwrap_err();
        assert!(matches!(error, Error::ForeignHandle { .. }), "{error:?}");
        Ok(())
    }
}

/// `BackendMismatch` needs a second backend compiled in, with a device present: the mock
/// and Vulkan (lavapipe in CI) or CUDA (a GPU host). Without a device the test says so and
/// passes, unless `GPUHAL_REQUIRE_<BACKEND>=1` demands the device (CI sets it for Vulkan
/// after installing lavapipe).
#[cfg(all(feature = "mock", any(feature = "vulkan", feature = "cuda")))]
mod mismatch {
    use gpuhal_mock::Profile;

    use super::*;

    fn other_backend_device(name: &str) -> Option<AnyDevice> {
        match AnyDevice::open(name, 0) {
            Ok(device) => Some(device),
            Err(error) => {
                let required = format!("GPUHAL_REQUIRE_{}", name.to_uppercase());
                if std::env::var(&required).is_ok_and(|value| value == "1") {
                    panic!("{required}=1 but no {name} device opened: {error}");
                }
                eprintln!("no {name} device ({error}); BackendMismatch not exercised against {name}");
                None
            }
        }
    }

    fn check_mismatch(other: AnyDevice) -> Result<()> {
        let mock = AnyDevice::mock(Profile::Discrete)?;
        let mock_stream = mock.create_stream()?;
        let other_stream = other.create_stream()?;
        let other_name = other.backend();

        let error = mock.allocate(64, MemoryKind::Device, &other_stream).unwrap_err();
        match error {
            Error::BackendMismatch {
                operation,
                expected,
                found,
            } => {
                assert_eq!((operation, expected, found), ("allocate", "mock", other_name));
            }
            other => panic!("expected BackendMismatch, got {other:?}"),
        }

        let other_buffer = other.allocate(64, MemoryKind::Device, &other_stream)?;
        let mock_buffer = mock.allocate(64, MemoryKind::Device, &mock_stream)?;
        assert!(matches!(
            mock_stream.write(&other_buffer, 0, &[1; 64]),
            Err(Error::BackendMismatch { operation: "write", .. })
        ));
        assert!(matches!(
            other_stream.copy(&mock_buffer, 0, &other_buffer, 0, 64),
            Err(Error::BackendMismatch { operation: "copy", .. })
        ));
        let mock_event = mock.event(false)?;
        assert!(matches!(
            mock_event.record(&other_stream),
            Err(Error::BackendMismatch {
                operation: "record",
                ..
            })
        ));
        let other_fence = other.create_fence(0)?;
        assert!(matches!(
            mock_stream.signal(&other_fence, 1),
            Err(Error::BackendMismatch {
                operation: "signal",
                ..
            })
        ));
        // Both stay usable after the refusals.
        mock_stream.fill(&mock_buffer, 0, 64, 5)?;
        mock_stream.synchronize()?;
        other_stream.synchronize()?;
        Ok(())
    }

    #[cfg(feature = "vulkan")]
    #[test]
    fn mock_and_vulkan_handles_do_not_mix() -> Result<()> {
        match other_backend_device("vulkan") {
            Some(device) => check_mismatch(device),
            None => Ok(()),
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn mock_and_cuda_handles_do_not_mix() -> Result<()> {
        match other_backend_device("cuda") {
            Some(device) => check_mismatch(device),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "mock")]
#[test]
fn graphs_capture_and_replay_through_the_facade() -> Result<()> {
    use crate::{DynGraph, DynGraphExec, DynGraphPool};
    let device = AnyDevice::open("mock:discrete", 0)?;
    let stream = device.create_stream()?;
    let pool = device.graph_pool();
    stream.begin_capture(&pool)?;
    assert!(stream.is_capturing());
    let output = device.allocate(4096, MemoryKind::Device, &stream)?;
    stream.fill(&output, 0, 4096, 9)?;
    let graph = stream.end_capture()?;
    assert!(!stream.is_capturing());
    assert!(graph.node_count() >= 1);
    assert!(
        pool.stats().reserved_bytes >= 4096,
        "the capture's buffer came from the pool"
    );
    let exec = graph.instantiate()?;
    exec.launch(&stream)?;
    let mut back = vec![0; 4096];
    stream.read(&output, 0, &mut back)?;
    assert!(back.iter().all(|&b| b == 9));
    Ok(())
}

#[cfg(feature = "mock")]
#[test]
fn adopting_a_stream_outside_cuda_names_the_backend() {
    let device = AnyDevice::open("mock", 0).unwrap();
    // SAFETY: the mock never dereferences the handle; it refuses adoption.
    let err = unsafe { device.adopt_stream(std::ptr::null_mut()) }.unwrap_err();
    assert!(
        err.to_string().contains("only the CUDA backend") && err.to_string().contains("mock"),
        "{err}"
    );
}

#[cfg(feature = "mock")]
#[test]
fn sleep_keeps_the_named_buffers_and_poisons_the_rest_through_the_facade() -> Result<()> {
    let growable = crate::PoolConfig {
        segments: crate::SegmentStrategy::Growable,
        ..crate::PoolConfig::default()
    };
    let device = AnyDevice::open_with("mock", 0, growable)?;
    let stream = device.create_stream()?;
    let kept = device.allocate(3 << 20, MemoryKind::Device, &stream)?;
    let discarded = device.allocate(1 << 20, MemoryKind::Device, &stream)?;
    let pattern: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    stream.write(&kept, 0, &pattern)?;
    stream.fill(&discarded, 0, 1 << 20, 0x11)?;
    stream.synchronize()?;
    let addresses = (kept.address(), discarded.address());

    let slept = device.sleep(&[&kept])?;
    assert_eq!(slept.kept_bytes, 3 << 20);
    assert!(slept.discarded_bytes >= 1 << 20, "{slept:?}");
    assert!(device.memory_stats().asleep_bytes >= 4 << 20);
    let woken = device.wake()?;
    assert_eq!(woken.restored_bytes, 3 << 20);
    assert_eq!(device.memory_stats().asleep_bytes, 0);
    assert_eq!(
        (kept.address(), discarded.address()),
        addresses,
        "addresses survive sleep"
    );

    let mut back = vec![0; 3 << 20];
    stream.read(&kept, 0, &mut back)?;
    assert!(back == pattern, "the kept buffer came back changed");
    let mut gone = vec![0; 1 << 20];
    stream.read(&discarded, 0, &mut gone)?;
    assert!(gone.iter().all(|&b| b == gpuhal_mock::DISCARDED));

    // Native segments cannot sleep: refused, and nothing is released.
    let native = AnyDevice::open("mock", 0)?;
    let native_stream = native.create_stream()?;
    let buffer = native.allocate(4096, MemoryKind::Device, &native_stream)?;
    assert!(matches!(native.sleep(&[&buffer]), Err(Error::Unsupported { .. })));
    // A buffer of another device is refused by name.
    let err = device.sleep(&[&buffer]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    Ok(())
}

#[cfg(feature = "mock")]
mod sharing {
    use gpuhal_mock::{MockBackend, MockConfig, MockDevice};

    use super::*;

    fn machine_of_two() -> Result<(AnyDevice, AnyDevice)> {
        let config = |ordinal| MockConfig {
            ordinal,
            sharing: true,
            ..MockConfig::default()
        };
        let mut devices = MockDevice::open_machine(&[config(0), config(1)])?.into_iter();
        let mut next = || {
            devices
                .next()
                .map(AnyDevice::from_native::<MockBackend>)
                .ok_or_else(|| Error::invalid("machine_of_two", "the mock opened fewer devices than asked"))
        };
        Ok((next()?, next()?))
    }

    #[test]
    fn an_export_imported_on_a_peer_is_read_written_and_copied_by_its_streams() -> Result<()> {
        let (a, b) = machine_of_two()?;
        assert!(a.can_access_peer(&b) && !a.can_access_peer(&a));
        let (on_a, on_b) = (a.create_stream()?, b.create_stream()?);
        let buffer = a.allocate(8192, MemoryKind::Device, &on_a)?;
        on_a.fill(&buffer, 0, 8192, 0x11)?;
        let handle = a.export(&buffer)?;
        assert_eq!((handle.len, handle.backend), (8192, "mock"));
        let (ready, ready_handle) = a.shared_event()?;
        ready.record(&on_a)?;

        // Without access to the exporter, the import is refused naming both devices.
        let err = b.import_shared(&handle).unwrap_err();
        assert!(matches!(err, Error::PeerAccess { .. }), "{err:?}");
        b.enable_peer_access(&a)?;
        let imported = b.import_shared(&handle)?;
        assert_eq!(
            (imported.len(), imported.device(), imported.backend()),
            (8192, b.info().id, "mock")
        );
        let ready_on_b = b.import_event(&ready_handle)?;
        on_b.wait_event(&ready_on_b)?;
        let mut back = vec![0; 8192];
        on_b.read(&imported, 0, &mut back)?;
        assert!(back.iter().all(|&byte| byte == 0x11));
        // The importer answers into the shared memory and copies it into its own buffer.
        on_b.fill(&imported, 4096, 4096, 0x22)?;
        let local = b.allocate(8192, MemoryKind::Device, &on_b)?;
        on_b.copy(&imported, 0, &local, 0, 8192)?;
        let answered = b.import_event(&ready_handle)?;
        answered.record(&on_b)?;
        on_a.wait_event(&ready)?;
        on_a.read(&buffer, 0, &mut back)?;
        assert!(back[..4096].iter().all(|&byte| byte == 0x11) && back[4096..].iter().all(|&byte| byte == 0x22));
        on_b.read(&local, 0, &mut back)?;
        assert!(back[4096..].iter().all(|&byte| byte == 0x22));
        Ok(())
    }

    #[test]
    fn sharing_needs_a_sharing_device_and_the_exporter_keeps_the_memory() -> Result<()> {
        let plain = AnyDevice::open("mock", 0)?;
        let stream = plain.create_stream()?;
        let buffer = plain.allocate(256, MemoryKind::Device, &stream)?;
        let err = plain.export(&buffer).unwrap_err();
        assert!(err.to_string().contains("sharing enabled"), "{err}");
        assert!(matches!(
            plain.enable_peer_access(&plain),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            AnyDevice::open_shared("mock:minimal", 0, crate::PoolConfig::default()),
            Err(Error::Unsupported { .. })
        ));

        let device = AnyDevice::open_shared("mock", 0, crate::PoolConfig::default())?;
        let stream = device.create_stream()?;
        let shared = device.allocate(4096, MemoryKind::Device, &stream)?;
        stream.fill(&shared, 0, 4096, 3)?;
        stream.synchronize()?;
        let handle = device.export(&shared)?;
        let imported = device.import_shared(&handle)?;
        // Another device's buffer is refused by the exporter.
        assert!(matches!(device.export(&buffer), Err(Error::ForeignHandle { .. })));
        drop(shared);
        let reused = device.allocate(4096, MemoryKind::Device, &stream)?;
        stream.fill(&reused, 0, 4096, 8)?;
        stream.synchronize()?;
        let mut out = vec![0; 4096];
        let err = stream.read(&imported, 0, &mut out).unwrap_err();
        assert!(matches!(err, Error::UseAfterFree { .. }), "{err:?}");
        Ok(())
    }
}
