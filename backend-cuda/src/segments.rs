//! Growable virtual-memory segments: device memory that gpuhal maps itself.
//!
//! Device addresses are reserved in large ranges once (`cuMemAddressReserve`). Physical
//! memory is created in chunks of the mapping granularity (`cuMemCreate`, 2 MiB on
//! current GPUs), each its own handle, and a native block the caching pool asks for is
//! a run of chunks mapped back to back at a free place of a reserved range (`cuMemMap`
//! per chunk, one `cuMemSetAccess` for the run).
//!
//! Chunks, not blocks, are what is reused. A released block's chunks are at once free
//! for a new block on the same stream, whatever its size: the new block's work is
//! ordered after the old one's by the stream itself, so no wait is needed, and the
//! device holds what the pool reserves rather than that plus what is waiting to be
//! unmapped (PyTorch's `expandable_segments` makes the same bet). The released block's
//! addresses stay mapped until an event recorded on its stream at the release has
//! completed; then they are unmapped and go back to the free address ranges, and the
//! chunks nobody took are released to the device. When physical memory runs out, chunks
//! released on other streams are taken with the allocating stream made to wait for
//! their event (on the device), and only then does an allocation wait on the CPU, for
//! those events alone, never for the whole device.
//!
//! Sleep releases the physical memory of every mapped block while keeping its addresses
//! reserved, after copying the ranges the caller keeps to page-locked host memory; wake
//! maps fresh chunks at the same addresses and copies the kept ranges back.

use std::collections::{BTreeMap, HashMap};

use gpuhal_hal::{Error, NativeError, Result, SleepReport, WakeReport};
use parking_lot::Mutex;

use crate::error::Context as _;
use crate::event::CudaEventPool;
use crate::memory::CudaMarker;
use crate::raw::{self, CUdeviceptr};
use crate::stream::StreamHandle;

/// Address space reserved at a time: more than any device has, so one range is the rule.
const RESERVE_STEP: u64 = 256 << 30;

/// A chunk of physical memory: one `cuMemCreate` handle of the granularity's size.
type Chunk = u64;

/// A block handed to the pool: its chunks in address order, or, while the device
/// sleeps, the contents kept in host memory.
struct Mapped {
    size: u64,
    chunks: Vec<Chunk>,
    /// Set while asleep: the chunks are released and these ranges wait in host memory.
    asleep: Option<Vec<Kept>>,
}

/// A range of a sleeping block kept in page-locked host memory.
struct Kept {
    offset: u64,
    len: u64,
    host: u64,
}

/// A released block whose addresses stay mapped until its stream has passed its last use.
struct Released {
    address: CUdeviceptr,
    size: u64,
    /// Its chunks in address order; `None` where a later block on the same stream (or a
    /// stream made to wait) has taken the chunk over.
    chunks: Vec<Option<Chunk>>,
    /// The stream it was released on, held so that its identity cannot be reused by a
    /// new stream while chunks of it may be taken without waiting.
    stream: Option<StreamHandle>,
    event: Option<CudaMarker>,
}

impl Released {
    fn take_chunks(&mut self, into: &mut Vec<Chunk>, count: usize) {
        for slot in &mut self.chunks {
            if into.len() == count {
                return;
            }
            if let Some(chunk) = slot.take() {
                into.push(chunk);
            }
        }
    }

    fn has_chunks(&self) -> bool {
        self.chunks.iter().any(Option::is_some)
    }
}

#[derive(Default)]
struct State {
    /// Reserved ranges, for freeing them at the end.
    reserved: Vec<(CUdeviceptr, u64)>,
    /// Unmapped parts of the reserved ranges, by start address (merged with neighbours).
    free: BTreeMap<CUdeviceptr, u64>,
    mapped: HashMap<CUdeviceptr, Mapped>,
    released: Vec<Released>,
    /// Physical memory held: chunks created and not yet released.
    physical_bytes: u64,
    /// Bytes of blocks asleep (their physical memory released, their addresses kept).
    asleep_bytes: u64,
    chunks_created: u64,
    chunks_reused: u64,
}

/// Counters of a device's growable segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// The size physical memory is created and mapped in.
    pub granularity: u64,
    /// Physical memory held now: mapped in live blocks, and released chunks whose
    /// stream has not passed their last use yet.
    pub physical_bytes: u64,
    /// Bytes of blocks asleep.
    pub asleep_bytes: u64,
    /// Chunks created so far (`cuMemCreate`).
    pub chunks_created: u64,
    /// Chunks of released blocks mapped again for new blocks instead of creating new ones.
    pub chunks_reused: u64,
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

    /// Bytes of physical memory held now (released chunks not yet given back included).
    pub(crate) fn mapped_bytes(&self) -> u64 {
        self.state.lock().physical_bytes
    }

    pub(crate) fn stats(&self) -> SegmentStats {
        let state = self.state.lock();
        SegmentStats {
            granularity: self.granularity,
            physical_bytes: state.physical_bytes,
            asleep_bytes: state.asleep_bytes,
            chunks_created: state.chunks_created,
            chunks_reused: state.chunks_reused,
        }
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

    /// Maps `size` bytes (rounded up to the granularity) at a free address for work on
    /// `stream`; returns the address and the size mapped.
    pub(crate) fn allocate(&self, size: u64, stream: &StreamHandle) -> Result<(CUdeviceptr, u64)> {
        let size = size.max(1).next_multiple_of(self.granularity);
        let count = (size / self.granularity) as usize;
        let mut state = self.state.lock();
        let mut ready = self.finish_completed(&mut state, false);
        let mut chunks = Vec::with_capacity(count);
        let from_ready = count.min(ready.len());
        chunks.extend(ready.drain(..from_ready));
        for released in state.released.iter_mut().rev() {
            if chunks.len() == count {
                break;
            }
            if released.stream.as_ref().is_some_and(|s| s.raw() == stream.raw()) {
                released.take_chunks(&mut chunks, count);
            }
        }
        state.chunks_reused += chunks.len() as u64;
        self.release_chunks(&mut state, ready);
        let outcome = self.create_rest(&mut state, &mut chunks, count, stream);
        if let Err(err) = outcome {
            self.release_chunks(&mut state, chunks);
            return Err(err);
        }
        let address = match self.take_address(&mut state, size) {
            Ok(address) => address,
            Err(err) => {
                self.release_chunks(&mut state, chunks);
                return Err(err);
            }
        };
        if let Err(native) = self.map_chunks(address, &chunks) {
            give_range(&mut state.free, address, size);
            self.release_chunks(&mut state, chunks);
            return Err(Error::native(self.what("mapping", size), native));
        }
        state.mapped.insert(
            address,
            Mapped {
                size,
                chunks,
                asleep: None,
            },
        );
        Ok((address, size))
    }

    /// Fills `chunks` up to `count` with new physical memory; when the device has none
    /// left, with chunks released on other streams (the allocating stream waits for their
    /// last use), and last with chunks whose releases it waited for on the CPU.
    fn create_rest(
        &self,
        state: &mut State,
        chunks: &mut Vec<Chunk>,
        count: usize,
        stream: &StreamHandle,
    ) -> Result<()> {
        let mut waited = false;
        while chunks.len() < count {
            match raw::mem_create(self.granularity, self.ordinal) {
                Ok(chunk) => {
                    chunks.push(chunk);
                    state.physical_bytes += self.granularity;
                    state.chunks_created += 1;
                }
                Err(native) if native.name.contains("OUT_OF_MEMORY") => {
                    let before = chunks.len();
                    self.take_from_other_streams(state, chunks, count, stream)?;
                    if chunks.len() > before {
                        state.chunks_reused += (chunks.len() - before) as u64;
                        continue;
                    }
                    if waited || state.released.is_empty() {
                        return Err(Error::native(
                            self.what("creating", (count - chunks.len()) as u64 * self.granularity),
                            native,
                        ));
                    }
                    // What is left was released on this stream and taken, or is waiting
                    // to be unmapped: wait for the releases' events, use what they free
                    // and give the rest back, then retry.
                    waited = true;
                    let mut freed = self.finish_completed(state, true);
                    let used = (count - chunks.len()).min(freed.len());
                    chunks.extend(freed.drain(..used));
                    state.chunks_reused += used as u64;
                    self.release_chunks(state, freed);
                }
                Err(native) => {
                    return Err(Error::native(
                        self.what("creating", (count - chunks.len()) as u64 * self.granularity),
                        native,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Takes chunks released on other streams, making `stream` wait on the device for
    /// each release's event.
    fn take_from_other_streams(
        &self,
        state: &mut State,
        chunks: &mut Vec<Chunk>,
        count: usize,
        stream: &StreamHandle,
    ) -> Result<()> {
        for released in state.released.iter_mut() {
            if chunks.len() == count {
                break;
            }
            if !released.has_chunks() || released.stream.as_ref().is_some_and(|s| s.raw() == stream.raw()) {
                continue;
            }
            if let Some(event) = &released.event {
                raw::stream_wait_event(stream.raw(), event.raw()).context(|| {
                    format!(
                        "ordering reuse of released physical memory on CUDA device {}",
                        self.ordinal
                    )
                })?;
            }
            released.take_chunks(chunks, count);
        }
        Ok(())
    }

    fn take_address(&self, state: &mut State, size: u64) -> Result<CUdeviceptr> {
        if let Some(address) = take_range(&mut state.free, size) {
            return Ok(address);
        }
        self.reserve(state, size.max(RESERVE_STEP))?;
        take_range(&mut state.free, size).ok_or_else(|| self.no_room(size))
    }

    /// Maps `chunks` back to back at `address` and makes the run accessible.
    fn map_chunks(&self, address: CUdeviceptr, chunks: &[Chunk]) -> std::result::Result<(), NativeError> {
        let granularity = self.granularity;
        for (index, &chunk) in chunks.iter().enumerate() {
            let at = address + index as u64 * granularity;
            if let Err(native) = raw::mem_map(at, granularity, chunk) {
                for undo in 0..index as u64 {
                    let _ = raw::mem_unmap(address + undo * granularity, granularity);
                }
                return Err(native);
            }
        }
        let size = chunks.len() as u64 * granularity;
        raw::mem_set_access_read_write(address, size, self.ordinal).inspect_err(|_| {
            self.unmap_chunks(address, chunks.len());
        })
    }

    /// Unmaps `count` chunk mappings from `address` (one call per mapping, as each chunk
    /// was mapped alone). Returns whether every unmap succeeded.
    fn unmap_chunks(&self, address: CUdeviceptr, count: usize) -> bool {
        let mut all = true;
        for index in 0..count as u64 {
            all &= raw::mem_unmap(address + index * self.granularity, self.granularity).is_ok();
        }
        all
    }

    fn release_chunks(&self, state: &mut State, chunks: Vec<Chunk>) {
        for chunk in chunks {
            // A handle still mapped at a released block's addresses is freed by the driver
            // once that mapping goes.
            let _ = raw::mem_release(chunk);
            state.physical_bytes -= self.granularity;
        }
    }

    /// Releases the block at `address` once the work `stream` has enqueued so far has
    /// completed (at once when `stream` is `None`, after synchronising: see below). Its
    /// chunks can serve a new block on the same stream before then.
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
        if let Some(kept) = mapped.asleep {
            // Nothing is mapped while it sleeps: its addresses are free at once.
            state.asleep_bytes -= mapped.size;
            free_kept(kept);
            give_range(&mut state.free, address, mapped.size);
            return Ok(());
        }
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
        state.released.push(Released {
            address,
            size: mapped.size,
            chunks: mapped.chunks.into_iter().map(Some).collect(),
            stream: stream.cloned(),
            event,
        });
        Ok(())
    }

    /// Unmaps released blocks whose stream has passed their last use (with `wait`, after
    /// waiting for each one's event) and returns the chunks nobody took over.
    fn finish_completed(&self, state: &mut State, wait: bool) -> Vec<Chunk> {
        let mut ready = Vec::new();
        let mut index = 0;
        while index < state.released.len() {
            let done = match &state.released[index].event {
                None => true,
                Some(event) if wait => raw::event_synchronize(event.raw()).is_ok(),
                Some(event) => raw::event_query(event.raw()).unwrap_or(false),
            };
            if !done {
                index += 1;
                continue;
            }
            let released = state.released.swap_remove(index);
            // A failure leaves the range mapped and out of the free list: lost address
            // space, never a range handed out twice.
            if self.unmap_chunks(released.address, released.chunks.len()) {
                give_range(&mut state.free, released.address, released.size);
            }
            ready.extend(released.chunks.into_iter().flatten());
        }
        ready
    }

    /// Unmaps what has completed and gives its physical memory back (for `trim`'s
    /// callers who want the device's free memory to show the release now).
    pub(crate) fn unmap_released(&self, wait: bool) {
        let mut state = self.state.lock();
        let ready = self.finish_completed(&mut state, wait);
        self.release_chunks(&mut state, ready);
    }

    /// Puts every mapped block to sleep: copies the parts of it that `keep` names
    /// (address, length) to page-locked host memory, then unmaps and releases its
    /// physical memory; the addresses stay reserved for [`wake`](Self::wake).
    /// Synchronises the context first: whatever was enqueued must have finished with
    /// the memory before it is copied or dropped.
    pub(crate) fn sleep(&self, keep: &[(u64, u64)]) -> Result<SleepReport> {
        raw::ctx_synchronize().context(|| format!("synchronising CUDA device {} before sleep", self.ordinal))?;
        let mut state = self.state.lock();
        let ready = self.finish_completed(&mut state, true);
        let mut report = SleepReport {
            released_bytes: ready.len() as u64 * self.granularity,
            ..SleepReport::default()
        };
        self.release_chunks(&mut state, ready);
        let mut keep: Vec<(u64, u64)> = keep.iter().copied().filter(|&(_, len)| len > 0).collect();
        keep.sort_unstable();
        let addresses: Vec<CUdeviceptr> = state
            .mapped
            .iter()
            .filter(|(_, m)| m.asleep.is_none())
            .map(|(&a, _)| a)
            .collect();
        for address in addresses {
            let Some(mapped) = state.mapped.get(&address) else {
                continue;
            };
            let size = mapped.size;
            let kept = self.copy_out(address, size, &keep)?;
            let kept_bytes: u64 = kept.iter().map(|k| k.len).sum();
            let Some(mapped) = state.mapped.get_mut(&address) else {
                free_kept(kept);
                continue;
            };
            if !self.unmap_chunks(address, mapped.chunks.len()) {
                free_kept(kept);
                return Err(Error::native(
                    self.what("unmapping for sleep", size),
                    NativeError {
                        call: "cuMemUnmap",
                        code: 1,
                        name: "CUDA_ERROR_INVALID_VALUE".into(),
                    },
                ));
            }
            let chunks = std::mem::take(&mut mapped.chunks);
            mapped.asleep = Some(kept);
            state.asleep_bytes += size;
            report.released_bytes += size;
            report.kept_bytes += kept_bytes;
            report.discarded_bytes += size - kept_bytes;
            report.blocks += 1;
            self.release_chunks(&mut state, chunks);
        }
        Ok(report)
    }

    /// Copies the parts of the block at `address` that `keep` (sorted) names to new
    /// page-locked host memory.
    fn copy_out(&self, address: CUdeviceptr, size: u64, keep: &[(u64, u64)]) -> Result<Vec<Kept>> {
        let end = address + size;
        let mut kept = Vec::new();
        let first = keep.partition_point(|&(a, len)| a + len <= address);
        for &(start, len) in &keep[first..] {
            if start >= end {
                break;
            }
            let from = start.max(address);
            let to = (start + len).min(end);
            let len = to - from;
            let host = match raw::mem_host_alloc(len, 0) {
                Ok(host) => host,
                Err(native) => {
                    free_kept(kept);
                    return Err(Error::native(
                        format!("allocating {len} bytes of page-locked host memory to keep across sleep"),
                        native,
                    ));
                }
            };
            kept.push(Kept {
                offset: from - address,
                len,
                host,
            });
            if let Err(native) = raw::memcpy_dtoh_pinned(host, from, len) {
                free_kept(kept);
                return Err(Error::native(self.what("copying to host before sleep", len), native));
            }
        }
        Ok(kept)
    }

    /// Maps new physical memory under every sleeping block and copies back what was kept.
    /// A block that cannot be woken (out of memory) stays asleep, and the error says how
    /// much was woken; calling again retries the rest.
    pub(crate) fn wake(&self) -> Result<WakeReport> {
        let mut state = self.state.lock();
        let ready = self.finish_completed(&mut state, false);
        self.release_chunks(&mut state, ready);
        let mut report = WakeReport::default();
        let asleep: Vec<(CUdeviceptr, u64)> = state
            .mapped
            .iter()
            .filter(|(_, m)| m.asleep.is_some())
            .map(|(&a, m)| (a, m.size))
            .collect();
        for (address, size) in asleep {
            let count = (size / self.granularity) as usize;
            let mut chunks = Vec::with_capacity(count);
            while chunks.len() < count {
                match raw::mem_create(self.granularity, self.ordinal) {
                    Ok(chunk) => {
                        chunks.push(chunk);
                        state.physical_bytes += self.granularity;
                        state.chunks_created += 1;
                    }
                    Err(native) => {
                        self.release_chunks(&mut state, chunks);
                        return Err(Error::native(
                            format!(
                                "waking a {size}-byte block at {address:#x} on CUDA device {} \
                                 ({} blocks, {} bytes woken before it)",
                                self.ordinal, report.blocks, report.mapped_bytes
                            ),
                            native,
                        ));
                    }
                }
            }
            if let Err(native) = self.map_chunks(address, &chunks) {
                self.release_chunks(&mut state, chunks);
                return Err(Error::native(self.what("mapping on wake", size), native));
            }
            let Some(mapped) = state.mapped.get_mut(&address) else {
                continue;
            };
            let kept = mapped.asleep.take().unwrap_or_default();
            mapped.chunks = chunks;
            state.asleep_bytes -= size;
            report.blocks += 1;
            report.mapped_bytes += size;
            for part in &kept {
                raw::memcpy_htod_pinned(address + part.offset, part.host, part.len)
                    .context(|| self.what("restoring kept contents on wake", part.len))?;
                report.restored_bytes += part.len;
            }
            free_kept(kept);
        }
        Ok(report)
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

fn free_kept(kept: Vec<Kept>) {
    for part in kept {
        let _ = raw::mem_free_host(part.host);
    }
}

impl Drop for GrowableSegments {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        for released in &state.released {
            if let Some(event) = &released.event {
                let _ = raw::event_synchronize(event.raw());
            }
        }
        let granularity = self.granularity;
        let unmap = |address: CUdeviceptr, count: usize| {
            for index in 0..count as u64 {
                let _ = raw::mem_unmap(address + index * granularity, granularity);
            }
        };
        for released in state.released.drain(..) {
            unmap(released.address, released.chunks.len());
            for chunk in released.chunks.into_iter().flatten() {
                let _ = raw::mem_release(chunk);
            }
        }
        for (address, mapped) in state.mapped.drain() {
            unmap(address, mapped.chunks.len());
            for chunk in mapped.chunks {
                let _ = raw::mem_release(chunk);
            }
            free_kept(mapped.asleep.unwrap_or_default());
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

    #[test]
    fn a_released_block_gives_its_chunks_in_address_order_and_keeps_the_mapping() {
        let mut released = Released {
            address: 0x1000,
            size: 3 << 21,
            chunks: vec![Some(7), Some(8), Some(9)],
            stream: None,
            event: None,
        };
        let mut taken = Vec::new();
        released.take_chunks(&mut taken, 2);
        assert_eq!(taken, vec![7, 8]);
        assert!(released.has_chunks());
        released.take_chunks(&mut taken, 5);
        assert_eq!(taken, vec![7, 8, 9]);
        assert!(!released.has_chunks());
        assert_eq!(released.chunks.len(), 3, "every mapping is still unmapped later");
    }
}
