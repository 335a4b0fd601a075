//! Timing: warm up, repeat, and summarise as median, min and max.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How much work each benchmark does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Run each benchmark a handful of iterations, only to prove it works.
    pub smoke: bool,
    /// Run only the benchmarks whose step names contain one of these (all when empty).
    pub only: Vec<String>,
}

impl Settings {
    /// Whether the step called `name` runs.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|wanted| name.contains(wanted.as_str()))
    }

    /// Timed batches per benchmark; the median is taken over them.
    pub fn batches(&self) -> usize {
        if self.smoke {
            2
        } else {
            21
        }
    }

    /// Untimed batches run first, so caches, pools and page tables are warm.
    pub fn warmup_batches(&self) -> usize {
        if self.smoke {
            1
        } else {
            3
        }
    }

    /// Iterations per batch: `full` normally, a handful in smoke mode.
    pub fn iterations(&self, full: usize) -> usize {
        if self.smoke {
            full.clamp(1, 8)
        } else {
            full
        }
    }

    /// Individually timed samples (latency benchmarks).
    pub fn samples(&self, full: usize) -> usize {
        if self.smoke {
            full.clamp(1, 5)
        } else {
            full
        }
    }

    /// A byte size: `full` normally, `smoke` in smoke mode.
    pub fn bytes(&self, full: u64, smoke: u64) -> u64 {
        if self.smoke {
            smoke
        } else {
            full
        }
    }
}

/// Median, min and max of a set of samples, in the unit of the row that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Middle sample (mean of the two middle ones for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Summary {
    /// Summarises `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: n,
        })
    }

    /// A single value (a count or a size measured once).
    pub fn single(value: f64) -> Summary {
        Summary {
            median: value,
            min: value,
            max: value,
            samples: 1,
        }
    }

    /// The same summary with every value mapped through `f`, which must be monotonic
    /// decreasing (ns per op → ops per second): min and max swap.
    pub fn inverted(&self, f: impl Fn(f64) -> f64) -> Summary {
        Summary {
            median: f(self.median),
            min: f(self.max),
            max: f(self.min),
            samples: self.samples,
        }
    }
}

/// Runs `batch(iterations)` for the warm-up and timed batches and returns nanoseconds
/// per operation. `batch` times itself (so it can leave set-up and synchronisation out)
/// and performs `iterations × ops_per_iteration` operations.
pub fn ns_per_op<E>(
    settings: &Settings,
    iterations: usize,
    ops_per_iteration: usize,
    mut batch: impl FnMut(usize) -> Result<Duration, E>,
) -> Result<Summary, E> {
    for _ in 0..settings.warmup_batches() {
        batch(iterations)?;
    }
    let ops = (iterations * ops_per_iteration).max(1) as f64;
    let mut values = Vec::with_capacity(settings.batches());
    for _ in 0..settings.batches() {
        values.push(batch(iterations)?.as_nanos() as f64 / ops);
    }
    Ok(Summary::of(&values).unwrap_or(Summary::single(f64::NAN)))
}

/// Times `once()` `samples` times after `warmup` untimed runs; values in microseconds.
/// `once` times itself.
pub fn each_us<E>(warmup: usize, samples: usize, mut once: impl FnMut() -> Result<Duration, E>) -> Result<Summary, E> {
    for _ in 0..warmup {
        once()?;
    }
    let mut values = Vec::with_capacity(samples);
    for _ in 0..samples {
        values.push(once()?.as_nanos() as f64 / 1e3);
    }
    Ok(Summary::of(&values).unwrap_or(Summary::single(f64::NAN)))
}

/// Times a closure.
pub fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(T, Duration), E> {
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

/// CPU time consumed so far, by the whole process and by the calling thread.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    /// User + system time of every thread of the process.
    pub process: Duration,
    /// User + system time of the calling thread.
    pub thread: Duration,
}

impl CpuTime {
    /// Reads both clocks now.
    pub fn now() -> CpuTime {
        CpuTime {
            process: rusage(libc::RUSAGE_SELF),
            thread: thread_cpu_time(),
        }
    }
}

fn rusage(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given, which points to a zeroed, properly sized and aligned value owned by this frame.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: the structure was zero-initialised (a valid rusage) and then filled in.
    let usage = unsafe { usage.assume_init() };
    let to_duration = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32).saturating_mul(1000));
    to_duration(usage.ru_utime) + to_duration(usage.ru_stime)
}

/// CPU time of the calling thread, at nanosecond resolution (`getrusage` has only
/// microseconds, too coarse for one graph launch).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a timespec into the pointer, which points to a valid timespec owned by this frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A small deterministic generator (splitmix64): the same seed gives the same sizes on
/// every machine and every version, so runs stay comparable.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `low..=high`: every power of two in the range is as likely, as
    /// tensor sizes in a model are.
    pub fn log_uniform(&mut self, low: u64, high: u64) -> u64 {
        let (ln_low, ln_high) = ((low as f64).ln(), (high as f64).ln());
        let value = (ln_low + self.unit() * (ln_high - ln_low)).exp() as u64;
        value.clamp(low, high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_middle() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn log_uniform_stays_in_range() {
        let mut rng = SplitMix::new(7);
        for _ in 0..10_000 {
            let v = rng.log_uniform(512, 16 << 20);
            assert!((512..=16 << 20).contains(&v));
        }
    }
}
