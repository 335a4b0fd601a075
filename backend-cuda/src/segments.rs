//! Growable virtual-memory segments: device memory that gpuhal maps itself.
//!
//! Device addresses are reserved in large ranges once (`cuMemAddressReserve`); each native
//! block the caching pool asks for is physical memory created for it (`cuMemCreate`, a
//! multiple of the mapping granularity) and mapped at a free place of a reserved range
//! (`cuMemMap`, `cuMemSetAccess`). Releasing a block unmaps it and releases its physical
//! memory, so the device holds what the pool reserves and no more: the stream-ordered
//! pool's chunks, which return to the device only when nothing in them is allocated, are
//! not in the way.
//!
//! Unmapping respects stream order: a release records an event on the stream the block
//! was freed on (the pool has already waited for other streams' uses), and the range is
//! unmapped once that event has completed, checked on later native calls. Only when
//! physical memory runs out does an allocation wait on the CPU, for those events alone,
//! never for the whole device.

use std::collections::{BTreeMap, HashMap};

use gpuhal_hal::{Error, NativeError, Result};
use parking_lot::Mutex;

use crate::error::Context as _;
use crate::event::CudaEventPool;
use crate::memory::CudaMarker;
use crate::raw::{self, CUdeviceptr};
use crate::stream::StreamHandle;

/// Address space reserved at a time: more than any device has, so one range is the rule.
const RESERVE_STEP: u64 = 256 << 30;

/// A mapped block: its physical memory.
struct Mapped {
    size: u64,
    handle: u64,
}

/// A released block waiting for its stream to pass its last use.
struct Unmapping {
    address: CUdeviceptr,
    mapped: Mapped,
    event: Option<CudaMarker>,
}

#[derive(Default)]
struct State {
    /// Reserved ranges, for freeing them at the end.
    reserved: Vec<(CUdeviceptr, u64)>,
    /// Unmapped parts of the reserved ranges, by start address (merged with neighbours).
    free: BTreeMap<CUdeviceptr, u64>,
    mapped: HashMap<CUdeviceptr, Mapped>,
    unmapping: Vec<Unmapping>,
    mapped_bytes: u64,
}

/// The growable segments of one device.
pub(crate) struct GrowableSegments {
    ordinal: i32,
    granularity: u64,
    events: CudaEventPool,
    state: Mutex<State>,
}

impl GrowableSegments {
    /// Segments of device `ordinal` (its context current).
    pub(crate) fn new(ordinal: i32, total_memory: u64, events: CudaEventPool) -> Result<Self> {
        let granularity = raw::mem_allocation_granularity(ordinal)
            .context(|| format!("reading the mapping granularity of CUDA device {ordinal}"))?
            .max(1);
        let segments = GrowableSegments {
            ordinal,
            granularity,
            events,
            state: Mutex::new(State::default()),
        };
        let first = total_memory.next_multiple_of(granularity).max(RESERVE_STEP);
        segments.reserve(&mut segments.state.lock(), first)?;
        Ok(segments)
    }

    /// The size physical memory is created and mapped in.
    pub(crate) fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Bytes of physical memory mapped now (blocks waiting to be unmapped included).
    pub(crate) fn mapped_bytes(&self) -> u64 {
        self.state.lock().mapped_bytes
    }

    fn reserve(&self, state: &mut State, size: u64) -> Result<()> {
        let address = raw::mem_address_reserve(size, self.granularity).context(|| {
            format!(
                "reserving {size} bytes of address space on CUDA device {}",
                self.ordinal
            )
        })?;
        state.reserved.push((address, size));
        give_range(&mut state.free, address, size);
        Ok(())
    }

    /// Maps `size` bytes (rounded up to the granularity) at a free address; returns the
    /// address and the size mapped.
    pub(crate) fn allocate(&self, size: u64) -> Result<(CUdeviceptr, u64)> {
        let size = size.max(1).next_multiple_of(self.granularity);
        let mut state = self.state.lock();
        self.unmap_completed(&mut state, false);
        let handle = match raw::mem_create(size, self.ordinal) {
            Ok(handle) => handle,
            Err(native) if native.name.contains("OUT_OF_MEMORY") && !state.unmapping.is_empty() => {
                // Memory released but not yet unmapped: wait for the work that last used
                // it (those events only) and try once more.
                self.unmap_completed(&mut state, true);
                raw::mem_create(size, self.ordinal).context(|| self.what("creating", size))?
            }
            Err(native) => return Err(Error::native(self.what("creating", size), native)),
        };
        let address = match take_range(&mut state.free, size) {
            Some(address) => address,
            None => {
                let grown = self.reserve(&mut state, size.max(RESERVE_STEP));
                match grown.and_then(|()| take_range(&mut state.free, size).ok_or_else(|| self.no_room(size))) {
                    Ok(address) => address,
                    Err(err) => {
                        let _ = raw::mem_release(handle);
                        return Err(err);
                    }
                }
            }
        };
        if let Err(native) = raw::mem_map_read_write(address, size, handle, self.ordinal) {
            let _ = raw::mem_release(handle);
            give_range(&mut state.free, address, size);
            return Err(Error::native(self.what("mapping", size), native));
        }
        state.mapped.insert(address, Mapped { size, handle });
        state.mapped_bytes += size;
        Ok((address, size))
    }

    /// Releases the block at `address` once the work `stream` has enqueued so far has
    /// completed (at once when `stream` is `None` and the device is idle: see below).
    pub(crate) fn release(&self, address: CUdeviceptr, stream: Option<&StreamHandle>) -> Result<()> {
        let mut state = self.state.lock();
        let Some(mapped) = state.mapped.remove(&address) else {
            return Err(Error::invalid(
                "free",
                format!(
                    "{address:#x} is no block of CUDA device {}'s growable segments",
                    self.ordinal
                ),
            ));
        };
        let event = match stream {
            Some(stream) => {
                let event = self.events.acquire(false)?;
                if let Err(native) = raw::event_record(event.raw(), stream.raw()) {
                    state.mapped.insert(address, mapped);
                    return Err(Error::native(self.what("ordering the release of", 0), native));
                }
                Some(event)
            }
            None => {
                // The pool frees without a stream only memory no stream will touch again
                // (it never gives this path graph-pool memory, which comes from
                // `cuMemAlloc`); the context is synchronised to be safe, off any hot path.
                raw::ctx_synchronize().context(|| self.what("synchronising before releasing", mapped.size))?;
                None
            }
        };
        state.unmapping.push(Unmapping { address, mapped, event });
        self.unmap_completed(&mut state, false);
        Ok(())
    }

    /// Unmaps released blocks whose stream has passed their last use; with `wait`, waits
    /// for each one's event first.
    fn unmap_completed(&self, state: &mut State, wait: bool) {
        let mut index = 0;
        while index < state.unmapping.len() {
            let done = match &state.unmapping[index].event {
                None => true,
                Some(event) if wait => raw::event_synchronize(event.raw()).is_ok(),
                Some(event) => raw::event_query(event.raw()).unwrap_or(false),
            };
            if !done {
                index += 1;
                continue;
            }
            let unmapping = state.unmapping.swap_remove(index);
            let Unmapping { address, mapped, .. } = unmapping;
            // A failure leaves the range mapped and out of the free list: lost address
            // space, never a range handed out twice.
            if raw::mem_unmap(address, mapped.size).is_ok() {
                give_range(&mut state.free, address, mapped.size);
            }
            let _ = raw::mem_release(mapped.handle);
            state.mapped_bytes -= mapped.size;
        }
    }

    /// Unmaps what has completed since the last native call (for `trim`'s callers who
    /// want the device's free memory to show the release now).
    pub(crate) fn unmap_released(&self, wait: bool) {
        let mut state = self.state.lock();
        self.unmap_completed(&mut state, wait);
    }

    fn what(&self, doing: &str, size: u64) -> String {
        format!(
            "{doing} {size} bytes of physical memory in a growable segment of CUDA device {}",
            self.ordinal
        )
    }

    fn no_room(&self, size: u64) -> Error {
        Error::native(
            format!(
                "finding {size} bytes of address space in CUDA device {}'s reserved ranges",
                self.ordinal
            ),
            NativeError {
                call: "cuMemAddressReserve",
                code: 2,
                name: "CUDA_ERROR_OUT_OF_MEMORY".into(),
            },
        )
    }
}

impl Drop for GrowableSegments {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        let mut pending = std::mem::take(&mut state.unmapping);
        for unmapping in &pending {
            if let Some(event) = &unmapping.event {
                let _ = raw::event_synchronize(event.raw());
            }
        }
        let mapped: Vec<(CUdeviceptr, Mapped)> = state.mapped.drain().collect();
        for (address, mapped) in mapped
            .into_iter()
            .chain(pending.drain(..).map(|u| (u.address, u.mapped)))
        {
            let _ = raw::mem_unmap(address, mapped.size);
            let _ = raw::mem_release(mapped.handle);
        }
        for (address, size) in state.reserved.drain(..) {
            let _ = raw::mem_address_free(address, size);
        }
    }
}

/// Takes `size` bytes from the smallest free range that holds them (best fit keeps the
/// large ranges whole).
fn take_range(free: &mut BTreeMap<CUdeviceptr, u64>, size: u64) -> Option<CUdeviceptr> {
    let (&start, &len) = free
        .iter()
        .filter(|&(_, &len)| len >= size)
        .min_by_key(|&(_, &len)| len)?;
    free.remove(&start);
    if len > size {
        free.insert(start + size, len - size);
    }
    Some(start)
}

/// Returns a range to the free map, merged with its neighbours.
fn give_range(free: &mut BTreeMap<CUdeviceptr, u64>, mut start: CUdeviceptr, mut len: u64) {
    if let Some((&before, &before_len)) = free.range(..start).next_back() {
        if before + before_len == start {
            free.remove(&before);
            start = before;
            len += before_len;
        }
    }
    if let Some(&after_len) = free.get(&(start + len)) {
        free.remove(&(start + len));
        len += after_len;
    }
    free.insert(start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges_are_reused_and_merged() {
        let mut free = BTreeMap::new();
        give_range(&mut free, 0x1000_0000, 8 << 20);
        let a = take_range(&mut free, 2 << 20);
        let b = take_range(&mut free, 4 << 20);
        assert_eq!(a, Some(0x1000_0000));
        assert_eq!(b, Some(0x1000_0000 + (2 << 20)));
        assert_eq!(take_range(&mut free, 4 << 20), None, "only 2 MiB are left");
        give_range(&mut free, 0x1000_0000, 2 << 20);
        // Best fit: the 2 MiB hole, not the tail.
        assert_eq!(take_range(&mut free, 2 << 20), Some(0x1000_0000));
        give_range(&mut free, 0x1000_0000, 2 << 20);
        give_range(&mut free, 0x1000_0000 + (2 << 20), 4 << 20);
        assert_eq!(free.len(), 1, "neighbours merged: {free:?}");
        assert_eq!(free.get(&0x1000_0000), Some(&(8 << 20)));
    }
}
