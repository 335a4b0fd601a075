//! The one error type every backend returns.

use std::time::Duration;

use crate::stats::MemoryStats;
use crate::types::{Capabilities, MemoryKind};

/// Result alias used across gpuhal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A native API error: which call failed, its numeric code and symbolic name.
///
/// Kept separate from [`Error`] so a backend can build one at its FFI edge and the
/// caller can still see exactly what the driver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeError {
    /// The native entry point, e.g. `cuMemAllocAsync` or `vkAllocateMemory`.
    pub call: &'static str,
    /// The raw status code returned by the native API.
    pub code: i64,
    /// The symbolic name of `code`, e.g. `CUDA_ERROR_OUT_OF_MEMORY`.
    pub name: String,
}

impl std::fmt::Display for NativeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} returned {} ({})", self.call, self.name, self.code)
    }
}

/// Everything that can go wrong in gpuhal, with enough context to act on it.
///
/// Library code never panics on bad input: every misuse a caller can express through
/// the public API maps onto one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The allocator could not satisfy a request, even after releasing its cache and
    /// retrying once, or the request would exceed the configured memory limit.
    #[error(
        "out of memory: {requested} bytes of {kind:?} memory requested; \
         {} bytes live, {} bytes reserved, {} bytes cached{}",
        stats.live_bytes, stats.reserved_bytes, stats.cached_bytes,
        limit.map(|l| format!(", limit {l} bytes")).unwrap_or_default()
    )]
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Kind of memory asked for.
        kind: MemoryKind,
        /// The memory limit that refused the request, if one did.
        limit: Option<u64>,
        /// Allocator statistics at the moment of failure.
        stats: Box<MemoryStats>,
    },

    /// A native API call failed.
    #[error("{context}: {native}")]
    Native {
        /// What gpuhal was doing.
        context: String,
        /// What the native API said.
        native: NativeError,
    },

    /// The device lacks a capability the operation needs.
    #[error("{operation} needs {needed:?}, which this device does not have")]
    Unsupported {
        /// The operation that was refused.
        operation: &'static str,
        /// The capability that is missing.
        needed: Capabilities,
    },

    /// An argument was out of range or inconsistent.
    #[error("invalid argument to {operation}: {reason}")]
    InvalidArgument {
        /// The operation that was refused.
        operation: &'static str,
        /// Why.
        reason: String,
    },

    /// A range fell outside the buffer it addresses.
    #[error(
        "{operation}: range {offset}..{} is outside a buffer of {len} bytes",
        offset.saturating_add(*size)
    )]
    OutOfBounds {
        /// The operation that was refused.
        operation: &'static str,
        /// Start of the requested range.
        offset: u64,
        /// Length of the requested range.
        size: u64,
        /// Length of the buffer.
        len: u64,
    },

    /// Handles from two different devices, or from a different backend, were mixed.
    #[error("{operation}: {what} belongs to device {found}, but the operation runs on device {expected}")]
    ForeignHandle {
        /// The operation that was refused.
        operation: &'static str,
        /// What the foreign handle was (a buffer, an event, a fence …).
        what: &'static str,
        /// Device the operation runs on.
        expected: u32,
        /// Device the handle belongs to.
        found: u32,
    },

    /// A stream of one device named memory of another device it has no access to.
    #[error(
        "{operation}: device {device} has no access to the memory of device {peer}; \
         call enable_peer_access on device {device} with device {peer} first{}",
        if *possible { "" } else { " (the devices cannot be peers)" }
    )]
    PeerAccess {
        /// The operation that was refused.
        operation: &'static str,
        /// The device whose stream ran the operation.
        device: u32,
        /// The device that owns the memory.
        peer: u32,
        /// Whether the pair could be made peers at all.
        possible: bool,
    },

    /// Handles from two different backends were mixed through the dynamic facade.
    #[error("{operation}: a {found} handle was given to the {expected} backend")]
    BackendMismatch {
        /// The operation that was refused.
        operation: &'static str,
        /// Backend that owns the operation.
        expected: &'static str,
        /// Backend the handle came from.
        found: &'static str,
    },

    /// A buffer was used after it had been freed (detected by checking backends).
    #[error("use after free: {operation} on {address:#x} (allocation #{allocation}), freed by {freed_by}")]
    UseAfterFree {
        /// The operation that touched freed memory.
        operation: &'static str,
        /// Address that was touched.
        address: u64,
        /// Identity of the freed allocation.
        allocation: u64,
        /// Where it was freed.
        freed_by: String,
    },

    /// An allocation was freed twice (detected by checking backends).
    #[error("double free of {address:#x} (allocation #{allocation}); first freed by {first}")]
    DoubleFree {
        /// Address freed twice.
        address: u64,
        /// Identity of the allocation.
        allocation: u64,
        /// Where it was first freed.
        first: String,
    },

    /// Two streams touched one buffer with no event or fence ordering them, and at
    /// least one of them wrote (detected by checking backends).
    #[error("unsynchronised use of allocation #{allocation} at {address:#x}: {first} and {second} with no event or fence between them")]
    Race {
        /// Address of the buffer.
        address: u64,
        /// Identity of the allocation.
        allocation: u64,
        /// The earlier access (stream and operation).
        first: String,
        /// The later, conflicting access.
        second: String,
    },

    /// A fence was signalled with a value lower than one already signalled.
    #[error("fence regressed: signalled {requested}, but it already reached {current}")]
    FenceRegressed {
        /// The value asked for.
        requested: u64,
        /// The fence's value (or highest pending signal) at the time.
        current: u64,
    },

    /// A CPU wait ran out of time. The fence or event stays usable.
    #[error("{operation} timed out after {waited:?} (waiting for {target}, reached {reached})")]
    Timeout {
        /// The wait that timed out.
        operation: &'static str,
        /// How long it waited.
        waited: Duration,
        /// The value waited for (fences) or 1 (events).
        target: u64,
        /// The value reached when the wait gave up.
        reached: u64,
    },

    /// An operation that cannot be captured was issued on a capturing stream. The capture
    /// is abandoned and the stream is usable again.
    #[error("{operation} is not allowed while stream {stream} is capturing; the capture was abandoned")]
    CaptureInvalidated {
        /// The operation that was refused.
        operation: &'static str,
        /// Stream that was capturing.
        stream: u64,
    },

    /// A stream capture call was out of order (ending a capture never begun, beginning twice).
    #[error("capture state: {0}")]
    CaptureState(String),

    /// `GraphExec::update` was given a graph of a different shape.
    #[error("graph update refused: {reason}")]
    GraphUpdate {
        /// Why the graphs differ.
        reason: String,
    },

    /// Host import was refused: the policy forbids the only path the platform offers.
    #[error("host import of {len} bytes refused: {reason}")]
    ImportRefused {
        /// Bytes asked for.
        len: u64,
        /// Which paths were tried and why each failed.
        reason: String,
    },

    /// A fault injected by the mock backend.
    #[error("injected fault: {0}")]
    Injected(String),

    /// Sending or receiving a shared memory handle over a socket failed.
    #[error("{context}: {source}")]
    Transfer {
        /// What was being sent or received.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing an allocation trace failed.
    #[error("trace {context}: {source}")]
    Trace {
        /// What was being read or written.
        context: String,
        /// The underlying I/O or parse error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Builds [`Error::Native`] from a failed native call.
    pub fn native(context: impl Into<String>, native: NativeError) -> Self {
        Error::Native {
            context: context.into(),
            native,
        }
    }

    /// Builds [`Error::InvalidArgument`].
    pub fn invalid(operation: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            operation,
            reason: reason.into(),
        }
    }

    /// True for errors that mean "no memory", from the allocator or the native API.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::OutOfMemory { .. } => true,
            // CUDA_ERROR_OUT_OF_MEMORY; VK_ERROR_OUT_OF_DEVICE_MEMORY / _HOST_MEMORY.
            Error::Native { native, .. } => {
                native.name.contains("OUT_OF_MEMORY")
                    || native.name.contains("OUT_OF_DEVICE_MEMORY")
                    || native.name.contains("OUT_OF_HOST_MEMORY")
            }
            _ => false,
        }
    }
}

/// Checks that `offset..offset + size` lies inside a buffer of `len` bytes.
pub fn check_range(operation: &'static str, offset: u64, size: u64, len: u64) -> Result<()> {
    match offset.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::OutOfBounds {
            operation,
            offset,
            size,
            len,
        }),
    }
}
