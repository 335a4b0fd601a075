//! The mock's sleep and wake: kept buffers come back, the rest reads as discarded, and
//! work on sleeping memory is refused with the reason.

use gpuhal_hal::{Device, Error, MemoryKind, PoolConfig, SegmentStrategy, Stream};
use gpuhal_mock::{MockConfig, MockDevice, DISCARDED};

fn growable() -> gpuhal_hal::Result<MockDevice> {
    MockDevice::open(MockConfig {
        pool: PoolConfig {
            segments: SegmentStrategy::Growable,
            ..PoolConfig::default()
        },
        ..MockConfig::default()
    })
}

#[test]
fn sleep_keeps_what_is_named_and_discards_the_rest() -> gpuhal_hal::Result<()> {
    let device = growable()?;
    let stream = device.create_stream()?;
    let weights = device.allocate(3 << 20, MemoryKind::Device, &stream)?;
    let kv_cache = device.allocate(8 << 20, MemoryKind::Device, &stream)?;
    drop(device.allocate(6 << 20, MemoryKind::Device, &stream)?);
    stream.fill(&weights, 0, weights.len(), 7)?;
    stream.fill(&kv_cache, 0, kv_cache.len(), 9)?;
    let (free_awake, capacity) = device.memory_info()?;

    let slept = device.allocator().sleep(&[&weights])?;
    assert_eq!(slept.kept_bytes, 3 << 20);
    // 4 MiB (weights, rounded to granules) + 8 MiB asleep, 6 MiB idle released.
    assert_eq!(slept.released_bytes, 18 << 20);
    assert_eq!(slept.discarded_bytes, (4 << 20) + (8 << 20) - (3 << 20));
    assert_eq!(device.memory_stats().asleep_bytes, 12 << 20);
    let mapping = device.mapping_stats().expect("growable");
    assert_eq!((mapping.mapped_bytes, mapping.asleep_bytes), (0, 12 << 20));
    assert_eq!(device.memory_info()?, (capacity, capacity), "nothing held while asleep");
    assert!(free_awake < capacity);

    let refused = stream.fill(&kv_cache, 0, 16, 1);
    let message = format!("{:?}", refused.err());
    assert!(message.contains("asleep"), "work on sleeping memory: {message}");

    let woken = device.allocator().wake()?;
    assert_eq!((woken.restored_bytes, woken.mapped_bytes), (3 << 20, 12 << 20));
    assert_eq!(device.memory_stats().asleep_bytes, 0);
    let mut back = vec![0u8; weights.len() as usize];
    stream.read(&weights, 0, &mut back)?;
    assert!(back.iter().all(|&b| b == 7), "the kept buffer is restored");
    let mut back = vec![0u8; 64];
    stream.read(&kv_cache, 0, &mut back)?;
    assert!(
        back.iter().all(|&b| b == DISCARDED),
        "the discarded buffer's old contents are gone"
    );
    Ok(())
}

#[test]
fn a_buffer_dropped_while_asleep_is_freed_and_counted_once() -> gpuhal_hal::Result<()> {
    let device = growable()?;
    let stream = device.create_stream()?;
    let buffer = device.allocate(4 << 20, MemoryKind::Device, &stream)?;
    let other = device.allocate(2 << 20, MemoryKind::Device, &stream)?;
    device.allocator().sleep(&[])?;
    drop(buffer);
    device.allocator().trim();
    stream.synchronize()?;
    assert_eq!(
        device.memory_stats().asleep_bytes,
        2 << 20,
        "only the live block sleeps on"
    );
    device.allocator().wake()?;
    drop(other);
    device.allocator().trim();
    stream.synchronize()?;
    let (free, capacity) = device.memory_info()?;
    assert_eq!(free, capacity, "everything given back exactly once");
    assert_eq!(device.mapping_stats().expect("growable").mapped_bytes, 0);
    Ok(())
}

#[test]
fn sleep_needs_growable_segments() -> gpuhal_hal::Result<()> {
    let device = MockDevice::open(MockConfig::default())?;
    let stream = device.create_stream()?;
    drop(device.allocate(1 << 20, MemoryKind::Device, &stream)?);
    let refused = device.allocator().sleep(&[]);
    assert!(matches!(refused, Err(Error::Unsupported { .. })), "{refused:?}");
    assert_eq!(device.memory_stats().cached_bytes, 1 << 20, "the cache is untouched");
    assert!(matches!(device.allocator().wake(), Err(Error::Unsupported { .. })));
    Ok(())
}
