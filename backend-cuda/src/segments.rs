//! Growable virtual-memory segments: device memory that gpuhal maps itself.
//!
//! Device addresses are reserved in large ranges once (`cuMemAddressReserve`). Physical
//! memory is created with `cuMemCreate` in multiples of the mapping granularity (2 MiB on
//! current GPUs), and a native block the caching pool asks for is a run of such handles
//! (*pieces*) mapped back to back at a free place of a reserved range (`cuMemMap` per
//! piece, one `cuMemSetAccess` for the run). The driver maps a handle whole (its offset
//! argument must be 0), so pieces are never cut.
//!
//! Physical memory, not blocks, is what is reused. A released block's pieces are at once
//! free for a new block on the same stream, of any size they fit in: the new block's work
//! is ordered after the old one's by the stream itself, so no wait is needed, and the
//! device holds what the pool reserves rather than that plus what is waiting to be
//! unmapped (PyTorch's `expandable_segments` makes the same bet). What reuse does not
//! cover is one new handle. The released block's addresses stay mapped until an event
//! recorded on its stream at the release has completed; then they are unmapped and go
//! back to the free address ranges, and its pieces nobody took become *loose*: the next
//! allocation, on any stream, takes them first and releases the rest to the device (as
//! does [`unmap_released`](GrowableSegments::unmap_released), after a trim). When
//! physical memory runs out, pieces released on other streams are taken with the
//! allocating stream made to wait for their event (on the device), and only then does an
//! allocation wait on the CPU, for those events alone, never for the whole device.
//!
//! A new block takes at most [`MAX_PIECES`] pieces of earlier memory, so mapping stays a
//! handful of driver calls however fragmented the memory is.
//!
//! Sleep releases the physical memory of every mapped block while keeping its addresses
//! reserved, after copying the ranges the caller keeps to page-locked host memory; wake
//! maps fresh memory at the same addresses and copies the kept ranges back.

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

/// Most pieces of earlier memory a new block is made of; the rest is created new.
const MAX_PIECES: usize = 16;

/// Physical memory: a `cuMemCreate` handle of `len` bytes, mapped whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    handle: u64,
    len: u64,
}

/// A `cuMemCreate` handle: its size and the bytes of it in blocks (mapped or released
/// and not yet unmapped), the rest being loose.
struct Handle {
    size: u64,
    in_use: u64,
}

/// A block handed to the pool: its pieces in address order (one mapping each), or, while
/// the device sleeps, the contents kept in host memory.
struct Mapped {
    size: u64,
    pieces: Vec<Piece>,
    /// Set while asleep: the pieces are released and these ranges wait in host memory.
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
    /// The lengths of its mappings, in address order (each is unmapped alone).
    mappings: Vec<u64>,
    /// Its physical memory that no later block has taken over yet.
    pieces: Vec<Piece>,
    /// The stream it was released on, held so that its identity cannot be reused by a
    /// new stream while pieces of it may be taken without waiting.
    stream: Option<StreamHandle>,
    event: Option<CudaMarker>,
}

/// Moves whole pieces of `from` into `into`, largest first, while they fit in the
/// `need` bytes still uncovered and `into` holds fewer than [`MAX_PIECES`]. (A handle is
/// mapped whole: `cuMemMap` takes no offset into it.) Returns the bytes taken.
fn take_pieces(from: &mut Vec<Piece>, need: &mut u64, into: &mut Vec<Piece>) -> u64 {
    let mut order: Vec<usize> = (0..from.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(from[i].len));
    let mut chosen = Vec::new();
    let mut taken = 0;
    for index in order {
        if into.len() + chosen.len() == MAX_PIECES || *need == 0 {
            break;
        }
        if from[index].len <= *need {
            *need -= from[index].len;
            taken += from[index].len;
            chosen.push(index);
        }
    }
    chosen.sort_unstable_by(|a, b| b.cmp(a));
    for index in chosen {
        into.push(from.swap_remove(index));
    }
    taken
}

#[derive(Default)]
struct State {
    /// Reserved ranges, for freeing them at the end.
    reserved: Vec<(CUdeviceptr, u64)>,
    /// Unmapped parts of the reserved ranges, by start address (merged with neighbours).
    free: BTreeMap<CUdeviceptr, u64>,
    mapped: HashMap<CUdeviceptr, Mapped>,
    released: Vec<Released>,
    handles: HashMap<u64, Handle>,
    /// Physical memory in no block: free for any stream.
    loose: Vec<Piece>,
    /// Physical memory held: the handles' sizes.
    physical_bytes: u64,
    /// Bytes of blocks asleep (their physical memory released, their addresses kept).
    asleep_bytes: u64,
    handles_created: u64,
    reused_bytes: u64,
}

/// Counters of a device's growable segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// The granularity physical memory is created and mapped in.
    pub granularity: u64,
    /// Physical memory held now: in live blocks, in released blocks whose stream has not
    /// passed their last use yet, and loose.
    pub physical_bytes: u64,
    /// Bytes of blocks asleep.
    pub asleep_bytes: u64,
    /// `cuMemCreate` calls so far.
    pub handles_created: u64,
    /// Bytes of released blocks' physical memory mapped again for new blocks instead of
    /// created new.
    pub reused_bytes: u64,
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

    /// The granularity physical memory is created and mapped in.
    pub(crate) fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Bytes of physical memory held now (released memory not yet given back included).
    pub(crate) fn mapped_bytes(&self) -> u64 {
        self.state.lock().physical_bytes
    }

    pub(crate) fn stats(&self) -> SegmentStats {
        let state = self.state.lock();
        SegmentStats {
            granularity: self.granularity,
            physical_bytes: state.physical_bytes,
            asleep_bytes: state.asleep_bytes,
            handles_created: state.handles_created,
            reused_bytes: state.reused_bytes,
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
        let mut state = self.state.lock();
        self.finish_completed(&mut state, false);
        let mut need = size;
        let mut pieces = Vec::new();
        // Loose memory first (nothing may still use it), then this stream's releases.
        let from_loose = take_pieces(&mut state.loose, &mut need, &mut pieces);
        Self::note_in_use(&mut state.handles, &pieces, 0);
        let mut reused = from_loose;
        for index in (0..state.released.len()).rev() {
            if need == 0 || pieces.len() == MAX_PIECES {
                break;
            }
            let released = &mut state.released[index];
            if released.stream.as_ref().is_some_and(|s| s.raw() == stream.raw()) {
                reused += take_pieces(&mut released.pieces, &mut need, &mut pieces);
            }
        }
        state.reused_bytes += reused;
        let outcome = self.create_rest(&mut state, &mut pieces, need, stream);
        self.drop_loose(&mut state);
        if let Err(err) = outcome {
            self.abandon(&mut state, pieces, stream);
            return Err(err);
        }
        let address = match self.take_address(&mut state, size) {
            Ok(address) => address,
            Err(err) => {
                self.abandon(&mut state, pieces, stream);
                return Err(err);
            }
        };
        if let Err(native) = self.map_pieces(address, &pieces) {
            give_range(&mut state.free, address, size);
            self.abandon(&mut state, pieces, stream);
            return Err(Error::native(self.what("mapping", size), native));
        }
        state.mapped.insert(
            address,
            Mapped {
                size,
                pieces,
                asleep: None,
            },
        );
        Ok((address, size))
    }

    /// Gives back the pieces gathered for an allocation that failed. Some may still be in
    /// use by work on `stream` (taken from its releases, or from other streams' with a
    /// wait), so the stream is synchronised before they are loose for any stream (an
    /// error path, not a hot one); if even that fails they are leaked, not shared.
    fn abandon(&self, state: &mut State, pieces: Vec<Piece>, stream: &StreamHandle) {
        if raw::stream_synchronize(stream.raw()).is_ok() {
            self.make_loose(state, pieces);
            self.drop_loose(state);
        }
    }

    /// Counts `pieces[from..]` as in use by their handles.
    fn note_in_use(handles: &mut HashMap<u64, Handle>, pieces: &[Piece], from: usize) {
        for piece in &pieces[from..] {
            if let Some(handle) = handles.get_mut(&piece.handle) {
                handle.in_use += piece.len;
            }
        }
    }

    /// Covers the `need` bytes `pieces` still lack with one new handle; when the device has
    /// no memory left, with pieces released on other streams (the allocating stream waits
    /// for their last use), and last with pieces whose releases it waited for on the CPU.
    fn create_rest(
        &self,
        state: &mut State,
        pieces: &mut Vec<Piece>,
        mut need: u64,
        stream: &StreamHandle,
    ) -> Result<()> {
        let mut waited = false;
        while need > 0 {
            match raw::mem_create(need, self.ordinal) {
                Ok(handle) => {
                    state.handles.insert(
                        handle,
                        Handle {
                            size: need,
                            in_use: need,
                        },
                    );
                    state.physical_bytes += need;
                    state.handles_created += 1;
                    pieces.push(Piece { handle, len: need });
                    return Ok(());
                }
                Err(native) if native.name.contains("OUT_OF_MEMORY") => {
                    let before = need;
                    for released in state.released.iter_mut() {
                        if need == 0 {
                            break;
                        }
                        let own = released.stream.as_ref().is_some_and(|s| s.raw() == stream.raw());
                        if released.pieces.is_empty() || own {
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
                        let mut taken = Vec::new();
                        take_pieces(&mut released.pieces, &mut need, &mut taken);
                        pieces.extend(taken);
                    }
                    state.reused_bytes += before - need;
                    if need < before {
                        continue;
                    }
                    if waited || state.released.is_empty() {
                        return Err(Error::native(self.what("creating", need), native));
                    }
                    // What is left waits to be unmapped: wait for the releases' events,
                    // take what they free, and retry.
                    waited = true;
                    self.finish_completed(state, true);
                    let mut taken = Vec::new();
                    take_pieces(&mut state.loose, &mut need, &mut taken);
                    Self::note_in_use(&mut state.handles, &taken, 0);
                    state.reused_bytes += taken.iter().map(|p| p.len).sum::<u64>();
                    pieces.extend(taken);
                    self.drop_loose(state);
                }
                Err(native) => return Err(Error::native(self.what("creating", need), native)),
            }
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

    /// Maps `pieces` back to back at `address` and makes the run accessible.
    fn map_pieces(&self, address: CUdeviceptr, pieces: &[Piece]) -> std::result::Result<(), NativeError> {
        let mut at = address;
        for (index, piece) in pieces.iter().enumerate() {
            if let Err(native) = raw::mem_map(at, piece.len, piece.handle) {
                let lens: Vec<u64> = pieces[..index].iter().map(|p| p.len).collect();
                self.unmap_run(address, &lens);
                return Err(native);
            }
            at += piece.len;
        }
        raw::mem_set_access_read_write(address, at - address, self.ordinal).inspect_err(|_| {
            let lens: Vec<u64> = pieces.iter().map(|p| p.len).collect();
            self.unmap_run(address, &lens);
        })
    }

    /// Unmaps mappings of `lens` bytes back to back from `address`, one call each (as
    /// each was mapped). Returns whether every unmap succeeded.
    fn unmap_run(&self, address: CUdeviceptr, lens: &[u64]) -> bool {
        let mut all = true;
        let mut at = address;
        for &len in lens {
            all &= raw::mem_unmap(at, len).is_ok();
            at += len;
        }
        all
    }

    /// Pieces leave their blocks: loose, no longer in use.
    fn make_loose(&self, state: &mut State, pieces: Vec<Piece>) {
        for piece in pieces {
            if let Some(handle) = state.handles.get_mut(&piece.handle) {
                handle.in_use -= piece.len;
            }
            state.loose.push(piece);
        }
    }

    /// Releases the handles of loose pieces (none of their bytes is in a block).
    fn drop_loose(&self, state: &mut State) {
        let State {
            handles,
            loose,
            physical_bytes,
            ..
        } = state;
        loose.retain(|piece| {
            let Some(handle) = handles.get(&piece.handle) else {
                return false;
            };
            if handle.in_use > 0 {
                return true;
            }
            let size = handle.size;
            handles.remove(&piece.handle);
            // A handle is released once; the driver frees it when its last mapping goes.
            let _ = raw::mem_release(piece.handle);
            *physical_bytes -= size;
            false
        });
    }

    /// Releases the block at `address` once the work `stream` has enqueued so far has
    /// completed (at once when `stream` is `None`, after synchronising: see below). Its
    /// physical memory can serve a new block on the same stream before then.
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
            mappings: mapped.pieces.iter().map(|p| p.len).collect(),
            pieces: mapped.pieces,
            stream: stream.cloned(),
            event,
        });
        // Unmaps what is done (its events go back to the pool); the memory stays loose
        // for the next allocation, which usually follows (the pool releases to make room).
        self.finish_completed(&mut state, false);
        Ok(())
    }

    /// Unmaps released blocks whose stream has passed their last use (with `wait`, after
    /// waiting for each one's event); their pieces nobody took become loose.
    fn finish_completed(&self, state: &mut State, wait: bool) {
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
            if self.unmap_run(released.address, &released.mappings) {
                give_range(&mut state.free, released.address, released.size);
            }
            self.make_loose(state, released.pieces);
        }
    }

    /// Unmaps what has completed and gives loose physical memory back (after the pool
    /// trimmed, and for callers who want the device's free memory to show it now).
    pub(crate) fn unmap_released(&self, wait: bool) {
        let mut state = self.state.lock();
        self.finish_completed(&mut state, wait);
        self.drop_loose(&mut state);
    }

    /// Puts every mapped block to sleep: copies the parts of it that `keep` names
    /// (address, length) to page-locked host memory, then unmaps and releases its
    /// physical memory; the addresses stay reserved for [`wake`](Self::wake).
    /// Synchronises the context first: whatever was enqueued must have finished with
    /// the memory before it is copied or dropped.
    pub(crate) fn sleep(&self, keep: &[(u64, u64)]) -> Result<SleepReport> {
        raw::ctx_synchronize().context(|| format!("synchronising CUDA device {} before sleep", self.ordinal))?;
        let mut state = self.state.lock();
        let held_before = state.physical_bytes;
        self.finish_completed(&mut state, true);
        self.drop_loose(&mut state);
        let mut report = SleepReport {
            released_bytes: held_before - state.physical_bytes,
            ..SleepReport::default()
        };
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
            let lens: Vec<u64> = mapped.pieces.iter().map(|p| p.len).collect();
            if !self.unmap_run(address, &lens) {
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
            let pieces = std::mem::take(&mut mapped.pieces);
            mapped.asleep = Some(kept);
            state.asleep_bytes += size;
            report.kept_bytes += kept_bytes;
            report.discarded_bytes += size - kept_bytes;
            report.blocks += 1;
            self.make_loose(&mut state, pieces);
        }
        let held = state.physical_bytes;
        self.drop_loose(&mut state);
        report.released_bytes += held - state.physical_bytes;
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
        self.finish_completed(&mut state, false);
        self.drop_loose(&mut state);
        let mut report = WakeReport::default();
        let asleep: Vec<(CUdeviceptr, u64)> = state
            .mapped
            .iter()
            .filter(|(_, m)| m.asleep.is_some())
            .map(|(&a, m)| (a, m.size))
            .collect();
        for (address, size) in asleep {
            let handle = raw::mem_create(size, self.ordinal).map_err(|native| {
                Error::native(
                    format!(
                        "waking a {size}-byte block at {address:#x} on CUDA device {} \
                         ({} blocks, {} bytes woken before it)",
                        self.ordinal, report.blocks, report.mapped_bytes
                    ),
                    native,
                )
            })?;
            let piece = Piece { handle, len: size };
            if let Err(native) = self.map_pieces(address, &[piece]) {
                let _ = raw::mem_release(handle);
                return Err(Error::native(self.what("mapping on wake", size), native));
            }
            state.handles.insert(handle, Handle { size, in_use: size });
            state.physical_bytes += size;
            state.handles_created += 1;
            let Some(mapped) = state.mapped.get_mut(&address) else {
                continue;
            };
            let kept = mapped.asleep.take().unwrap_or_default();
            mapped.pieces = vec![piece];
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
        let unmap = |address: CUdeviceptr, lens: &[u64]| {
            let mut at = address;
            for &len in lens {
                let _ = raw::mem_unmap(at, len);
                at += len;
            }
        };
        for released in state.released.drain(..) {
            unmap(released.address, &released.mappings);
        }
        for (address, mapped) in state.mapped.drain() {
            let lens: Vec<u64> = mapped.pieces.iter().map(|p| p.len).collect();
            unmap(address, &lens);
            free_kept(mapped.asleep.unwrap_or_default());
        }
        for (&handle, _) in state.handles.iter() {
            let _ = raw::mem_release(handle);
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

    fn piece(handle: u64, len: u64) -> Piece {
        Piece { handle, len }
    }

    #[test]
    fn whole_pieces_are_taken_largest_first_while_they_fit() {
        let mut from = vec![
            piece(1, 8 << 20),
            piece(2, 4 << 20),
            piece(3, 2 << 20),
            piece(4, 2 << 20),
        ];
        let mut need = 7 << 20;
        let mut into = Vec::new();
        assert_eq!(take_pieces(&mut from, &mut need, &mut into), 6 << 20);
        assert_eq!(need, 1 << 20, "what no piece fits is created new");
        into.sort_unstable_by_key(|p| p.handle);
        assert_eq!(into, vec![piece(2, 4 << 20), piece(3, 2 << 20)]);
        from.sort_unstable_by_key(|p| p.handle);
        assert_eq!(
            from,
            vec![piece(1, 8 << 20), piece(4, 2 << 20)],
            "too large to map whole, or not needed"
        );
    }

    #[test]
    fn a_block_takes_at_most_max_pieces() {
        let mut from: Vec<Piece> = (0..40).map(|h| piece(h, 2 << 20)).collect();
        let mut need = 100 << 20;
        let mut into = Vec::new();
        take_pieces(&mut from, &mut need, &mut into);
        assert_eq!(into.len(), MAX_PIECES);
        assert_eq!(
            need,
            (100 << 20) - MAX_PIECES as u64 * (2 << 20),
            "the rest is created new"
        );
    }
}
