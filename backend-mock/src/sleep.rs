//! The mock's sleep and wake: what growable segments do on a GPU, on host memory.
//!
//! Sleeping memory is "unmapped": work that touches it is refused with the reason, its
//! bytes not kept are overwritten with [`DISCARDED`] (so a test that relies on them
//! after wake fails, as it would on a GPU, where they come back undefined), and the
//! mapping counters move it from mapped to asleep.

use gpuhal_hal::{Error, Result, SleepReport, WakeReport};

use crate::checker::HOST;
use crate::raw::{self, Target};
use crate::state::DeviceState;

/// The byte sleeping memory that was not kept reads as after wake.
pub const DISCARDED: u8 = 0xA5;

impl DeviceState {
    /// Puts every live block of growable segments to sleep, keeping the ranges in
    /// `keep` (address, length).
    pub(crate) fn sleep(&self, keep: &[(u64, u64)]) -> Result<SleepReport> {
        let Some(segments) = &self.segments else {
            return Err(Error::Unsupported {
                operation: "sleep (open the device with SegmentStrategy::Growable)",
                needed: gpuhal_hal::Capabilities::GROWABLE_SEGMENTS,
            });
        };
        // Whatever was enqueued finishes with the memory first, as a GPU context
        // synchronise would make it.
        for queue in self.live_queues() {
            let seen = self.checker.lock().clock(queue.agent);
            queue.drain();
            self.checker.lock().join(HOST, &seen);
        }
        let mut report = SleepReport::default();
        for allocation in self.lifetimes.natives_of(self.id) {
            if allocation.mapping.is_none() {
                continue;
            }
            let mut asleep = allocation.asleep.lock();
            if asleep.is_some() {
                continue;
            }
            let (start, end) = (allocation.address(), allocation.address() + allocation.size);
            let mut kept = Vec::new();
            for &(address, len) in keep {
                let (from, to) = (address.max(start), address.saturating_add(len).min(end));
                if from >= to {
                    continue;
                }
                let range = Target::native(allocation.clone(), from - start, to - from)
                    .ok_or_else(|| Error::invalid("sleep", format!("{from:#x}..{to:#x} is outside its block")))?;
                kept.push((from - start, raw::read(&range)));
            }
            if let Some(whole) = Target::native(allocation.clone(), 0, allocation.size) {
                raw::fill(&whole, DISCARDED);
            }
            let kept_bytes: u64 = kept.iter().map(|(_, bytes)| bytes.len() as u64).sum();
            report.kept_bytes += kept_bytes;
            report.discarded_bytes += allocation.size - kept_bytes;
            report.released_bytes += allocation.size;
            report.blocks += 1;
            *asleep = Some(kept);
            segments.fell_asleep(allocation.size);
            self.note_sleep(allocation.size, true);
        }
        Ok(report)
    }

    /// Maps every sleeping block again and restores what was kept.
    pub(crate) fn wake(&self) -> Result<WakeReport> {
        let Some(segments) = &self.segments else {
            return Err(Error::Unsupported {
                operation: "wake (open the device with SegmentStrategy::Growable)",
                needed: gpuhal_hal::Capabilities::GROWABLE_SEGMENTS,
            });
        };
        let mut report = WakeReport::default();
        for allocation in self.lifetimes.natives_of(self.id) {
            let Some(kept) = allocation.asleep.lock().take() else {
                continue;
            };
            for (offset, bytes) in kept {
                if let Some(range) = Target::native(allocation.clone(), offset, bytes.len() as u64) {
                    raw::write(&range, &bytes);
                    report.restored_bytes += bytes.len() as u64;
                }
            }
            segments.woke(allocation.size);
            self.note_sleep(allocation.size, false);
            report.mapped_bytes += allocation.size;
            report.blocks += 1;
        }
        Ok(report)
    }

    /// Bytes of blocks asleep.
    pub(crate) fn asleep_bytes(&self) -> u64 {
        self.segments.as_ref().map_or(0, |s| s.asleep_bytes())
    }
}
