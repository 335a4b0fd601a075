//! `'static` storage for hot locked state, recycled between the owners that use it: a
//! stream shard's free lists and counters, an event pool's idle lists.
//!
//! Both hand out items (a cached block, a pooled event) that carry the one counted
//! reference to their owner that the loan will hold, so a hit neither clones nor drops an
//! `Arc` (see [`Shard`](crate::pool) and [`event_pool`](crate::event_pool)). Giving an
//! item back then moves that reference into a list behind the owner's lock, and a lock
//! reached through the reference being moved would borrow it. So the lock and what it
//! guards do not live inside the owner: they live here, leaked once, and the owner only
//! points to them. When an owner is freed its state, emptied, goes to a process-wide spare
//! list, and the next owner of the same type reuses it; the storage is bounded by the most
//! owners alive at once, per type.

use std::any::Any;

use parking_lot::Mutex;

/// Emptied states of freed owners, of any type, for the next owners to reuse.
static SPARE: Mutex<Vec<&'static (dyn Any + Send + Sync)>> = Mutex::new(Vec::new());

/// A spare state of type `T` if one is free, passed through `reuse` first, else
/// `make()` leaked.
pub(crate) fn take<T: Any + Send + Sync>(make: impl FnOnce() -> T, reuse: impl FnOnce(&T)) -> &'static T {
    let spare = {
        let mut spares = SPARE.lock();
        spares
            .iter()
            .position(|state| state.downcast_ref::<T>().is_some())
            .map(|index| spares.swap_remove(index))
            .and_then(|state| state.downcast_ref::<T>())
    };
    match spare {
        Some(state) => {
            reuse(state);
            state
        }
        None => &Box::leak(Box::new(OwnLines(make()))).0,
    }
}

/// Gives a state cache lines of its own, starting on a line boundary. Hot paths write it
/// on every hand-out and return; placed wherever the heap put a shard's state, the suite's
/// pool-alone hit row ran about 12 ns per pair slower (measured on the 2-core VM; the
/// cause, line sharing with neighbouring heap objects or line splits, was not pinned
/// down).
#[repr(align(128))]
struct OwnLines<T>(T);

/// Hands back a state no owner points to any more; the caller has emptied it.
pub(crate) fn give<T: Any + Send + Sync>(state: &'static T) {
    SPARE.lock().push(state);
}
