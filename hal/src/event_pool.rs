//! A pool of native events, so that steady-state recording creates none.
//!
//! The hot path (acquire an event, drop it) takes the flavour's idle-list lock each way
//! and moves no reference count: atomic read-modify-writes are what it would cost, and an
//! `Arc` clone and drop per loan were a tenth to a fifth of the pool's time on the hosts
//! measured. The lock is a biased `HotLock`, which the thread that uses the pool takes with
//! no read-modify-write either once the lock has settled on it. The layout below is what
//! lets a loan skip the count:
//!
//! - Each native event is paired, for its whole life, with one counted reference to the
//!   pool's core (`Homed`). The pair moves whole between an idle list and a loan, so a
//!   loan neither clones nor drops an `Arc`, yet an event dropped on any thread, or after
//!   the pool, can always reach its factory.
//! - Putting the pair back means locking an idle list and moving the pair's reference
//!   into it, and a lock reached through the reference being moved would borrow it. So
//!   the idle lists (`Lists`) are not owned by the core: they live in `'static` storage
//!   the core only points to, and the drop copies that pointer out first. A pool's lists
//!   go to a process-wide spare list when its core is freed, and the next pool of the
//!   same backend reuses them; the storage is bounded by the most pools alive at once,
//!   and holds only locks and empty vectors while spare.
//! - Idle pairs refer to the core, which refers to the lists that hold them: a reference
//!   cycle. The pool handles ([`EventPool`] and its clones) share one `Owner`; when the
//!   last goes, it closes the lists and destroys the idle events, which breaks the cycle.
//!   An event still on loan then is destroyed when it is dropped.
//! - Every idle event is in the shared lists, none in a per-thread cache: stats and
//!   `trim` stay exact from any thread. What a per-thread cache would save (the lock's
//!   read-modify-write) the biased lock saves instead; another thread's `trim` or `stats`
//!   revokes the bias, which costs that call a process-wide barrier.
//!   The acquisition count lives under the flavour's list lock, taken anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hot_lock::HotLock;
use crate::spare;

use crate::error::Result;
use crate::stats::EventStats;

/// Creates and destroys native events; what a backend implements to get an [`EventPool`].
pub trait NativeEvents: Send + Sync + 'static {
    /// The native event handle.
    type Event: Send + Sync + 'static;
    /// Creates a native event, with timing enabled or not.
    fn create(&self, timing: bool) -> Result<Self::Event>;
    /// Destroys a native event.
    fn destroy(&self, event: Self::Event);
}

/// A native event with its reference to the pool's core; moved whole between an idle
/// list and a loan (see the module docs).
struct Homed<F: NativeEvents> {
    event: F::Event,
    home: Arc<Core<F>>,
}

/// Idle events of one flavour, and how many were handed out (counted under the same
/// lock, so acquiring touches no other shared counter).
struct IdleList<F: NativeEvents> {
    events: Vec<Homed<F>>,
    acquired: u64,
    /// False once the last pool handle is gone: a returning event is destroyed instead
    /// of kept, since nothing could hand it out again (and keeping it would leak the core
    /// through the event's own reference).
    open: bool,
}

/// The idle lists of a pool: [without timing, with timing]. In `'static` storage, reused
/// by later pools (see the module docs).
struct Lists<F: NativeEvents> {
    idle: [HotLock<IdleList<F>>; 2],
}

impl<F: NativeEvents> Lists<F> {
    /// Open, empty lists: spare ones of this backend if any, new ones otherwise.
    fn take() -> &'static Lists<F> {
        spare::take(
            || Lists {
                idle: [(); 2].map(|_| {
                    HotLock::new(IdleList {
                        events: Vec::new(),
                        acquired: 0,
                        open: true,
                    })
                }),
            },
            |lists| {
                for list in &lists.idle {
                    let mut list = list.lock();
                    list.acquired = 0;
                    list.open = true;
                }
            },
        )
    }
}

/// What the pool handles and the events on loan share.
struct Core<F: NativeEvents> {
    factory: F,
    /// This pool's lists until the core is freed; nothing else points to them then, as
    /// every pool handle and every event holds the core.
    lists: &'static Lists<F>,
    created: AtomicU64,
    destroyed: AtomicU64,
}

impl<F: NativeEvents> Core<F> {
    fn destroy(&self, event: F::Event) {
        self.factory.destroy(event);
        self.destroyed.fetch_add(1, Ordering::Release);
    }

    /// Takes the idle events out of both lists, closing them if `close`, and destroys them
    /// outside the locks (a backend's destroy may wait for its queue); returns how many.
    fn drain(&self, close: bool) -> u64 {
        let mut count = 0;
        for list in &self.lists.idle {
            let drained = {
                let mut list = list.lock();
                if close {
                    list.open = false;
                }
                std::mem::take(&mut list.events)
            };
            for homed in drained {
                // `homed.home` is a reference to `self`, whose caller holds another, so
                // letting it go here never frees the core being drained.
                self.destroy(homed.event);
                count += 1;
            }
        }
        count
    }
}

impl<F: NativeEvents> Drop for Core<F> {
    fn drop(&mut self) {
        // The lists are closed and empty: an idle event would hold this core. Their
        // vectors' memory went with the drain.
        spare::give(self.lists);
    }
}

/// Shared by all handles of one pool; closes the pool when the last handle goes.
struct Owner<F: NativeEvents> {
    core: Arc<Core<F>>,
}

impl<F: NativeEvents> Drop for Owner<F> {
    fn drop(&mut self) {
        self.core.drain(true);
    }
}

/// A per-device pool of native events. Cheap to clone (shared handle).
pub struct EventPool<F: NativeEvents> {
    /// The same lists as `owner.core.lists`, two pointer hops nearer for the hot path.
    lists: &'static Lists<F>,
    owner: Arc<Owner<F>>,
}

impl<F: NativeEvents> Clone for EventPool<F> {
    fn clone(&self) -> Self {
        EventPool {
            lists: self.lists,
            owner: self.owner.clone(),
        }
    }
}

impl<F: NativeEvents> EventPool<F> {
    /// A pool creating events through `factory`.
    pub fn new(factory: F) -> Self {
        let lists = Lists::take();
        let core = Arc::new(Core {
            factory,
            lists,
            created: AtomicU64::new(0),
            destroyed: AtomicU64::new(0),
        });
        EventPool {
            lists,
            owner: Arc::new(Owner { core }),
        }
    }

    /// The factory behind the pool.
    pub fn factory(&self) -> &F {
        &self.owner.core.factory
    }

    /// An idle event, or a new native one if none is idle. It returns to the pool on drop.
    #[inline]
    pub fn acquire(&self, timing: bool) -> Result<PooledEvent<F>> {
        let list = &self.lists.idle[usize::from(timing)];
        let reused = {
            let mut list = list.lock();
            let reused = list.events.pop();
            // Counted only once the loan is certain; a miss counts below, once created.
            list.acquired += u64::from(reused.is_some());
            reused
        };
        let homed = match reused {
            Some(homed) => homed,
            None => self.create(timing)?,
        };
        Ok(PooledEvent {
            homed: Some(homed),
            timing,
        })
    }

    /// The miss path of [`acquire`](Self::acquire), kept out of line so that the hit path
    /// inlines small.
    #[cold]
    #[inline(never)]
    fn create(&self, timing: bool) -> Result<Homed<F>> {
        let core = &self.owner.core;
        let event = core.factory.create(timing)?;
        let created = core.created.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(timing, created, "event pool grew: a new native event");
        // A second lock, on the miss path only, which created a native event anyway.
        self.lists.idle[usize::from(timing)].lock().acquired += 1;
        Ok(Homed {
            event,
            home: core.clone(),
        })
    }

    /// Destroys idle events; returns how many.
    pub fn trim(&self) -> u64 {
        self.owner.core.drain(false)
    }

    /// Counters now.
    pub fn stats(&self) -> EventStats {
        let core = &self.owner.core;
        // Destroyed first: every destroyed event was created before, so this order never
        // sees more destroyed than created while other threads create and destroy.
        let destroyed = core.destroyed.load(Ordering::Acquire);
        let created = core.created.load(Ordering::Acquire);
        let (mut acquired, mut idle) = (0, 0);
        for list in &self.lists.idle {
            let list = list.lock();
            acquired += list.acquired;
            idle += list.events.len() as u64;
        }
        EventStats {
            native_live: created.saturating_sub(destroyed),
            native_created: created,
            acquired,
            idle,
        }
    }
}

/// A native event on loan from an [`EventPool`]; derefs to the native handle.
pub struct PooledEvent<F: NativeEvents> {
    /// Some until drop, which moves it back to an idle list.
    homed: Option<Homed<F>>,
    timing: bool,
}

impl<F: NativeEvents> PooledEvent<F> {
    /// Whether the event records timing.
    pub fn has_timing(&self) -> bool {
        self.timing
    }

    fn homed(&self) -> &Homed<F> {
        // Invariant: `homed` is Some until drop.
        match &self.homed {
            Some(homed) => homed,
            None => unreachable!("pooled event used after drop"),
        }
    }

    /// The native event.
    pub fn native(&self) -> &F::Event {
        &self.homed().event
    }

    /// The factory that created the event.
    pub fn factory(&self) -> &F {
        &self.homed().home.factory
    }
}

impl<F: NativeEvents> std::ops::Deref for PooledEvent<F> {
    type Target = F::Event;
    fn deref(&self) -> &F::Event {
        self.native()
    }
}

impl<F: NativeEvents> Drop for PooledEvent<F> {
    #[inline]
    fn drop(&mut self) {
        let Some(homed) = self.homed.take() else {
            return;
        };
        // Copied out, so the lock does not borrow `homed`, which moves into the list.
        let lists: &'static Lists<F> = homed.home.lists;
        let mut list = lists.idle[usize::from(self.timing)].lock();
        if list.open {
            list.events.push(homed);
            return;
        }
        drop(list);
        // The pool is gone: destroy the event, then let its reference go (possibly the
        // last, which frees the core and the factory).
        let Homed { event, home } = homed;
        home.destroy(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;

    /// Events are plain numbers; the factory counts what it made and destroyed, and fails
    /// to create while `failing` is set.
    #[derive(Default)]
    struct Numbers {
        made: AtomicU64,
        destroyed: AtomicU64,
        failing: AtomicBool,
    }

    impl Numbers {
        fn made(&self) -> u64 {
            self.made.load(Ordering::Relaxed)
        }
        fn destroyed(&self) -> u64 {
            self.destroyed.load(Ordering::Relaxed)
        }
    }

    impl NativeEvents for Arc<Numbers> {
        type Event = u64;
        fn create(&self, _timing: bool) -> Result<u64> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(crate::Error::invalid("create", "the test factory is failing"));
            }
            Ok(self.made.fetch_add(1, Ordering::Relaxed))
        }
        fn destroy(&self, _event: u64) {
            self.destroyed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stats_tuple<F: NativeEvents>(pool: &EventPool<F>) -> (u64, u64, u64, u64) {
        let stats = pool.stats();
        (stats.native_live, stats.native_created, stats.acquired, stats.idle)
    }

    #[test]
    fn pools_and_events_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<EventPool<Arc<Numbers>>>();
        send_sync::<PooledEvent<Arc<Numbers>>>();
    }

    #[test]
    fn steady_state_reuses_events_and_keeps_flavours_apart() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        for _ in 0..100 {
            let plain = pool.acquire(false).unwrap();
            let timed = pool.acquire(true).unwrap();
            assert!(!plain.has_timing() && timed.has_timing());
            assert_ne!(*plain, *timed, "a timing event is never handed out as a plain one");
        }
        let stats = pool.stats();
        assert_eq!(stats.native_created, 2, "one native event per flavour, then reuse");
        assert_eq!((stats.acquired, stats.idle, stats.native_live), (200, 2, 2));
        assert_eq!(pool.trim(), 2);
        assert_eq!(numbers.destroyed.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats().native_live, 0);
    }

    #[test]
    fn a_returned_event_goes_back_to_its_own_flavour() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let timed = *pool.acquire(true).unwrap();
        let plain = pool.acquire(false).unwrap();
        assert_ne!(*plain, timed, "the idle timing event is not handed out as a plain one");
        drop(plain);
        assert_eq!(*pool.acquire(true).unwrap(), timed);
        assert_eq!(stats_tuple(&pool), (2, 2, 3, 2));
    }

    #[test]
    fn events_dropped_on_other_threads_return_to_the_pool() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let plain = pool.acquire(false).unwrap();
        let timed = pool.acquire(true).unwrap();
        let (plain_id, timed_id) = (*plain, *timed);
        // Dropped on a thread that never saw the pool, which then ends.
        std::thread::spawn(move || drop((plain, timed))).join().unwrap();
        assert_eq!(stats_tuple(&pool), (2, 2, 2, 2));
        // Acquired on another thread (from the events the first one returned), dropped here.
        let worker = pool.clone();
        let (plain, timed) =
            std::thread::spawn(move || (worker.acquire(false).unwrap(), worker.acquire(true).unwrap()))
                .join()
                .unwrap();
        assert_eq!((*plain, *timed), (plain_id, timed_id), "reused, not created");
        drop((plain, timed));
        assert_eq!(stats_tuple(&pool), (2, 2, 4, 2));
        assert_eq!(numbers.made(), 2);
    }

    #[test]
    fn concurrent_loans_keep_the_stats_exact() {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 2_000;
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let start = Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (pool, start) = (&pool, &start);
                scope.spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for round in 0..ROUNDS {
                        let timing = matches!((round + thread as u64) % 3, 0);
                        let event = pool.acquire(timing).unwrap();
                        assert_eq!(event.has_timing(), timing);
                        held.push(event);
                        if held.len() > 2 {
                            // Keep a few on loan, and drop some on a thread of their own.
                            let event = held.remove(0);
                            if matches!(round % 7, 0) {
                                std::thread::spawn(move || drop(event)).join().unwrap();
                            }
                        }
                    }
                });
            }
        });
        let (live, created, acquired, idle) = stats_tuple(&pool);
        assert_eq!(acquired, THREADS as u64 * ROUNDS);
        assert_eq!((live, idle), (created, created), "every event is back and idle");
        assert_eq!(created, numbers.made());
        assert!(
            created <= (THREADS * 3 * 2) as u64,
            "{created} events for {THREADS} threads holding 3"
        );
        assert_eq!(pool.trim(), created);
        assert_eq!(stats_tuple(&pool), (0, created, acquired, 0));
        assert_eq!(numbers.destroyed(), created);
    }

    #[test]
    fn a_failed_creation_is_not_counted() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let held = pool.acquire(false).unwrap();
        numbers.failing.store(true, Ordering::Relaxed);
        assert!(pool.acquire(false).is_err());
        assert_eq!(stats_tuple(&pool), (1, 1, 1, 0));
        drop(held);
        // An idle event is still handed out while the factory fails.
        drop(pool.acquire(false).unwrap());
        assert_eq!(stats_tuple(&pool), (1, 1, 2, 1));
    }

    #[test]
    fn trim_destroys_only_idle_events() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let held = pool.acquire(true).unwrap();
        drop(pool.acquire(false).unwrap());
        assert_eq!(pool.trim(), 1);
        assert_eq!(stats_tuple(&pool), (1, 2, 2, 0));
        drop(held);
        assert_eq!(
            stats_tuple(&pool),
            (1, 2, 2, 1),
            "a loan outlives a trim and comes back"
        );
        assert_eq!(pool.trim(), 1);
        assert_eq!(numbers.destroyed(), 2);
    }

    #[test]
    fn the_pool_may_go_before_its_events() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let here = pool.acquire(false).unwrap();
        let there = pool.acquire(true).unwrap();
        drop(pool.acquire(false).unwrap());
        drop(pool.clone());
        assert_eq!(numbers.destroyed(), 0, "a clone going is not the pool going");
        drop(pool);
        assert_eq!(numbers.destroyed(), 1, "the idle event goes with the pool");
        assert_eq!(here.factory().made(), 3, "a loan still reaches its factory");
        drop(here);
        std::thread::spawn(move || drop(there)).join().unwrap();
        assert_eq!(
            (numbers.made(), numbers.destroyed()),
            (3, 3),
            "late returns are destroyed"
        );
        assert_eq!(Arc::strong_count(&numbers), 1, "nothing keeps the factory alive");
    }

    /// The test factory under a type of its own, whose spare lists no other test takes.
    struct Solo(Arc<Numbers>);

    impl NativeEvents for Solo {
        type Event = u64;
        fn create(&self, timing: bool) -> Result<u64> {
            self.0.create(timing)
        }
        fn destroy(&self, event: u64) {
            self.0.destroy(event);
        }
    }

    #[test]
    fn freed_pools_lists_are_reused_afresh() {
        let numbers = Arc::new(Numbers::default());
        let address = |pool: &EventPool<Solo>| pool.lists as *const Lists<Solo>;
        let first = EventPool::new(Solo(numbers.clone()));
        let first_lists = address(&first);
        let held = first.acquire(true).unwrap();
        assert_eq!(stats_tuple(&first), (1, 1, 1, 0));
        drop(first);
        let second = EventPool::new(Solo(numbers.clone()));
        assert_ne!(
            address(&second),
            first_lists,
            "not reused while an event of the pool is out"
        );
        drop(held);
        drop(second);
        let pools = [(); 2].map(|_| EventPool::new(Solo(numbers.clone())));
        assert!(
            pools.iter().any(|pool| address(pool) == first_lists),
            "freed lists are reused"
        );
        for pool in &pools {
            assert_eq!(stats_tuple(pool), (0, 0, 0, 0), "reused lists start afresh");
            drop(pool.acquire(false).unwrap());
            assert_eq!(stats_tuple(pool), (1, 1, 1, 1));
        }
        drop(pools);
        assert_eq!((numbers.made(), numbers.destroyed()), (3, 3));
        assert_eq!(Arc::strong_count(&numbers), 1);
    }

    thread_local! {
        static HELD: RefCell<Option<PooledEvent<Arc<Numbers>>>> = const { RefCell::new(None) };
    }

    #[test]
    fn an_event_held_by_a_thread_local_returns_when_the_thread_ends() {
        let numbers = Arc::new(Numbers::default());
        let pool = EventPool::new(numbers.clone());
        let worker = pool.clone();
        std::thread::spawn(move || {
            drop(worker.acquire(true).unwrap());
            let event = worker.acquire(false).unwrap();
            HELD.with(|held| *held.borrow_mut() = Some(event));
        })
        .join()
        .unwrap();
        assert_eq!(stats_tuple(&pool), (2, 2, 2, 2));
    }

    /// The pool's own cost per acquire + release, over the no-op factory above; run with
    /// `cargo test -p gpuhal-hal --release --lib -- --ignored --nocapture pool_cost`.
    #[test]
    #[ignore = "a timing measurement, not a check"]
    fn pool_cost_per_acquire_and_release() {
        let pool = EventPool::new(Arc::new(Numbers::default()));
        drop(pool.acquire(false).unwrap());
        const CYCLES: u32 = 1_000_000;
        let mut samples: Vec<f64> = (0..31)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..CYCLES {
                    drop(std::hint::black_box(pool.acquire(std::hint::black_box(false)).unwrap()));
                }
                start.elapsed().as_nanos() as f64 / f64::from(CYCLES)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        println!(
            "event pool acquire + release: median {:.2} ns (min {:.2}, max {:.2})",
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1]
        );
        assert_eq!(pool.stats().native_created, 1);
    }
}
