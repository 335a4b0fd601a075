//! Fault injection: capacity, failing native allocations, slow streams.

use std::time::{Duration, Instant};

use gpuhal_hal::{Device, Error, Event, ManagedPolicy, MemoryKind, Stream};
use gpuhal_mock::{MockConfig, MockDevice, Profile};

const MIB: u64 = 1 << 20;

#[test]
fn the_configured_native_allocation_fails_and_the_allocator_keeps_working() {
    let device = MockDevice::open(MockConfig {
        fail_native_allocation: Some(2),
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let first = device.allocate(MIB, MemoryKind::Device, &stream).unwrap();
    let err = device.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap_err();
    assert!(matches!(err, Error::Injected(ref what) if what.contains("#2")), "{err}");
    let third = device.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap();
    stream.fill(&third, 0, 2 * MIB, 1).unwrap();
    stream.fill(&first, 0, MIB, 2).unwrap();
    let mut out = [0u8; 1];
    stream.read(&first, MIB - 1, &mut out).unwrap();
    assert_eq!(out, [2]);
}

#[test]
fn an_injected_failure_counts_from_the_call() {
    let device = MockDevice::with_profile(Profile::Minimal).unwrap();
    let stream = device.create_stream().unwrap();
    let _warm = device.allocate(MIB, MemoryKind::Device, &stream).unwrap();
    device.inject_native_failure(1);
    assert!(matches!(
        device.allocate(4 * MIB, MemoryKind::Device, &stream),
        Err(Error::Injected(_))
    ));
    assert!(device.allocate(4 * MIB, MemoryKind::Device, &stream).is_ok());
}

#[test]
fn capacity_bounds_device_memory_and_the_cache_is_released_to_fit() {
    let device = MockDevice::open(MockConfig {
        capacity: 4 * MIB,
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let big = device.allocate(3 * MIB, MemoryKind::Device, &stream).unwrap();
    assert_eq!(device.memory_info().unwrap(), (MIB, 4 * MIB));
    let err = device.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { requested, .. } if requested == 2 * MIB),
        "{err}"
    );
    drop(big);
    // The 3 MiB block is cached, not free: the retry releases it.
    let fits = device.allocate(2 * MIB, MemoryKind::Device, &stream).unwrap();
    assert!(device.memory_stats().oom_retries >= 1);
    assert_eq!(device.memory_info().unwrap().0, 2 * MIB);
    drop(fits);
}

#[test]
fn pinned_host_memory_does_not_use_device_capacity() {
    let device = MockDevice::open(MockConfig {
        capacity: MIB,
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let _pinned = device.allocate(4 * MIB, MemoryKind::HostPinned, &stream).unwrap();
    assert_eq!(device.memory_info().unwrap(), (MIB, MIB));
}

#[test]
fn managed_memory_beyond_free_capacity_needs_oversubscription() {
    let device = MockDevice::open(MockConfig {
        capacity: 2 * MIB,
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let err = device.allocate(8 * MIB, MemoryKind::Managed, &stream).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    device.set_managed_policy(ManagedPolicy {
        allow_oversubscription: true,
        ..ManagedPolicy::default()
    });
    let managed = device.allocate(8 * MIB, MemoryKind::Managed, &stream).unwrap();
    stream.fill(&managed, 8 * MIB - 1, 1, 4).unwrap();
    let mut out = [0u8; 1];
    stream.read(&managed, 8 * MIB - 1, &mut out).unwrap();
    assert_eq!(out, [4]);
}

#[test]
fn slow_streams_run_each_operation_after_the_delay_without_blocking_the_caller() {
    let delay = Duration::from_millis(40);
    let device = MockDevice::open(MockConfig {
        stream_delay: Some(delay),
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let buffer = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let started = Instant::now();
    for value in 0..4 {
        stream.fill(&buffer, 0, 4096, value).unwrap();
    }
    let done = device.event(false).unwrap();
    done.record(&stream).unwrap();
    assert!(!done.is_complete().unwrap(), "four delayed operations finished at once");
    stream.synchronize().unwrap();
    assert!(
        started.elapsed() >= delay * 5,
        "synchronize returned before the delayed work ran"
    );
    assert!(done.is_complete().unwrap());
}
