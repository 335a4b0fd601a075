//! Each device's table of what it handed out, by address: C frees by pointer, and stream
//! operations address bytes by pointer, so a pointer must lead back to its buffer (or to
//! the shared memory it imported).

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuhal::{Addressable, AnyBuffer, AnyImport, DynBuffer, Region};
use parking_lot::Mutex;

/// The live buffers of one device, by start address, and its imports of shared memory.
#[derive(Default)]
pub struct Allocations {
    by_address: Mutex<BTreeMap<u64, Arc<AnyBuffer>>>,
    imports: Mutex<BTreeMap<u64, Arc<AnyImport>>>,
}

/// What a pointer given to a stream operation addresses.
pub enum Memory {
    /// A buffer the device handed out.
    Buffer(Arc<AnyBuffer>),
    /// Shared memory the device imported.
    Import(Arc<AnyImport>),
}

impl Addressable for Memory {
    fn addressed(&self) -> (&'static str, Region) {
        match self {
            Memory::Buffer(buffer) => buffer.addressed(),
            Memory::Import(import) => import.addressed(),
        }
    }
}

/// Where a pointer of a stream operation falls.
pub struct LocatedMemory {
    /// The memory the pointer falls into.
    pub memory: Memory,
    /// The pointer's offset from the memory's start.
    pub offset: u64,
}

/// The entry of `table` holding bytes `address .. address + len`, and the offset into it.
fn find<T: Clone>(table: &BTreeMap<u64, T>, len_of: impl Fn(&T) -> u64, address: u64, len: u64) -> Option<(T, u64)> {
    let (&start, entry) = table.range(..=address).next_back()?;
    let offset = address - start;
    let end = offset.checked_add(len)?;
    // The address itself must fall inside the entry (one past its end is the next one's).
    let size = len_of(entry);
    (offset < size && end <= size).then(|| (entry.clone(), offset))
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
        find(&self.by_address.lock(), |buffer| buffer.len(), address, len)
            .map(|(buffer, offset)| Located { buffer, offset })
    }

    /// The import or live buffer holding bytes `address .. address + len`. Imports come
    /// first: a device importing its own export (the mock can) sees both at one address,
    /// and the import is what the pointer `gpuhal_import_shared` returned names.
    pub fn locate_memory(&self, address: u64, len: u64) -> Option<LocatedMemory> {
        if let Some((import, offset)) = find(&self.imports.lock(), |import| import.len(), address, len) {
            return Some(LocatedMemory {
                memory: Memory::Import(import),
                offset,
            });
        }
        self.locate(address, len)
            .map(|Located { buffer, offset }| LocatedMemory {
                memory: Memory::Buffer(buffer),
                offset,
            })
    }

    /// Keeps `import` until it is released by address; returns that address, or gives
    /// the import back when one is held at that address already (the same handle imported
    /// twice).
    pub fn insert_import(&self, import: AnyImport) -> Result<u64, AnyImport> {
        let address = import.address();
        let mut imports = self.imports.lock();
        if imports.contains_key(&address) {
            return Err(import);
        }
        imports.insert(address, Arc::new(import));
        Ok(address)
    }

    /// Takes the import at `address` out of the table (dropping it releases the mapping).
    pub fn remove_import(&self, address: u64) -> Option<Arc<AnyImport>> {
        self.imports.lock().remove(&address)
    }

    /// Whether an import holds `address`.
    pub fn holds_import(&self, address: u64) -> bool {
        find(&self.imports.lock(), |import| import.len(), address, 0).is_some()
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
