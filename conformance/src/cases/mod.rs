//! The cases, one module per area, and helpers they share.

use gpuhal_hal::{AsRegion, Backend, Buffer, Device, MemoryKind, Stream};

use crate::case::{Case, Context, Failure, ResultExt};

mod allocators;
mod bad_input;
mod concurrency;
mod events;
mod fences;
mod graphs;
mod host_import;
mod managed;
mod memory;
mod multi_device;
mod sharing;

/// Every case of the suite, grouped by area in report order.
pub fn all<B: Backend>() -> Vec<Case<B>> {
    let mut cases = Vec::new();
    cases.extend(memory::cases::<B>());
    cases.extend(allocators::cases::<B>());
    cases.extend(managed::cases::<B>());
    cases.extend(host_import::cases::<B>());
    cases.extend(events::cases::<B>());
    cases.extend(fences::cases::<B>());
    cases.extend(graphs::cases::<B>());
    cases.extend(concurrency::cases::<B>());
    cases.extend(bad_input::cases::<B>());
    cases.extend(multi_device::cases::<B>());
    cases.extend(sharing::cases::<B>());
    cases
}

/// The importer sides of the sharing cases, by name (see [`crate::Context::with_importer`]).
pub fn sharing_roles<B: Backend>() -> Vec<crate::Role<B>> {
    sharing::roles::<B>()
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A byte pattern that differs with `seed` and does not repeat with a short period, so
/// an offset or truncation error shows up as a mismatch.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 >> 8) as u8 ^ seed)
        .collect()
}

/// Fails naming the first differing byte, unless `actual == expected`.
pub(crate) fn ensure_bytes(actual: &[u8], expected: &[u8], what: &str) -> Result<(), Failure> {
    if actual.len() != expected.len() {
        return Err(Failure::mismatch(
            format!("{what}: length"),
            expected.len(),
            actual.len(),
        ));
    }
    match actual.iter().zip(expected).position(|(a, e)| a != e) {
        None => Ok(()),
        Some(index) => Err(Failure::new(format!(
            "{what}: byte {index} of {}: expected {:#04x}, got {:#04x}",
            actual.len(),
            expected[index],
            actual[index]
        ))),
    }
}

/// Reads `len` bytes of `region` from `offset` on `stream`.
pub(crate) fn read_back<B: Backend>(
    stream: &B::Stream,
    region: &dyn AsRegion,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, Failure> {
    let mut out = vec![0u8; len];
    stream.read(region, offset, &mut out).during("reading back")?;
    Ok(out)
}

/// A live buffer with known contents, used to show that a refused operation lost nothing
/// else: the buffer keeps its bytes and the allocator keeps serving requests.
pub(crate) struct Sentinel<B: Backend> {
    stream: B::Stream,
    buffer: Buffer<B>,
    contents: Vec<u8>,
}

impl<B: Backend> Sentinel<B> {
    pub(crate) fn new(ctx: &Context<B>) -> Result<Self, Failure> {
        let stream = ctx.stream()?;
        let contents = pattern(4096, 0x5a);
        let buffer = ctx
            .device()
            .allocate(contents.len() as u64, MemoryKind::Device, &stream)
            .during("allocating the sentinel buffer")?;
        stream
            .write(&buffer, 0, &contents)
            .during("writing the sentinel buffer")?;
        Ok(Sentinel {
            stream,
            buffer,
            contents,
        })
    }

    /// Checks that the sentinel kept its contents and that a fresh allocation still
    /// round-trips data.
    pub(crate) fn verify(&self, ctx: &Context<B>, after: &str) -> Result<(), Failure> {
        let kept = read_back::<B>(&self.stream, &self.buffer, 0, self.contents.len())?;
        ensure_bytes(&kept, &self.contents, &format!("another live buffer after {after}"))?;
        let fresh_data = pattern(1000, 0x33);
        let fresh = ctx
            .device()
            .allocate(fresh_data.len() as u64, MemoryKind::Device, &self.stream)
            .during(&format!("allocating after {after}"))?;
        self.stream
            .write(&fresh, 0, &fresh_data)
            .during(&format!("writing a fresh buffer after {after}"))?;
        let read = read_back::<B>(&self.stream, &fresh, 0, fresh_data.len())?;
        ensure_bytes(&read, &fresh_data, &format!("a fresh buffer after {after}"))
    }

    pub(crate) fn stream(&self) -> &B::Stream {
        &self.stream
    }

    pub(crate) fn buffer(&self) -> &Buffer<B> {
        &self.buffer
    }
}

/// Signals a fence that holds a stream back when the case ends, however it ends, so an
/// early failure does not leave a stream blocked forever (dropping it would then hang).
pub(crate) struct OpenOnDrop<'a, B: Backend> {
    fence: &'a B::Fence,
    value: u64,
}

impl<'a, B: Backend> OpenOnDrop<'a, B> {
    pub(crate) fn new(fence: &'a B::Fence, value: u64) -> Self {
        OpenOnDrop { fence, value }
    }
}

impl<B: Backend> Drop for OpenOnDrop<'_, B> {
    fn drop(&mut self) {
        // A regression error means the fence is already past the value: nothing is held.
        let _ = gpuhal_hal::Fence::signal(self.fence, self.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_has_no_short_period_and_depends_on_seed() {
        let p = pattern(4096, 1);
        for period in [1, 2, 4, 256, 512, 1024] {
            assert!(
                p[period..] != p[..p.len() - period],
                "pattern repeats every {period} bytes"
            );
        }
        assert_ne!(pattern(64, 1), pattern(64, 2));
    }

    #[test]
    fn ensure_bytes_names_the_first_difference() {
        let err = ensure_bytes(&[1, 2, 9], &[1, 2, 3], "data").unwrap_err();
        assert_eq!(err.message(), "data: byte 2 of 3: expected 0x03, got 0x09");
        assert!(ensure_bytes(&[1, 2], &[1, 2, 3], "data").is_err());
        assert!(ensure_bytes(&[1, 2, 3], &[1, 2, 3], "data").is_ok());
    }
}
