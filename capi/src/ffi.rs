//! Reading what C passes in: strings, out-pointers, sizes. The only place the C ABI
//! dereferences a caller's pointer for its own arguments.

use std::ffi::{c_char, CStr};

use crate::status::Failure;

/// Writes `value` through `out`, refusing a null pointer.
///
/// # Safety
///
/// `out` is null or valid for writing a `T`.
pub unsafe fn write_out<T>(function: &str, what: &str, out: *mut T, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(function, format!("{what} is null")));
    }
    // SAFETY: `out` is not null, and the caller guarantees it is valid for a write.
    unsafe { out.write(value) };
    Ok(())
}

/// Reads a NUL-terminated UTF-8 string.
///
/// # Safety
///
/// `text` is null or points to a NUL-terminated string that outlives the call.
pub unsafe fn read_str<'a>(function: &str, what: &str, text: *const c_char) -> Result<&'a str, Failure> {
    if text.is_null() {
        return Err(Failure::invalid(function, format!("{what} is null")));
    }
    // SAFETY: not null, and the caller guarantees a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map_err(|err| Failure::invalid(function, format!("{what} is not UTF-8: {err}")))
}

/// Reads a `T` the caller passed by pointer.
///
/// # Safety
///
/// `value` is null or valid for reading a `T`.
pub unsafe fn read_in<T: Copy>(function: &str, what: &str, value: *const T) -> Result<T, Failure> {
    if value.is_null() {
        return Err(Failure::invalid(function, format!("{what} is null")));
    }
    // SAFETY: not null, and the caller guarantees it is valid for a read.
    Ok(unsafe { value.read() })
}

/// A host buffer of `len` bytes the caller passed, as a slice.
///
/// # Safety
///
/// `data` is valid for reads of `len` bytes for `'a`, or `len` is 0.
pub unsafe fn host_slice<'a>(function: &str, what: &str, data: *const u8, len: u64) -> Result<&'a [u8], Failure> {
    let len = host_len(function, what, len)?;
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Failure::invalid(
            function,
            format!("{what} is null but {len} bytes were asked for"),
        ));
    }
    // SAFETY: not null, and the caller guarantees `len` readable bytes for 'a.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// A writable host buffer of `len` bytes the caller passed, as a slice.
///
/// # Safety
///
/// `data` is valid for writes of `len` bytes for `'a`, or `len` is 0.
pub unsafe fn host_slice_mut<'a>(function: &str, what: &str, data: *mut u8, len: u64) -> Result<&'a mut [u8], Failure> {
    let len = host_len(function, what, len)?;
    if len == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(Failure::invalid(
            function,
            format!("{what} is null but {len} bytes were asked for"),
        ));
    }
    // SAFETY: not null, and the caller guarantees `len` writable bytes for 'a.
    Ok(unsafe { std::slice::from_raw_parts_mut(data, len) })
}

fn host_len(function: &str, what: &str, len: u64) -> Result<usize, Failure> {
    usize::try_from(len)
        .ok()
        .filter(|&len| len <= isize::MAX as usize)
        .ok_or_else(|| Failure::invalid(function, format!("{what}: {len} bytes does not fit in host memory")))
}

/// Runs `make` and writes what it returns through `out`. A null `out` is refused before
/// `make` runs, so nothing is created that the caller could not receive.
///
/// # Safety
///
/// `out` is null or valid for writing a `T`.
pub unsafe fn produce<T>(
    function: &str,
    out: *mut T,
    make: impl FnOnce() -> Result<T, Failure>,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(function, "out is null"));
    }
    let value = make()?;
    // SAFETY: not null, and the caller guarantees it is valid for a write.
    unsafe { out.write(value) };
    Ok(())
}
