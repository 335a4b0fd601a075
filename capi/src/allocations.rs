//! Each device's table of what it handed out, by address: C frees by pointer, and stream
//! operations address bytes by pointer, so a pointer must lead back to its buffer.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuhal::{AnyBuffer, DynBuffer};
use parking_lot::Mutex;

/// The live buffers of one device, by start address.
#[derive(Default)]
pub struct Allocations {
    by_address: Mutex<BTreeMap<u64, Arc<AnyBuffer>>>,
}

/// Where a pointer falls: the buffer holding it and the offset into it.
pub struct Located {
    /// The buffer the pointer falls into.
    pub buffer: Arc<AnyBuffer>,
    /// The pointer's offset from the buffer's start.
    pub offset: u64,
}

impl Allocations {
    /// Keeps `buffer` until it is freed by address; returns that address (0, and nothing
    /// kept, for an empty buffer).
    pub fn insert(&self, buffer: AnyBuffer) -> u64 {
        let address = buffer.address();
        if buffer.is_empty() {
            return 0;
        }
        self.by_address.lock().insert(address, Arc::new(buffer));
        address
    }

    /// Takes the buffer that starts at `address` out of the table. Dropping it returns it
    /// to its stream's cache, stream-ordered.
    pub fn remove(&self, address: u64) -> Option<Arc<AnyBuffer>> {
        self.by_address.lock().remove(&address)
    }

    /// The live buffer holding bytes `address .. address + len`, if one does.
    pub fn locate(&self, address: u64, len: u64) -> Option<Located> {
        let by_address = self.by_address.lock();
        let (&start, buffer) = by_address.range(..=address).next_back()?;
        let offset = address - start;
        let end = offset.checked_add(len)?;
        (end <= buffer.len() && (offset < buffer.len() || len == 0)).then(|| Located {
            buffer: buffer.clone(),
            offset,
        })
    }

    /// Whether some live buffer holds `address`.
    pub fn holds(&self, address: u64) -> bool {
        self.locate(address, 0).is_some()
    }

    /// Live buffers in the table.
    pub fn len(&self) -> usize {
        self.by_address.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
