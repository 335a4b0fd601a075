//! Framework code written once against `gpuhal::Backend`, run and tested on the mock.
//!
//! `cargo run --example generic` runs it under each mock profile; `cargo test --example
//! generic` runs its tests, which is how your own crate's tests can run on any machine.
//! The same functions run unchanged on `gpuhal::cuda::CudaBackend` or
//! `gpuhal::vulkan::VulkanBackend`.

use gpuhal::mock::{MockBackend, MockConfig, MockDevice, Profile};
use gpuhal::{Backend, Device, Event, MemoryKind, Result, Stream};

/// Fills a buffer on the device, copies it and reads the copy back: a framework's
/// `zeros` + `clone` + `to_host`. Each stream has its own cache: keep streams, don't
/// create one per operation.
fn filled_copy<B: Backend>(device: &B::Device, stream: &B::Stream, len: u64, value: u8) -> Result<Vec<u8>> {
    let source = device.allocate(len, MemoryKind::Device, stream)?;
    let copy = device.allocate(len, MemoryKind::Device, stream)?;
    stream.fill(&source, 0, len, value)?;
    stream.copy(&source, 0, &copy, 0, len)?;
    let mut host = vec![0; len as usize];
    stream.read(&copy, 0, &mut host)?;
    Ok(host) // both buffers drop back into the stream's cache, stream-ordered
}

/// Produces a buffer on one stream and consumes it on another. The event orders the
/// consumer after the producer; `record_use` tells the allocator the consumer uses the
/// buffer, so its memory is not handed out again until the consumer is done with it.
fn hand_off<B: Backend>(device: &B::Device, len: u64) -> Result<Vec<u8>> {
    let (producer, consumer) = (device.create_stream()?, device.create_stream()?);
    let buffer = device.allocate(len, MemoryKind::Device, &producer)?;
    producer.fill(&buffer, 0, len, 3)?;
    let filled = device.event(false)?;
    filled.record(&producer)?;
    consumer.wait_event(&filled)?;
    buffer.record_use(consumer.cache());
    let mut host = vec![0; len as usize];
    consumer.read(&buffer, 0, &mut host)?;
    Ok(host)
}

fn main() -> Result<()> {
    for profile in [Profile::Discrete, Profile::Coherent, Profile::Minimal] {
        let device = MockDevice::open(MockConfig {
            profile,
            ..Default::default()
        })?;
        let stream = device.create_stream()?;
        let copy = filled_copy::<MockBackend>(&device, &stream, 1 << 20, 7)?;
        // The second call's buffers come from the stream's cache: no native allocation.
        filled_copy::<MockBackend>(&device, &stream, 1 << 20, 8)?;
        let handed = hand_off::<MockBackend>(&device, 4096)?;
        let stats = device.memory_stats();
        println!(
            "mock {profile:?}: copy ok: {}, hand-off ok: {}; native allocations {}, cache hits {}, live bytes {}",
            copy.iter().all(|&b| b == 7),
            handed.iter().all(|&b| b == 3),
            stats.native_allocations,
            stats.cache_hits,
            stats.live_bytes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuhal::Error;

    fn mock() -> Result<MockDevice> {
        MockDevice::open(MockConfig {
            profile: Profile::Coherent,
            ..Default::default()
        })
    }

    #[test]
    fn filled_copy_returns_the_fill() -> Result<()> {
        let device = mock()?;
        let stream = device.create_stream()?;
        assert_eq!(filled_copy::<MockBackend>(&device, &stream, 4096, 7)?, vec![7; 4096]);
        // Every buffer went back to the allocator.
        assert_eq!(device.memory_stats().live_bytes, 0);
        Ok(())
    }

    #[test]
    fn a_second_call_is_served_from_the_cache() -> Result<()> {
        let device = mock()?;
        let stream = device.create_stream()?;
        filled_copy::<MockBackend>(&device, &stream, 4096, 1)?;
        let before = device.memory_stats();
        filled_copy::<MockBackend>(&device, &stream, 4096, 2)?;
        let after = device.memory_stats();
        assert_eq!(
            after.native_allocations, before.native_allocations,
            "no new native allocation"
        );
        assert!(after.cache_hits > before.cache_hits);
        Ok(())
    }

    #[test]
    fn hand_off_reads_what_the_producer_wrote() -> Result<()> {
        assert_eq!(hand_off::<MockBackend>(&mock()?, 4096)?, vec![3; 4096]);
        Ok(())
    }

    /// The mock is also a checker: the same hand-off without the event is a race, reported
    /// as an error naming both sides instead of reading whatever is there.
    #[test]
    fn the_mock_reports_a_missing_event() -> Result<()> {
        let device = mock()?;
        let (producer, consumer) = (device.create_stream()?, device.create_stream()?);
        let buffer = device.allocate(256, MemoryKind::Device, &producer)?;
        producer.fill(&buffer, 0, 256, 1)?;
        let mut out = [0; 256];
        assert!(matches!(consumer.read(&buffer, 0, &mut out), Err(Error::Race { .. })));
        Ok(())
    }
}
