//! `'static` storage for the locked state of stream shards, recycled between shards.
//!
//! A cached block carries the one counted reference to its shard that the buffer made
//! from it will hold, so a cache hit neither clones nor drops an `Arc` (see
//! [`Shard`](super::Shard)). Returning a buffer then moves that reference into a free
//! list behind the shard's lock, and a lock reached through the reference being moved
//! would borrow it. So the lock and what it guards do not live inside the shard: they
//! live here, leaked once, and the shard only points to them. When a shard is freed its
//! state, emptied, goes to a process-wide spare list, and the next shard of the same
//! backend reuses it; the storage is bounded by the most shards alive at once.

use std::any::Any;
use std::sync::{Mutex, PoisonError};

/// Emptied states of freed shards, of any backend, for the next shards to reuse.
static SPARE: Mutex<Vec<&'static (dyn Any + Send + Sync)>> = Mutex::new(Vec::new());

/// A spare state of type `T` if one is free, else `make()` leaked.
pub(crate) fn take<T: Any + Send + Sync>(make: impl FnOnce() -> T) -> &'static T {
    let spare = {
        // A panic elsewhere while holding the lock leaves the vector intact.
        let mut spares = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        spares
            .iter()
            .position(|state| state.downcast_ref::<T>().is_some())
            .map(|index| spares.swap_remove(index))
            .and_then(|state| state.downcast_ref::<T>())
    };
    spare.unwrap_or_else(|| &Box::leak(Box::new(OwnLines(make()))).0)
}

/// Gives a state cache lines of its own, starting on a line boundary. The hit path writes
/// it on every allocation and return; placed wherever the heap put it, the suite's
/// pool-alone hit row ran about 12 ns per pair slower (measured on the 2-core VM; the
/// cause, line sharing with neighbouring heap objects or line splits, was not pinned
/// down).
#[repr(align(128))]
struct OwnLines<T>(T);

/// Hands back a state no shard points to any more; the caller has emptied it.
pub(crate) fn give<T: Any + Send + Sync>(state: &'static T) {
    SPARE.lock().unwrap_or_else(PoisonError::into_inner).push(state);
}
