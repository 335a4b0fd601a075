//! Fences and events really block stream workers, as on a GPU.

use std::time::Duration;

use gpuhal_hal::{Device, Error, Event, Fence, MemoryKind, Stream};
use gpuhal_mock::{MockDevice, Profile};

#[test]
fn a_stream_fence_wait_blocks_its_later_work_until_the_signal() {
    let device = MockDevice::with_profile(Profile::Discrete).unwrap();
    let stream = device.create_stream().unwrap();
    let fence = device.create_fence(0).unwrap();
    let buffer = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    stream.wait(&fence, 2).unwrap();
    stream.fill(&buffer, 0, 4096, 9).unwrap();
    let after = device.event(false).unwrap();
    after.record(&stream).unwrap();
    fence.signal(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !after.is_complete().unwrap(),
        "work after the wait ran before the fence reached 2"
    );
    fence.signal(2).unwrap();
    after.synchronize().unwrap();
    let mut out = [0u8; 4];
    stream.read(&buffer, 0, &mut out).unwrap();
    assert_eq!(out, [9; 4]);
}

#[test]
fn a_wait_event_blocks_until_the_other_stream_reaches_the_event() {
    let device = MockDevice::with_profile(Profile::Coherent).unwrap();
    let (gate, follower) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let fence = device.create_fence(0).unwrap();
    gate.wait(&fence, 1).unwrap();
    let gate_passed = device.event(false).unwrap();
    gate_passed.record(&gate).unwrap();
    follower.wait_event(&gate_passed).unwrap();
    let follower_done = device.event(false).unwrap();
    follower_done.record(&follower).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!follower_done.is_complete().unwrap());
    fence.signal(1).unwrap();
    follower_done.synchronize().unwrap();
    assert!(gate_passed.is_complete().unwrap());
}

#[test]
fn a_timed_out_cpu_wait_leaves_the_fence_usable_and_regressions_are_refused() {
    let device = MockDevice::with_profile(Profile::Minimal).unwrap();
    let stream = device.create_stream().unwrap();
    let fence = device.create_fence(0).unwrap();
    let err = fence.wait(1, Duration::from_millis(20)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                target: 1,
                reached: 0,
                ..
            }
        ),
        "{err}"
    );
    stream.signal(&fence, 5).unwrap();
    assert!(matches!(
        fence.signal(4),
        Err(Error::FenceRegressed {
            requested: 4,
            current: 5
        })
    ));
    assert!(matches!(stream.signal(&fence, 3), Err(Error::FenceRegressed { .. })));
    stream.signal(&fence, 5).unwrap();
    fence.wait(5, Duration::from_secs(10)).unwrap();
    assert_eq!(fence.value().unwrap(), 5);
}

#[test]
fn timing_events_measure_delayed_work() {
    let device = MockDevice::open(gpuhal_mock::MockConfig {
        stream_delay: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .unwrap();
    let stream = device.create_stream().unwrap();
    let buffer = device.allocate(256, MemoryKind::Device, &stream).unwrap();
    let (start, end) = (device.event(true).unwrap(), device.event(true).unwrap());
    start.record(&stream).unwrap();
    for _ in 0..3 {
        stream.fill(&buffer, 0, 256, 1).unwrap();
    }
    end.record(&stream).unwrap();
    end.synchronize().unwrap();
    let elapsed = start.elapsed(&end).unwrap();
    assert!(elapsed >= Duration::from_millis(30), "{elapsed:?}");
    let untimed = device.event(false).unwrap();
    untimed.record(&stream).unwrap();
    untimed.synchronize().unwrap();
    assert!(matches!(start.elapsed(&untimed), Err(Error::InvalidArgument { .. })));
}

#[test]
fn a_steady_record_and_wait_loop_creates_no_native_events() {
    let device = MockDevice::with_profile(Profile::Discrete).unwrap();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let warm = device.event(false).unwrap();
    drop(warm);
    let created = device.event_stats().native_created;
    for _ in 0..100 {
        let event = device.event(false).unwrap();
        event.record(&a).unwrap();
        b.wait_event(&event).unwrap();
    }
    b.synchronize().unwrap();
    assert_eq!(device.event_stats().native_created, created);
}
