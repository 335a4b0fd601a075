//! The lock of hot, normally uncontended state: a stream's cache, an event pool's idle
//! list.
//!
//! Such state is touched by the one thread that drives a stream almost all the time. A
//! plain lock still costs an atomic read-modify-write to acquire (its release is a plain
//! store), and two of them per allocate + drop pair were what the allocator's hit path
//! cost beyond its own work. [`HotLock`] is a *biased* lock: once one thread has taken it
//! [`BIAS_AFTER`] times in a row (more after every revocation), that thread becomes its
//! owner and takes it with plain loads and stores only. Any other thread takes it through
//! an inner spin lock, first revoking the bias: it clears the owner, issues a
//! process-wide memory barrier (Linux `membarrier`, which makes every running thread of
//! the process execute a full fence) and waits until the owner is not inside the lock.
//! This is Dekker's mutual exclusion with the owner's half of the fence moved to the
//! revoking thread, the asymmetric fence hazard pointers and RCU use.
//!
//! Nothing is parked per thread: the state behind the lock is the one shared state, so
//! `stats`, `trim`, eviction and cross-thread drops see and reach everything exactly as
//! before; they only pay a revocation (a few microseconds) when the state is biased to
//! another thread. Where `membarrier` is missing (not Linux, or a kernel without
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`) no lock is ever biased and every acquisition takes
//! the inner spin lock, which is what this module was before.
//!
//! The owner protocol, for a lock `L` biased to the thread holding slot `s`:
//! - owner: `SLOTS[s] = &L`; compiler fence; if `L.owner == s` enter, else
//!   `SLOTS[s] = 0` and take the slow path; on leaving `SLOTS[s] = 0` (release);
//! - other: lock the inner lock; `L.owner = 0`; `membarrier()`; wait while
//!   `SLOTS[s] == &L`; enter.
//!
//! Each slot is written only by the thread holding it, so a thread that read a stale
//! owner and then backs off cannot clobber another thread's record. A thread is inside at
//! most one lock by the fast path at a time; a nested acquisition (eviction locks every
//! shard) takes the inner lock, and a thread that owns the bias of the lock it takes that
//! way needs no revocation, since no other thread can be inside by the fast path.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{compiler_fence, AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

type InnerLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// Consecutive slow acquisitions by one thread after which the lock is biased to it.
pub(crate) const BIAS_AFTER: u32 = 16;
/// The most that [`BIAS_AFTER`] grows to, doubling on every revocation: a lock used by
/// two threads in turn is revoked at most once per this many acquisitions.
const MAX_BIAS_AFTER: u32 = 1 << 14;

/// Threads that can own biases at once; a thread beyond them takes every lock by the slow
/// path.
const SLOT_COUNT: usize = 1024;

/// What a thread's slot holds: the address of the lock it is inside by the fast path, or
/// 0. A line of its own: it is written on every fast acquisition and release.
#[repr(align(128))]
struct Slot(AtomicUsize);

/// Slot 0 is never handed out: an owner of 0 means "not biased".
static SLOTS: [Slot; SLOT_COUNT] = [const { Slot(AtomicUsize::new(0)) }; SLOT_COUNT];

/// Slots of exited threads, for new threads to reuse, and the next never-used one.
static FREE_SLOTS: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 1));

/// This thread's claim on a slot, returned when the thread exits. A lock biased to an
/// exited thread's slot is then biased to whichever thread takes the slot next, which is
/// as good an owner as any: the slot, not the thread, is what the protocol names.
struct ThreadSlot(usize);

impl ThreadSlot {
    fn claim() -> Self {
        let index = {
            let mut free = FREE_SLOTS.lock();
            match free.0.pop() {
                Some(index) => index,
                None if free.1 < SLOT_COUNT => {
                    free.1 += 1;
                    free.1 - 1
                }
                None => 0,
            }
        };
        if index != 0 {
            MY_SLOT.with(|slot| slot.set(Some(&SLOTS[index])));
        }
        ThreadSlot(index)
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        if self.0 != 0 {
            MY_SLOT.with(|slot| slot.set(None));
            FREE_SLOTS.lock().0.push(self.0);
        }
    }
}

thread_local! {
    /// The slot of this thread, read on every acquisition: no destructor, so reading it
    /// is a plain thread-local load.
    static MY_SLOT: Cell<Option<&'static Slot>> = const { Cell::new(None) };
    /// The claim behind `MY_SLOT`, whose destructor gives the slot back.
    static CLAIM: ThreadSlot = ThreadSlot::claim();
}

/// The address of this thread's slot (what a lock's owner field holds), 0 when it has
/// none: not claimed yet (see [`claim_slot`]), slots exhausted, or the thread is exiting.
#[inline(always)]
fn my_slot() -> usize {
    MY_SLOT.with(|slot| slot.get().map_or(0, |slot| slot as *const Slot as usize))
}

/// Claims a slot for this thread if it has none yet; returns [`my_slot`].
#[cold]
fn claim_slot() -> usize {
    // Initialising the claim sets `MY_SLOT`; during thread exit this does nothing.
    let _ = CLAIM.try_with(|_| ());
    my_slot()
}

/// The slot at `address` (a value [`my_slot`] returned).
fn slot_at(address: usize) -> &'static Slot {
    let base = SLOTS.as_ptr() as usize;
    let index = address.wrapping_sub(base) / std::mem::size_of::<Slot>();
    &SLOTS[index.min(SLOT_COUNT - 1)]
}

/// Whether this process biases its hot locks (a stream cache's, an event pool's) to the
/// thread that keeps taking them, which then takes them with no atomic read-modify-write.
/// False where Linux's `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` is missing or
/// refused (not Linux, an old kernel, a sandbox that filters it): every acquisition then
/// takes a plain spin lock. Registers the process for the barrier on first call.
pub fn locks_biased() -> bool {
    barrier_available()
}

/// Whether the process-wide barrier is available (registered once, on first use).
fn barrier_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(register_barrier)
}

#[cfg(target_os = "linux")]
fn register_barrier() -> bool {
    // SAFETY: membarrier takes no pointers; an unknown command or an old kernel returns
    // an error, which is treated as "not available".
    let registered = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            libc::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    registered == 0
}

#[cfg(not(target_os = "linux"))]
fn register_barrier() -> bool {
    false
}

/// Makes every running thread of the process execute a full memory barrier. Returns
/// false when it could not (the caller then must not rely on it).
#[cfg(target_os = "linux")]
fn heavy_barrier() -> bool {
    // SAFETY: as in `register_barrier`; the process registered for this command before
    // any lock was biased.
    let done = unsafe { libc::syscall(libc::SYS_membarrier, libc::MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
    done == 0
}

#[cfg(not(target_os = "linux"))]
fn heavy_barrier() -> bool {
    false
}

/// Bookkeeping of who takes the lock by the slow path, under the inner lock.
struct Bias {
    /// The slot that took the lock by the slow path last, and how many times in a row.
    candidate: usize,
    streak: u32,
    /// Streak after which the candidate becomes the owner.
    threshold: u32,
    /// Revocations so far (tests read it).
    revocations: u64,
    /// Set when a revocation's barrier failed: the lock is never biased again.
    disabled: bool,
}

/// A lock whose owner thread takes it with no atomic read-modify-write (see the module
/// docs).
pub(crate) struct HotLock<T> {
    /// The address of the slot of the thread the lock is biased to; 0 when none. Read by
    /// every acquisition and written only when the bias changes, so on a line of its own:
    /// beside the inner lock's word, the read before the compare-and-swap of two threads
    /// taking turns by the slow path cost a second transfer of the contended line (a
    /// producer thread allocating and a consumer dropping ran ~25% slower per pair).
    owner: OwnLine<AtomicUsize>,
    inner: InnerLock<Bias>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is exclusive (the protocol in the module docs), so sharing the
// lock between threads is sound whenever the data may move between them.
unsafe impl<T: Send> Sync for HotLock<T> {}

/// Access to the data behind a [`HotLock`].
pub(crate) struct HotGuard<'a, T> {
    lock: &'a HotLock<T>,
    how: Held<'a>,
}

enum Held<'a> {
    /// Inside by the fast path: the slot to clear on leaving.
    Fast(&'static Slot),
    /// Inside through the inner lock; bias the lock to `slot` on leaving when set.
    Slow {
        _inner: spin::mutex::SpinMutexGuard<'a, Bias>,
        bias_to: usize,
    },
}

/// A value on a cache line (pair) of its own.
#[repr(align(128))]
struct OwnLine<T>(T);

impl<T> Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> HotLock<T> {
    pub(crate) fn new(data: T) -> Self {
        HotLock {
            owner: OwnLine(AtomicUsize::new(0)),
            inner: InnerLock::new(Bias {
                candidate: 0,
                streak: 0,
                threshold: BIAS_AFTER,
                revocations: 0,
                disabled: false,
            }),
            data: UnsafeCell::new(data),
        }
    }

    fn address(&self) -> usize {
        self as *const Self as usize
    }

    #[inline(always)]
    pub(crate) fn lock(&self) -> HotGuard<'_, T> {
        let mut slot = 0;
        if let Some(record) = MY_SLOT.with(Cell::get) {
            slot = record as *const Slot as usize;
            // Biased to this thread, which is not inside another lock by the fast path
            // (the record holds one lock). Checked first so that a thread taking an
            // unbiased lock goes straight to the inner lock.
            if self.owner.load(Ordering::Relaxed) == slot && record.0.load(Ordering::Relaxed) == 0 {
                // Release: a revoking thread that reads a later record (this thread inside
                // another lock) still sees what this thread did inside `self` before.
                record.0.store(self.address(), Ordering::Release);
                // The owner's half of the fence: a revoking thread's barrier supplies the
                // hardware one (module docs).
                compiler_fence(Ordering::SeqCst);
                if self.owner.load(Ordering::Acquire) == slot {
                    return HotGuard {
                        lock: self,
                        how: Held::Fast(record),
                    };
                }
                record.0.store(0, Ordering::Release);
            }
            // An unbiased lock taken in turn by several threads (a buffer allocated on one
            // thread and dropped on another): the inner lock's one compare-and-swap and a
            // count, inline, as lean as the plain lock this replaced.
            if let Some(mut guard) = self.inner.try_lock() {
                if self.owner.load(Ordering::Relaxed) == 0 {
                    let bias = &mut *guard;
                    let streak = if bias.candidate == slot {
                        bias.streak.saturating_add(1)
                    } else {
                        1
                    };
                    if streak < bias.threshold {
                        bias.candidate = slot;
                        bias.streak = streak;
                        return HotGuard {
                            lock: self,
                            how: Held::Slow {
                                _inner: guard,
                                bias_to: 0,
                            },
                        };
                    }
                }
                return self.locked_slow(guard, slot);
            }
        }
        self.lock_slow(slot)
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self, slot: usize) -> HotGuard<'_, T> {
        let slot = match slot {
            0 => claim_slot(),
            slot => slot,
        };
        let guard = self.inner.lock();
        self.locked_slow(guard, slot)
    }

    /// The rest of a slow acquisition once the inner lock is held: revoke another
    /// thread's bias, or shut this thread's own fast path; count the streak; decide
    /// whether to bias the lock on leaving.
    #[cold]
    #[inline(never)]
    fn locked_slow<'a>(&'a self, mut guard: spin::mutex::SpinMutexGuard<'a, Bias>, slot: usize) -> HotGuard<'a, T> {
        let owner = self.owner.load(Ordering::Relaxed);
        // The owner itself comes this way when it is inside another lock by the fast path
        // (nesting): it cannot be inside this one by the fast path too, so it needs no
        // revocation, only to keep its own fast path shut until it leaves (restored on
        // leaving), so that a re-entrant acquisition blocks as on a plain lock.
        let restore = owner != 0 && owner == slot;
        if restore {
            self.owner.store(0, Ordering::Relaxed);
        } else if owner != 0 {
            self.revoke(owner, &mut guard);
        }
        if restore {
            // Re-entry from inside this very lock by the fast path: wait, as a plain lock
            // would (forever), rather than hand out a second guard.
            let record = &slot_at(slot).0;
            while record.load(Ordering::Acquire) == self.address() {
                std::thread::yield_now();
            }
        }
        let bias = &mut *guard;
        if slot != 0 && bias.candidate == slot {
            bias.streak = bias.streak.saturating_add(1);
        } else {
            bias.candidate = slot;
            bias.streak = 1;
        }
        let bias_to =
            if restore || (slot != 0 && !bias.disabled && bias.streak >= bias.threshold && barrier_available()) {
                slot
            } else {
                0
            };
        HotGuard {
            lock: self,
            how: Held::Slow { _inner: guard, bias_to },
        }
    }

    /// Takes the bias away from `owner` and waits until it is not inside by the fast
    /// path. Called with the inner lock held.
    #[cold]
    fn revoke(&self, owner: usize, bias: &mut Bias) {
        self.owner.store(0, Ordering::SeqCst);
        bias.revocations += 1;
        bias.threshold = bias.threshold.saturating_mul(2).min(MAX_BIAS_AFTER);
        if !heavy_barrier() {
            // Cannot happen once registered; if it did, the owner might not see the
            // revocation, so never bias again and wait for it as best as can be done.
            bias.disabled = true;
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        let record = &slot_at(owner).0;
        while record.load(Ordering::Acquire) == self.address() {
            std::thread::yield_now();
        }
    }

    /// Revocations so far (for tests).
    #[cfg(test)]
    pub(crate) fn revocations(&self) -> u64 {
        self.inner.lock().revocations
    }

    /// Whether the lock is biased to the calling thread (for tests).
    #[cfg(test)]
    pub(crate) fn biased_to_me(&self) -> bool {
        let slot = my_slot();
        slot != 0 && self.owner.load(Ordering::Relaxed) == slot
    }
}

impl<T> Deref for HotGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its thread has exclusive access (module docs).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for HotGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for HotGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        match &self.how {
            Held::Fast(record) => record.0.store(0, Ordering::Release),
            Held::Slow { bias_to, .. } => {
                if *bias_to != 0 {
                    // Before the inner lock is released (when the guard's fields drop):
                    // the next slow taker sees the bias and revokes it.
                    self.lock.owner.store(*bias_to, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    use super::{HotLock, BIAS_AFTER};

    /// A thread that takes the lock repeatedly becomes its owner; another thread taking
    /// it revokes the bias.
    #[test]
    fn the_lock_biases_to_a_repeated_taker_and_another_thread_revokes_it() {
        let lock = Arc::new(HotLock::new(0u64));
        for _ in 0..=BIAS_AFTER {
            *lock.lock() += 1;
        }
        if !super::barrier_available() {
            eprintln!("skipped: membarrier is not available here, so locks are never biased");
            return;
        }
        assert!(lock.biased_to_me(), "biased after {BIAS_AFTER} acquisitions");
        let other = lock.clone();
        std::thread::spawn(move || *other.lock() += 1).join().unwrap();
        assert!(!lock.biased_to_me());
        assert_eq!(lock.revocations(), 1);
        assert_eq!(*lock.lock(), u64::from(BIAS_AFTER) + 2);
    }

    /// Mutual exclusion under the bias: a non-atomic read-modify-write of the data by
    /// many threads, some of them holding the bias for long runs, loses no update, and no
    /// two threads are ever inside at once.
    #[test]
    fn no_update_is_lost_while_the_bias_moves_between_threads() {
        const THREADS: usize = 4;
        let lock = Arc::new(HotLock::new((0u64, false)));
        let start = Arc::new(Barrier::new(THREADS));
        let overlap = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lock, start, overlap, total) = (lock.clone(), start.clone(), overlap.clone(), total.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for round in 0..200u64 {
                        // Long runs (the bias settles) alternating with single takes.
                        let run = if (round + t as u64).is_multiple_of(3) { 200 } else { 1 };
                        for _ in 0..run {
                            let mut state = lock.lock();
                            if state.1 {
                                overlap.store(true, Ordering::Relaxed);
                            }
                            state.1 = true;
                            let value = state.0;
                            std::hint::spin_loop();
                            state.0 = value + 1;
                            state.1 = false;
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(!overlap.load(Ordering::Relaxed), "two threads were inside at once");
        assert_eq!(lock.lock().0, total.load(Ordering::Relaxed));
        if super::barrier_available() {
            assert!(lock.revocations() > 0, "the bias never moved: the test did not test it");
        }
    }

    /// A nested acquisition by the owner (eviction locks every shard) takes the inner
    /// lock and needs no revocation; a thread's slot goes back when it exits and the
    /// biases it held pass to the slot's next holder.
    #[test]
    fn nesting_and_thread_exit_keep_the_lock_usable() {
        let a = Arc::new(HotLock::new(0u32));
        let b = Arc::new(HotLock::new(0u32));
        let (a2, b2) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            for _ in 0..=BIAS_AFTER {
                *a2.lock() += 1;
                *b2.lock() += 1;
            }
            let biased = super::barrier_available();
            assert_eq!(a2.biased_to_me() && b2.biased_to_me(), biased);
            {
                let mut outer = a2.lock();
                let mut inner = b2.lock();
                *outer += 1;
                *inner += 1;
            }
            // The inner, slow acquisition gave the bias back on leaving.
            assert_eq!(b2.biased_to_me(), biased);
            assert_eq!(b2.revocations(), 0);
        })
        .join()
        .unwrap();
        // The owner has exited: another thread takes both.
        *a.lock() += 1;
        *b.lock() += 1;
        assert_eq!(*a.lock(), BIAS_AFTER + 3);
        assert_eq!(*b.lock(), BIAS_AFTER + 3);
    }
}
