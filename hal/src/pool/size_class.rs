//! Size classes: how a requested size is rounded before it is cached.
//!
//! Small sizes round to 512 bytes (alignment stays a multiple of 256). From 64 KiB up,
//! each power-of-two range is split into [`STEPS_PER_OCTAVE`] equal steps, so rounding
//! wastes under 1/128 (0.78%) of a request. Fine steps keep reserved memory close to live
//! memory; recurring sizes (the common case in training and inference loops) still hit
//! exactly the same class.

/// Granularity of small sizes, and the minimum allocation size.
pub const MIN_BLOCK: u64 = 512;
/// Steps each power-of-two range is split into above 64 KiB.
pub const STEPS_PER_OCTAVE: u64 = 128;
/// Largest request the allocator accepts (2^60 bytes): beyond it rounding would overflow.
pub const MAX_REQUEST: u64 = 1 << 60;

/// The rounded size a request of `size` bytes is served with. `size` must be in
/// `1..=MAX_REQUEST`.
///
/// ```
/// use gpuhal_hal::pool::size_class::rounded_size;
/// assert_eq!(rounded_size(1), 512);
/// assert_eq!(rounded_size(1000), 1024);
/// assert_eq!(rounded_size(1 << 20), 1 << 20);
/// assert_eq!(rounded_size((1 << 20) + 1), (1 << 20) + (1 << 13));
/// ```
#[inline]
pub fn rounded_size(size: u64) -> u64 {
    debug_assert!(size > 0 && size <= MAX_REQUEST);
    let granularity = if size <= MIN_BLOCK * STEPS_PER_OCTAVE {
        MIN_BLOCK
    } else {
        // Highest power of two not above size, divided into steps.
        (1u64 << (63 - size.leading_zeros())) / STEPS_PER_OCTAVE
    };
    size.div_ceil(granularity) * granularity
}

/// A dense index of a rounded size (as returned by [`rounded_size`]): consecutive classes
/// have consecutive indices, so per-class tables can be plain vectors.
///
/// ```
/// use gpuhal_hal::pool::size_class::{class_index, rounded_size};
/// assert_eq!(class_index(512), 1);
/// assert_eq!(class_index(rounded_size(65_537)), class_index(65_536) + 1);
/// ```
#[inline]
pub fn class_index(rounded: u64) -> usize {
    const SMALL_LIMIT: u64 = MIN_BLOCK * STEPS_PER_OCTAVE;
    if rounded < SMALL_LIMIT {
        (rounded / MIN_BLOCK) as usize
    } else {
        let octave = 63 - rounded.leading_zeros() as u64;
        let step = (rounded - (1 << octave)) / ((1 << octave) / STEPS_PER_OCTAVE);
        (STEPS_PER_OCTAVE + (octave - SMALL_LIMIT.trailing_zeros() as u64) * STEPS_PER_OCTAVE + step) as usize
    }
}

/// The rounded size of the class after `rounded`.
#[inline]
pub fn next_class(rounded: u64) -> u64 {
    rounded_size(rounded + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_never_shrinks_and_wastes_under_one_percent_above_64k() {
        let mut size = 1u64;
        while size < (1 << 40) {
            for probe in [size, size + 1, size * 3 / 2 + 7] {
                let r = rounded_size(probe);
                assert!(r >= probe, "{probe} rounded down to {r}");
                assert_eq!(r % 256, 0, "{probe} rounded to unaligned {r}");
                if probe > 64 << 10 {
                    assert!((r - probe) as f64 / probe as f64 <= 1.0 / 128.0, "{probe} -> {r}");
                }
                assert_eq!(rounded_size(r), r, "rounding is not idempotent at {probe}");
                assert_eq!(
                    class_index(next_class(r)),
                    class_index(r) + 1,
                    "class indices skip after {r}"
                );
            }
            size *= 2;
        }
    }
}
