//! gpuhal's mock backend: host memory standing in for device memory, with a GPU's
//! semantics, so a framework's tests run anywhere.
//!
//! - Streams run in order on worker threads; events, fences and graphs behave as on a
//!   GPU (a stream's fence wait really blocks its worker until the signal runs).
//! - [`Profile`]s choose what the device can do: `discrete` (an H100 on x86), `coherent`
//!   (GH200/GB10) and `minimal` (no managed memory, no graphs).
//! - Faults can be injected: a capacity, the Nth native allocation failing, slow streams
//!   ([`MockConfig`]).
//! - It is a checker: using a freed buffer, unsynchronised cross-stream use of a buffer,
//!   a double free and a handle from another device are errors naming both sides.
//!
//! ```
//! use gpuhal_hal::{Device, Error, Event, MemoryKind, Stream};
//! use gpuhal_mock::{MockConfig, MockDevice, Profile};
//!
//! let device = MockDevice::open(MockConfig { profile: Profile::Coherent, ..Default::default() })?;
//! let (producer, consumer) = (device.create_stream()?, device.create_stream()?);
//! let buffer = device.allocate(256, MemoryKind::Device, &producer)?;
//! producer.fill(&buffer, 0, 256, 1)?;
//! let mut out = [0u8; 256];
//! // No event between the fill and the read: the checker refuses the read.
//! assert!(matches!(consumer.read(&buffer, 0, &mut out), Err(Error::Race { .. })));
//! let done = device.event(false)?;
//! done.record(&producer)?;
//! consumer.wait_event(&done)?;
//! consumer.read(&buffer, 0, &mut out)?;
//! assert_eq!(out, [1; 256]);
//! # Ok::<(), Error>(())
//! ```
#![warn(missing_docs)]

mod checker;
mod clock;
mod config;
mod device;
mod event;
mod fence;
mod graph;
mod import;
mod lifetimes;
mod machine;
mod managed;
mod memory;
mod profile;
mod queue;
mod raw;
mod segments;
mod sharing;
mod sleep;
mod state;
mod stream;

pub use config::MockConfig;
pub use device::MockDevice;
pub use event::{MockEvent, MockEvents, MockMarker, MockNativeEvent};
pub use fence::MockFence;
pub use graph::{MockGraph, MockGraphExec};
pub use memory::MockMemory;
pub use profile::Profile;
pub use queue::MockQueue;
pub use segments::MappingStats;
pub use sleep::DISCARDED;
pub use state::OUT_OF_MEMORY;
pub use stream::MockStream;

/// The mock backend's handle types.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockBackend;

impl gpuhal_hal::Backend for MockBackend {
    const NAME: &'static str = "mock";
    type Memory = MockMemory;
    type Device = MockDevice;
    type Stream = MockStream;
    type Event = MockEvent;
    type Fence = MockFence;
    type Graph = MockGraph;
    type GraphExec = MockGraphExec;
}
