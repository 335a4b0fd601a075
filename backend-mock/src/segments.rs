//! The mock's model of growable virtual-memory segments: device memory is mapped in
//! multiples of a granularity, and a released block is unmapped only once the stream it
//! was freed on has run everything enqueued before the free (and nothing still uses it).

use std::sync::atomic::{AtomicU64, Ordering};

use gpuhal_hal::{Error, Result};

/// What a mock device opened with [`SegmentStrategy::Growable`](gpuhal_hal::SegmentStrategy)
/// has mapped.
#[derive(Debug)]
pub(crate) struct MockSegments {
    granularity: u64,
    mapped_bytes: AtomicU64,
    maps: AtomicU64,
    unmaps: AtomicU64,
    asleep_bytes: AtomicU64,
}

/// A snapshot of a mock device's mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MappingStats {
    /// The granularity memory is mapped in.
    pub granularity: u64,
    /// Bytes mapped now (released blocks whose stream has not reached the free included).
    pub mapped_bytes: u64,
    /// Blocks mapped so far.
    pub maps: u64,
    /// Blocks unmapped so far.
    pub unmaps: u64,
    /// Bytes of blocks asleep (not mapped, addresses kept).
    pub asleep_bytes: u64,
}

impl MockSegments {
    pub(crate) fn new(granularity: u64) -> Self {
        MockSegments {
            granularity: granularity.max(1),
            mapped_bytes: AtomicU64::new(0),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            asleep_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Refuses a request as the driver does unless it is whole granules.
    pub(crate) fn check(&self, size: u64) -> Result<()> {
        if !size.is_multiple_of(self.granularity) {
            return Err(Error::invalid(
                "native allocate",
                format!(
                    "{size} bytes is no multiple of the {}-byte mapping granularity of growable segments",
                    self.granularity
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn map(&self, size: u64) {
        self.maps.fetch_add(1, Ordering::Relaxed);
        self.mapped_bytes.fetch_add(size, Ordering::Relaxed);
    }

    pub(crate) fn unmapped(&self, size: u64) {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        self.mapped_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// A block's physical memory released by sleep.
    pub(crate) fn fell_asleep(&self, size: u64) {
        self.unmapped(size);
        self.asleep_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// A sleeping block mapped again by wake.
    pub(crate) fn woke(&self, size: u64) {
        self.asleep_bytes.fetch_sub(size, Ordering::Relaxed);
        self.map(size);
    }

    /// A sleeping block freed: nothing was mapped to unmap.
    pub(crate) fn freed_asleep(&self, size: u64) {
        self.asleep_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    pub(crate) fn asleep_bytes(&self) -> u64 {
        self.asleep_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> MappingStats {
        MappingStats {
            granularity: self.granularity,
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            maps: self.maps.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
            asleep_bytes: self.asleep_bytes.load(Ordering::Relaxed),
        }
    }
}
