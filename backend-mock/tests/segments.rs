//! The mock's growable segments: whole granules mapped, unmapped in stream order.

use std::time::Duration;

use gpuhal_hal::{Device, Error, MemoryKind, PoolConfig, SegmentStrategy, Stream};
use gpuhal_mock::{MockConfig, MockDevice, Profile};

fn growable(profile: Profile, delay: Option<Duration>) -> gpuhal_hal::Result<MockDevice> {
    MockDevice::open(MockConfig {
        profile,
        stream_delay: delay,
        pool: PoolConfig {
            segments: SegmentStrategy::Growable,
            ..PoolConfig::default()
        },
        ..MockConfig::default()
    })
}

#[test]
fn a_released_block_is_unmapped_only_after_its_stream_passes_the_free() -> gpuhal_hal::Result<()> {
    let device = growable(Profile::Discrete, Some(Duration::from_millis(200)))?;
    let stream = device.create_stream()?;
    let buffer = device.allocate(3 << 20, MemoryKind::Device, &stream)?;
    let stats = device.mapping_stats().expect("opened with growable segments");
    assert_eq!(
        (stats.granularity, stats.mapped_bytes, stats.maps),
        (2 << 20, 4 << 20, 1)
    );
    stream.fill(&buffer, 0, buffer.len(), 9)?;
    drop(buffer);
    assert_eq!(device.allocator().trim(), 4 << 20);
    // The fill is still running (the stream is slow): the memory stays mapped.
    let pending = device.mapping_stats().expect("growable");
    assert_eq!((pending.mapped_bytes, pending.unmaps), (4 << 20, 0));
    stream.synchronize()?;
    let done = device.mapping_stats().expect("growable");
    assert_eq!((done.mapped_bytes, done.unmaps), (0, 1));
    Ok(())
}

#[test]
fn native_segments_map_nothing_and_minimal_devices_refuse_growable_ones() {
    let device = MockDevice::open(MockConfig::default()).expect("a default mock device");
    assert_eq!(device.mapping_stats(), None);
    let refused = growable(Profile::Minimal, None).err();
    assert!(
        matches!(refused, Some(Error::Unsupported { .. })),
        "minimal profile opened with growable segments: {refused:?}"
    );
}
