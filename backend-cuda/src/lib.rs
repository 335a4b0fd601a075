//! gpuhal's CUDA backend, on the driver API through `cudarc`.
//!
//! The driver library is loaded at run time, so this crate builds and links on machines
//! with no CUDA installed; there [`CudaDevice::open`] returns an error saying no driver
//! was found, and [`driver_available`] is false.
//!
//! Layering follows the bindings: [`raw`](crate) (one wrapper per driver call, the only
//! `unsafe` driver calls) → the concepts (context, memory, stream, event, fence, graph,
//! host import) → the `gpuhal` traits on [`CudaBackend`].
//!
//! ```no_run
//! use gpuhal_cuda::{CudaDevice, driver_available};
//! use gpuhal_hal::{Device, MemoryKind, Stream};
//!
//! if driver_available() {
//!     let device = CudaDevice::open(0)?;
//!     let stream = device.create_stream()?;
//!     let buffer = device.allocate(4096, MemoryKind::Device, &stream)?;
//!     stream.fill(&buffer, 0, 4096, 7)?;
//!     let mut host = vec![0; 4096];
//!     stream.read(&buffer, 0, &mut host)?;
//!     assert!(host.iter().all(|&b| b == 7));
//! }
//! # Ok::<(), gpuhal_hal::Error>(())
//! ```
#![warn(missing_docs)]

mod context;
mod device;
mod error;
mod event;
mod fence;
mod graph;
mod host_import;
mod kernels;
mod memory;
mod raw;
mod segments;
mod sharing;
mod stream;

pub use context::{driver_available, driver_version};
pub use device::{CudaDevice, DeviceAttributes, LEGACY_DEFAULT_STREAM, PER_THREAD_DEFAULT_STREAM};
pub use event::{CudaEvent, CudaEvents, RawEvent};
pub use fence::CudaFence;
pub use graph::{CudaGraph, CudaGraphExec};
pub use kernels::SMALL_OP_LIMIT;
pub use memory::{CudaMarker, CudaMemory};
pub use segments::SegmentStats;
pub use stream::{CudaStream, StreamHandle};

/// Raw driver handle types, for frameworks that call the driver on gpuhal's streams,
/// events and graphs.
pub mod sys {
    pub use cudarc::driver::sys::{CUcontext, CUdeviceptr, CUevent, CUgraph, CUgraphExec, CUmemoryPool, CUstream};
}

/// The CUDA backend: ties the handle types together for code generic over
/// [`gpuhal_hal::Backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CudaBackend;

impl gpuhal_hal::Backend for CudaBackend {
    const NAME: &'static str = "cuda";
    type Memory = CudaMemory;
    type Device = CudaDevice;
    type Stream = CudaStream;
    type Event = CudaEvent;
    type Fence = CudaFence;
    type Graph = CudaGraph;
    type GraphExec = CudaGraphExec;
}
