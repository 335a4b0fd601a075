//! gpuhal: the GPU plumbing ML frameworks rewrite by hand — a caching allocator over
//! stream-ordered device memory, managed memory with advice and prefetch, pinned host
//! memory, host import by the cheapest path, pooled events, timeline fences, and graph
//! capture with shared memory pools — behind one set of traits, with a mock backend so
//! framework code can be tested with no GPU.
//!
//! This crate is the facade: it re-exports the traits and types of `gpuhal-hal`, the
//! backends compiled in (cargo features `mock` (default), `cuda`, `vulkan`) as
//! [`mock`], `cuda` and `vulkan`, and [`AnyDevice`] and friends, which choose a backend at
//! run time.
//!
//! How streams, their caches, cross-stream hand-offs (`record_use`), events, fences and
//! graph pools behave is explained in prose in the repository's `docs/design.md`, knobs
//! in `docs/tuning.md`; runnable programs to copy are in `examples/`.
//!
//! # Framework code, generic over the backend
//!
//! Code written against [`Backend`] is monomorphised per backend: no dispatch cost.
//!
//! ```
//! # #[cfg(feature = "mock")] {
//! use gpuhal::{Backend, Device, MemoryKind, Result, Stream};
//!
//! /// Fills a buffer on the device and copies it into a second one, as a framework's
//! /// `zeros` + `clone` would, and reads the copy back.
//! fn filled_copy<B: Backend>(device: &B::Device, len: usize, value: u8) -> Result<Vec<u8>> {
//!     let stream = device.create_stream()?;
//!     let source = device.allocate(len as u64, MemoryKind::Device, &stream)?;
//!     let copy = device.allocate(len as u64, MemoryKind::Device, &stream)?;
//!     stream.fill(&source, 0, len as u64, value)?;
//!     stream.copy(&source, 0, &copy, 0, len as u64)?;
//!     let mut host = vec![0; len];
//!     stream.read(&copy, 0, &mut host)?;
//!     Ok(host)
//! }
//!
//! // In tests, on any machine: the mock backend.
//! use gpuhal::mock::{MockBackend, MockConfig, MockDevice, Profile};
//! let device = MockDevice::open(MockConfig { profile: Profile::Discrete, ..Default::default() })?;
//! assert_eq!(filled_copy::<MockBackend>(&device, 4096, 7)?, vec![7; 4096]);
//! // Both buffers went back to the allocator when they dropped.
//! assert_eq!(device.memory_stats().live_bytes, 0);
//! # }
//! # Ok::<(), gpuhal::Error>(())
//! ```
//!
//! # Choosing the backend at run time
//!
//! ```
//! # #[cfg(feature = "mock")] {
//! use gpuhal::{AnyDevice, DynBuffer, DynDevice, DynStream, MemoryKind};
//!
//! let device = AnyDevice::open("mock", 0)?; // or "cuda", "vulkan", "mock:coherent"
//! let stream = device.create_stream()?;
//! let buffer = device.allocate(16, MemoryKind::Device, &stream)?;
//! stream.write(&buffer, 0, b"sixteen bytes!!!")?;
//! let mut back = [0; 16];
//! stream.read(&buffer, 0, &mut back)?;
//! assert_eq!(&back, b"sixteen bytes!!!");
//! assert_eq!(buffer.backend(), "mock");
//! # }
//! # Ok::<(), gpuhal::Error>(())
//! ```
#![warn(missing_docs)]

pub use gpuhal_hal::*;

/// The mock backend: host memory with real stream ordering and platform profiles.
#[cfg(feature = "mock")]
pub use gpuhal_mock as mock;

/// The CUDA backend (driver API, loaded at run time).
#[cfg(feature = "cuda")]
pub use gpuhal_cuda as cuda;

/// The Vulkan backend.
#[cfg(feature = "vulkan")]
pub use gpuhal_vulkan as vulkan;

#[cfg(any(feature = "mock", feature = "cuda", feature = "vulkan"))]
mod any;
#[cfg(any(feature = "mock", feature = "cuda", feature = "vulkan"))]
pub use any::*;

// The README's Rust code compiles against this crate (its C, Python and shell blocks are
// not Rust and are left alone by rustdoc).
#[cfg(all(doctest, feature = "mock"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
