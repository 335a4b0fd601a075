//! Managed memory: advice, prefetch and the placement state read back from it.

use std::sync::Arc;

use gpuhal_hal::{check_device, Advice, AsRegion, Capabilities, Error, Location, ManagedRangeInfo, MemoryKind, Result};

use crate::queue::Action;
use crate::raw::NativeAllocation;
use crate::state::DeviceState;
use crate::stream::MockStream;

impl DeviceState {
    fn require(&self, operation: &'static str, needed: Capabilities) -> Result<()> {
        if self.capabilities.contains(needed) {
            Ok(())
        } else {
            Err(Error::Unsupported { operation, needed })
        }
    }

    /// The live managed allocation `region` lies in.
    fn managed_allocation(&self, operation: &'static str, region: &dyn AsRegion) -> Result<Arc<NativeAllocation>> {
        let region = region.region();
        check_device(operation, "buffer", self.id, region.device)?;
        self.require(operation, Capabilities::MANAGED)?;
        if region.kind != MemoryKind::Managed {
            return Err(Error::invalid(
                operation,
                format!("needs managed memory, but the region is {:?} memory", region.kind),
            ));
        }
        if region.len == 0 {
            return Err(Error::invalid(operation, "the region is empty"));
        }
        self.lifetimes
            .native(region.native)
            .filter(|a| region.address >= a.address() && region.address + region.len <= a.address() + a.size)
            .ok_or_else(|| {
                Error::invalid(
                    operation,
                    format!(
                        "{:#x} (+{} bytes) is not live managed memory of this device",
                        region.address, region.len
                    ),
                )
            })
    }

    /// Applies `advice` to the managed allocation holding `region`. A preferred location
    /// replaces the previous one; the other flags accumulate.
    pub(crate) fn advise(&self, region: &dyn AsRegion, advice: Advice) -> Result<()> {
        self.require("advise", Capabilities::MANAGED_ADVICE)?;
        let preferred = Advice::PREFER_DEVICE | Advice::PREFER_HOST;
        if advice.contains(preferred) {
            return Err(Error::invalid(
                "advise",
                "PREFER_DEVICE and PREFER_HOST are exclusive: a range has one preferred location",
            ));
        }
        let allocation = self.managed_allocation("advise", region)?;
        let mut managed = allocation.managed.lock();
        if advice.intersects(preferred) {
            managed.advice.remove(preferred);
        }
        managed.advice |= advice;
        Ok(())
    }

    /// Prefetches the managed allocation holding `region` to `to`, ordered on `stream`.
    pub(crate) fn prefetch(&self, region: &dyn AsRegion, to: Location, stream: &MockStream) -> Result<()> {
        check_device("prefetch", "stream", self.id, stream.device())?;
        let allocation = self.managed_allocation("prefetch", region)?;
        allocation.managed.lock().last_prefetch = Some(to);
        // Host memory needs no migrating: the prefetch is an ordering point only.
        stream.queue().push(Action::Nothing)?;
        Ok(())
    }

    pub(crate) fn managed_range_info(&self, region: &dyn AsRegion) -> Result<ManagedRangeInfo> {
        let allocation = self.managed_allocation("managed_range_info", region)?;
        let info = *allocation.managed.lock();
        Ok(info)
    }
}
