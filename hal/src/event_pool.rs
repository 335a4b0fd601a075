//! A pool of native events, so that steady-state recording creates none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hot_lock::HotLock;

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

/// Idle events of one flavour, and how many were handed out (counted under the same
/// lock, so acquiring touches no other shared counter).
struct IdleList<E> {
    events: Vec<E>,
    acquired: u64,
}

struct Inner<F: NativeEvents> {
    factory: F,
    /// Idle events: [without timing, with timing].
    idle: [HotLock<IdleList<F::Event>>; 2],
    created: AtomicU64,
    destroyed: AtomicU64,
}

/// A per-device pool of native events. Cheap to clone (shared handle).
pub struct EventPool<F: NativeEvents> {
    inner: Arc<Inner<F>>,
}

impl<F: NativeEvents> Clone for EventPool<F> {
    fn clone(&self) -> Self {
        EventPool {
            inner: self.inner.clone(),
        }
    }
}

impl<F: NativeEvents> EventPool<F> {
    /// A pool creating events through `factory`.
    pub fn new(factory: F) -> Self {
        EventPool {
            inner: Arc::new(Inner {
                factory,
                idle: [(); 2].map(|_| {
                    HotLock::new(IdleList {
                        events: Vec::new(),
                        acquired: 0,
                    })
                }),
                created: AtomicU64::new(0),
                destroyed: AtomicU64::new(0),
            }),
        }
    }

    /// The factory behind the pool.
    pub fn factory(&self) -> &F {
        &self.inner.factory
    }

    /// An idle event, or a new native one if none is idle. It returns to the pool on drop.
    pub fn acquire(&self, timing: bool) -> Result<PooledEvent<F>> {
        let inner = &self.inner;
        let reused = {
            let mut idle = inner.idle[timing as usize].lock();
            idle.acquired += 1;
            idle.events.pop()
        };
        let event = match reused {
            Some(event) => event,
            None => {
                let event = inner.factory.create(timing)?;
                inner.created.fetch_add(1, Ordering::Relaxed);
                event
            }
        };
        Ok(PooledEvent {
            pool: inner.clone(),
            event: Some(event),
            timing,
        })
    }

    /// Destroys idle events; returns how many.
    pub fn trim(&self) -> u64 {
        let mut count = 0;
        for idle in &self.inner.idle {
            for event in idle.lock().events.drain(..) {
                self.inner.factory.destroy(event);
                count += 1;
            }
        }
        self.inner.destroyed.fetch_add(count, Ordering::Relaxed);
        count
    }

    /// Counters now.
    pub fn stats(&self) -> EventStats {
        let inner = &self.inner;
        let created = inner.created.load(Ordering::Relaxed);
        EventStats {
            native_live: created - inner.destroyed.load(Ordering::Relaxed),
            native_created: created,
            acquired: inner.idle.iter().map(|i| i.lock().acquired).sum(),
            idle: inner.idle.iter().map(|i| i.lock().events.len() as u64).sum(),
        }
    }
}

impl<F: NativeEvents> Drop for Inner<F> {
    fn drop(&mut self) {
        for idle in &mut self.idle {
            for event in idle.get_mut().events.drain(..) {
                self.factory.destroy(event);
            }
        }
    }
}

/// A native event on loan from an [`EventPool`]; derefs to the native handle.
pub struct PooledEvent<F: NativeEvents> {
    pool: Arc<Inner<F>>,
    event: Option<F::Event>,
    timing: bool,
}

impl<F: NativeEvents> PooledEvent<F> {
    /// Whether the event records timing.
    pub fn has_timing(&self) -> bool {
        self.timing
    }

    /// The native event.
    pub fn native(&self) -> &F::Event {
        // Invariant: `event` is Some until drop.
        match &self.event {
            Some(event) => event,
            None => unreachable!("pooled event used after drop"),
        }
    }

    /// The factory that created the event.
    pub fn factory(&self) -> &F {
        &self.pool.factory
    }
}

impl<F: NativeEvents> std::ops::Deref for PooledEvent<F> {
    type Target = F::Event;
    fn deref(&self) -> &F::Event {
        self.native()
    }
}

impl<F: NativeEvents> Drop for PooledEvent<F> {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.pool.idle[self.timing as usize].lock().events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events are plain numbers; the factory counts what it made and destroyed.
    #[derive(Default)]
    struct Numbers {
        made: AtomicU64,
        destroyed: AtomicU64,
    }

    impl NativeEvents for Arc<Numbers> {
        type Event = u64;
        fn create(&self, _timing: bool) -> Result<u64> {
            Ok(self.made.fetch_add(1, Ordering::Relaxed))
        }
        fn destroy(&self, _event: u64) {
            self.destroyed.fetch_add(1, Ordering::Relaxed);
        }
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
}
