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
        // The address itself must fall inside the buffer (one past its end is the next one's).
        (offset < buffer.len() && end <= buffer.len()).then(|| Located {
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

#[cfg(test)]
mod tests {
    use gpuhal::{AnyDevice, DynDevice, MemoryKind};

    use super::*;

    #[test]
    fn pointers_lead_back_to_their_buffer_and_not_past_its_end() {
        let device = AnyDevice::open("mock", 0).unwrap();
        let stream = device.create_stream().unwrap();
        let table = Allocations::default();
        let a = table.insert(device.allocate(4096, MemoryKind::Device, &stream).unwrap());
        let empty = table.insert(device.allocate(0, MemoryKind::Device, &stream).unwrap());
        assert_eq!(empty, 0, "an empty buffer has no address to free");
        assert_eq!(table.len(), 1);
        let inside = table.locate(a + 100, 50).unwrap();
        assert_eq!((inside.buffer.address(), inside.offset), (a, 100));
        assert!(table.locate(a + 4000, 200).is_none(), "a range running past the end");
        assert!(!table.holds(a + 4096), "one past the end is not this buffer's");
        assert!(!table.holds(a.wrapping_sub(1)));
        assert!(table.locate(a + 1, u64::MAX).is_none(), "an overflowing range");
        assert!(table.remove(a + 1).is_none(), "free takes the start address");
        assert!(table.remove(a).is_some());
        assert!(table.remove(a).is_none(), "a second free finds nothing");
        assert!(table.is_empty());
    }
}
