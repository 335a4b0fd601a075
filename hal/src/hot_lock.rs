//! The lock of hot, normally uncontended state: a stream's cache, an event pool's idle
//! list.
//!
//! Such state is touched by the one thread that drives a stream almost all the time, so
//! the lock is rarely contended. A spin lock releases with a plain store, saving an atomic
//! read-modify-write on every acquire/release pair (about a fifth of the allocator's hit
//! path); under contention it yields the thread rather than burning the core.

pub(crate) type HotLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;
