//! Status codes, the thread-local last error, and the guard every exported function runs
//! its body in: errors become a status plus a message, and a panic never unwinds into C.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use gpuhal::Error;

/// What a call returned. `GPUHAL_STATUS_OK` is zero; anything else is a failure whose
/// details `gpuhal_last_error_message` gives on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuhalStatus {
    /// The call succeeded.
    Ok = 0,
    /// An argument was null, out of range, overflowing, or not valid UTF-8.
    InvalidArgument = 1,
    /// A handle was null, already closed or destroyed, or never returned by gpuhal.
    InvalidHandle = 2,
    /// A pointer was not handed out by gpuhal on this device, or was freed already.
    UnknownPointer = 3,
    /// A pointer or handle belongs to another device (or another backend).
    Foreign = 4,
    /// The device, or a memory limit, has no room for the request.
    OutOfMemory = 5,
    /// The device lacks a capability the call needs.
    Unsupported = 6,
    /// The driver failed, or the backend could not be loaded.
    Native = 7,
    /// A wait ran out of time; the object stays usable.
    Timeout = 8,
    /// A fence was signalled below a value it already reached.
    FenceRegressed = 9,
    /// A graph capture was invalidated, was not in the expected state, or an update did
    /// not match.
    Capture = 10,
    /// A host import was refused by its policy.
    ImportRefused = 11,
    /// A checking backend (the mock) detected misuse: a race, a use after free.
    Misuse = 12,
    /// A bug in gpuhal (a caught panic) or an error with no better status.
    Internal = 13,
}

impl GpuhalStatus {
    /// Every status, in code order.
    const ALL: [GpuhalStatus; 14] = [
        GpuhalStatus::Ok,
        GpuhalStatus::InvalidArgument,
        GpuhalStatus::InvalidHandle,
        GpuhalStatus::UnknownPointer,
        GpuhalStatus::Foreign,
        GpuhalStatus::OutOfMemory,
        GpuhalStatus::Unsupported,
        GpuhalStatus::Native,
        GpuhalStatus::Timeout,
        GpuhalStatus::FenceRegressed,
        GpuhalStatus::Capture,
        GpuhalStatus::ImportRefused,
        GpuhalStatus::Misuse,
        GpuhalStatus::Internal,
    ];

    /// The status with code `code`, if there is one.
    pub fn from_code(code: i32) -> Option<GpuhalStatus> {
        usize::try_from(code)
            .ok()
            .and_then(|index| Self::ALL.get(index).copied())
    }

    /// The status's name, as the C enumerator spells it.
    pub fn c_name(self) -> &'static CStr {
        match self {
            GpuhalStatus::Ok => c"GPUHAL_STATUS_OK",
            GpuhalStatus::InvalidArgument => c"GPUHAL_STATUS_INVALID_ARGUMENT",
            GpuhalStatus::InvalidHandle => c"GPUHAL_STATUS_INVALID_HANDLE",
            GpuhalStatus::UnknownPointer => c"GPUHAL_STATUS_UNKNOWN_POINTER",
            GpuhalStatus::Foreign => c"GPUHAL_STATUS_FOREIGN",
            GpuhalStatus::OutOfMemory => c"GPUHAL_STATUS_OUT_OF_MEMORY",
            GpuhalStatus::Unsupported => c"GPUHAL_STATUS_UNSUPPORTED",
            GpuhalStatus::Native => c"GPUHAL_STATUS_NATIVE",
            GpuhalStatus::Timeout => c"GPUHAL_STATUS_TIMEOUT",
            GpuhalStatus::FenceRegressed => c"GPUHAL_STATUS_FENCE_REGRESSED",
            GpuhalStatus::Capture => c"GPUHAL_STATUS_CAPTURE",
            GpuhalStatus::ImportRefused => c"GPUHAL_STATUS_IMPORT_REFUSED",
            GpuhalStatus::Misuse => c"GPUHAL_STATUS_MISUSE",
            GpuhalStatus::Internal => c"GPUHAL_STATUS_INTERNAL",
        }
    }

    /// The status's name, as the C enumerator spells it.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("GPUHAL_STATUS_UNKNOWN")
    }

    /// The status gpuhal's error maps to.
    pub fn of(error: &Error) -> GpuhalStatus {
        match error {
            Error::OutOfMemory { .. } => GpuhalStatus::OutOfMemory,
            Error::Native { .. } | Error::Injected(_) => GpuhalStatus::Native,
            Error::Unsupported { .. } => GpuhalStatus::Unsupported,
            Error::InvalidArgument { .. } | Error::OutOfBounds { .. } => GpuhalStatus::InvalidArgument,
            // Memory of a device this one was given no access to: another device's handle.
            Error::ForeignHandle { .. } | Error::BackendMismatch { .. } | Error::PeerAccess { .. } => {
                GpuhalStatus::Foreign
            }
            Error::UseAfterFree { .. } | Error::DoubleFree { .. } | Error::Race { .. } => GpuhalStatus::Misuse,
            Error::FenceRegressed { .. } => GpuhalStatus::FenceRegressed,
            Error::Timeout { .. } => GpuhalStatus::Timeout,
            Error::CaptureInvalidated { .. } | Error::CaptureState(_) | Error::GraphUpdate { .. } => {
                GpuhalStatus::Capture
            }
            Error::ImportRefused { .. } => GpuhalStatus::ImportRefused,
            // A trace file that cannot be created or read: the path the caller gave.
            Error::Trace { .. } => GpuhalStatus::InvalidArgument,
            // A socket that failed or carried something else than a handle.
            Error::Transfer { .. } => GpuhalStatus::InvalidArgument,
            _ => GpuhalStatus::Internal,
        }
    }
}

/// A failure on its way to C: the status and the message the caller will read.
#[derive(Debug)]
pub struct Failure {
    /// The status returned.
    pub status: GpuhalStatus,
    /// What was asked and why it failed.
    pub message: String,
}

impl Failure {
    /// A failure with `status`; `message` says what was asked and why it failed.
    pub fn new(status: GpuhalStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// [`GpuhalStatus::InvalidArgument`] for `function`.
    pub fn invalid(function: &str, reason: impl std::fmt::Display) -> Self {
        Failure::new(GpuhalStatus::InvalidArgument, format!("{function}: {reason}"))
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::new(GpuhalStatus::of(&error), error.to_string())
    }
}

/// Adds the C function's name to a gpuhal error, so the message says what was asked.
pub trait InFunction<T> {
    /// The error, prefixed with `function`.
    fn in_function(self, function: &str) -> Result<T, Failure>;
}

impl<T> InFunction<T> for gpuhal::Result<T> {
    fn in_function(self, function: &str) -> Result<T, Failure> {
        self.map_err(|error| {
            let status = GpuhalStatus::of(&error);
            Failure::new(status, format!("{function}: {error}"))
        })
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `failure` as this thread's last error and returns its status.
pub fn fail(failure: Failure) -> GpuhalStatus {
    // An interior NUL cannot be represented; replace it rather than lose the message.
    let text = CString::new(failure.message.replace('\0', "\u{fffd}")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = Some(text));
    failure.status
}

/// Runs an exported function's body: its error becomes the status and this thread's last
/// error, and a panic becomes [`GpuhalStatus::Internal`] instead of unwinding into C.
pub fn guard(function: &'static str, body: impl FnOnce() -> Result<(), Failure>) -> GpuhalStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => GpuhalStatus::Ok,
        Ok(Err(failure)) => fail(failure),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into());
            fail(Failure::new(
                GpuhalStatus::Internal,
                format!("{function}: internal error (a bug in gpuhal, please report it): {what}"),
            ))
        }
    }
}

/// The message of this thread's last failed call, or null if none failed yet. The text
/// stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn gpuhal_last_error_message() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|last| last.borrow().as_ref().map_or(std::ptr::null(), |text| text.as_ptr())))
        .unwrap_or(std::ptr::null())
}

/// The name of status code `status` (`"GPUHAL_STATUS_OUT_OF_MEMORY"` …), a static
/// string; `"GPUHAL_STATUS_UNKNOWN"` for a code that is not a status.
#[no_mangle]
pub extern "C" fn gpuhal_status_name(status: i32) -> *const c_char {
    catch_unwind(|| {
        GpuhalStatus::from_code(status)
            .map_or(c"GPUHAL_STATUS_UNKNOWN", GpuhalStatus::c_name)
            .as_ptr()
    })
    .unwrap_or(std::ptr::null())
}
