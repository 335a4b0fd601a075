//! The small contract a backend implements so that `hal`'s caching pool can run on it.

use crate::error::Result;
use crate::types::{DeviceId, MemoryKind, StreamId};

/// A block of memory obtained from the native API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NativeBlock {
    /// Device address of the first byte.
    pub address: u64,
    /// Size in bytes, as allocated.
    pub size: u64,
    /// Kind of memory.
    pub kind: MemoryKind,
    /// Backend token for the native object (see [`Region::native`](crate::Region::native)).
    pub native: u64,
    /// Offset of `address` inside the native object.
    pub native_offset: u64,
}

/// Native memory and stream markers, as the caching pool needs them.
///
/// Everything here is off the pool's hit path: the pool calls it only when its cache
/// cannot serve a request, when it releases cached memory, and when a buffer used on
/// several streams is freed.
pub trait NativeMemory: Send + Sync + Sized + 'static {
    /// A native stream handle the pool keeps to order frees. It must keep the native
    /// stream alive while the pool holds it (a reference-counted handle), since cached
    /// blocks can outlive the backend's stream object.
    type Stream: Send + Sync + 'static;
    /// A point in a stream's work (a pooled event), used to hold back cross-stream reuse.
    type Marker: Send + 'static;

    /// When true, the pool reports every hand-out and return of a block through
    /// [`on_handed_out`](Self::on_handed_out) and [`on_returned`](Self::on_returned), so
    /// a checking backend can catch use after free. Production backends leave it false
    /// and pay nothing.
    const CHECKS_LIFETIMES: bool = false;

    /// The device this memory belongs to.
    fn device(&self) -> DeviceId;

    /// Allocates `size` bytes of `kind`. With a stream, the allocation is ordered on it
    /// (`cuMemAllocAsync`); without one (graph pools) it must be usable by any stream and
    /// legal while a stream is capturing.
    fn allocate(&self, size: u64, kind: MemoryKind, stream: Option<&Self::Stream>) -> Result<NativeBlock>;

    /// Frees a block, ordered on `stream` when given (`cuMemFreeAsync`).
    fn free(&self, block: NativeBlock, stream: Option<&Self::Stream>) -> Result<()>;

    /// Records a marker at the current end of `stream`'s work.
    fn record_marker(&self, stream: &Self::Stream) -> Result<Self::Marker>;

    /// Whether the work before `marker` has completed.
    fn is_marker_complete(&self, marker: &Self::Marker) -> Result<bool>;

    /// Makes `stream` wait (on the device, not the CPU) for the work before `marker`.
    fn wait_marker(&self, stream: &Self::Stream, marker: &Self::Marker) -> Result<()>;

    /// A block is handed out as a buffer of `len` bytes on `stream` (checking backends only).
    fn on_handed_out(&self, _block: &NativeBlock, _len: u64, _stream: StreamId) {}

    /// A buffer's block went back to the pool (checking backends only).
    fn on_returned(&self, _block: &NativeBlock, _stream: StreamId) {}
}
