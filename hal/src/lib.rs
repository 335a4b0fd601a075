//! gpuhal's hardware abstraction layer: the traits every backend implements, the types
//! and errors they share, and the backend-neutral machinery written once for all of them
//! (the caching pool, the event pool, allocation trace recording).
//!
//! Framework code is written against [`Backend`] and its associated types:
//!
//! ```ignore
//! use gpuhal_hal::*;
//!
//! fn scale_copy<B: Backend>(device: &B::Device) -> Result<Vec<u8>> {
//!     let stream = device.create_stream()?;
//!     let input = device.allocate(4096, MemoryKind::Device, &stream)?;
//!     let output = device.allocate(4096, MemoryKind::Device, &stream)?;
//!     stream.fill(&input, 0, 4096, 7)?;
//!     stream.copy(&input, 0, &output, 0, 4096)?;
//!     let mut host = vec![0; 4096];
//!     stream.read(&output, 0, &mut host)?;
//!     Ok(host)
//! }
//! ```
#![warn(missing_docs)]

mod backend;
mod error;
pub mod event_pool;
#[cfg(unix)]
pub mod handle_transfer;
pub mod host_mapping;
mod hot_lock;
pub mod pool;
pub mod report;
pub mod sharing;
mod sleep;
mod spare;
mod stats;
pub mod torch_snapshot;
pub mod trace;
mod types;

pub use backend::{
    check_device, Backend, Buffer, Device, DeviceInfo, Event, Fence, Graph, GraphExec, GraphPool, HostImport, Stream,
};
pub use error::{check_range, Error, NativeError, Result};
pub use hot_lock::locks_biased;
pub use pool::{Allocator, CachingAllocator, NativeBlock, PoolConfig, SegmentStrategy};
pub use report::MemoryReport;
pub use sharing::{PoolHandle, SharedEvent, SharedImport, SharedMemory};
pub use sleep::{SleepReport, WakeReport};
pub use stats::{EventStats, ImportStats, MemoryStats};
pub use types::{
    Advice, AsRegion, Capabilities, DeviceId, ImportPath, ImportPolicy, Location, ManagedPolicy, ManagedRangeInfo,
    MemoryKind, Region, StreamId,
};
