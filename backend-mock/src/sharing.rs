//! Export and import of device memory and interprocess events between the devices of a
//! mock machine (the mock's memory is this process's, so an "other process" is another
//! device, or the same one, of the machine).
//!
//! An import resolves, on every use, to the exported hand-out itself: races between the
//! exporter's and the importer's streams are checked on the same history, and an import
//! used after the exporter released its buffer is a use after free.

use std::sync::Arc;

use gpuhal_hal::{
    check_device, AsRegion, Buffer, Capabilities, Error, MemoryKind, PoolHandle, Region, Result, SharedEvent,
    SharedImport, SharedMemory,
};
use parking_lot::Mutex;

use crate::checker::{Checker, SHARED_TAG};
use crate::event::{EventSlot, MockEvent};
use crate::lifetimes::{Life, Lifetimes};
use crate::machine::{data_token, token_data, ExportRecord};
use crate::state::DeviceState;
use crate::MockBackend;

fn needs_ipc(state: &DeviceState, operation: &'static str) -> Result<()> {
    if state.capabilities.contains(Capabilities::IPC) {
        Ok(())
    } else {
        Err(Error::Unsupported {
            operation,
            needed: Capabilities::IPC,
        })
    }
}

pub(crate) fn export(state: &Arc<DeviceState>, buffer: &Buffer<MockBackend>) -> Result<SharedMemory> {
    const OPERATION: &str = "export";
    needs_ipc(state, OPERATION)?;
    let region = buffer.region();
    check_device(OPERATION, "buffer", state.id, region.device)?;
    if region.len == 0 {
        return Err(Error::invalid(OPERATION, "a zero-size buffer has no memory to share"));
    }
    if region.kind != MemoryKind::Device {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "only Device memory comes from the exportable pool, not {:?} memory",
                region.kind
            ),
        ));
    }
    let index = Lifetimes::shard_of(region.native);
    let shard = state.lifetimes.lock(index);
    let (key, handout) = shard
        .containing(region.address)
        .filter(|(start, h)| *start == region.address && h.native == region.native && matches!(h.life, Life::Live))
        .ok_or_else(|| Error::invalid(OPERATION, format!("{:#x} is not a live buffer", region.address)))?;
    let exportable = handout.allocation.as_ref().is_some_and(|a| a.exportable);
    if !exportable {
        return Err(Error::invalid(
            OPERATION,
            format!(
                "device {} was not opened with sharing enabled (MockConfig::sharing), so its memory is not \
                 from an exportable pool",
                state.id
            ),
        ));
    }
    let record = ExportRecord {
        exporter: state.id,
        shard: index,
        key,
        serial: handout.serial,
        address: region.address,
        len: region.len,
    };
    drop(shard);
    let machine = &state.machine;
    let token = machine.exported(record);
    Ok(SharedMemory {
        backend: "mock",
        pool: PoolHandle::Token(machine.id),
        allocation: token_data(token, machine.id),
        offset: region.native_offset,
        len: region.len,
    })
}

/// Undoes an import of shared memory when its [`SharedImport`] drops.
struct Release {
    checker: Arc<Mutex<Checker>>,
    token: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.checker.lock().shared_import_removed(self.token);
    }
}

/// Refuses `operation` on a device without `IPC`, or for a handle another backend made.
fn takes_handle(state: &DeviceState, operation: &'static str, backend: &'static str) -> Result<()> {
    needs_ipc(state, operation)?;
    if backend != "mock" {
        return Err(Error::BackendMismatch {
            operation,
            expected: "mock",
            found: backend,
        });
    }
    Ok(())
}

pub(crate) fn import(state: &Arc<DeviceState>, handle: &SharedMemory) -> Result<SharedImport> {
    const OPERATION: &str = "import_shared";
    takes_handle(state, OPERATION, handle.backend)?;
    let machine = &state.machine;
    let foreign = || {
        Error::invalid(
            OPERATION,
            format!(
                "the handle was not exported by a device of device {}'s mock machine (MockDevice::open_machine)",
                state.id
            ),
        )
    };
    let PoolHandle::Token(pool) = handle.pool else {
        return Err(Error::invalid(
            OPERATION,
            "the mock's pools are named by tokens, not file descriptors",
        ));
    };
    if pool != machine.id {
        return Err(foreign());
    }
    let record = data_token(&handle.allocation, machine.id)
        .and_then(|token| machine.export(token))
        .ok_or_else(foreign)?;
    if handle.len != record.len {
        return Err(Error::invalid(
            OPERATION,
            format!("the handle says {} bytes, but {} were exported", handle.len, record.len),
        ));
    }
    // The memory stays on the exporter's device: another device needs access to it.
    machine.check_access(OPERATION, state.id, record.exporter)?;
    let live = state
        .lifetimes
        .lock(record.shard)
        .handouts
        .get(&record.key)
        .is_some_and(|h| h.serial == record.serial && matches!(h.life, Life::Live));
    if !live {
        return Err(Error::UseAfterFree {
            operation: OPERATION,
            address: record.address,
            allocation: record.serial,
            freed_by: format!(
                "device {}, which exported it and has released the buffer since",
                record.exporter
            ),
        });
    }
    let token = SHARED_TAG | machine.token();
    state.checker.lock().shared_import_added(token, record);
    let region = Region {
        device: state.id,
        address: record.address,
        len: record.len,
        native: token,
        native_offset: 0,
        kind: MemoryKind::Device,
    };
    let release = Release {
        checker: state.checker.clone(),
        token,
    };
    Ok(SharedImport::new(region, Box::new(release)))
}

pub(crate) fn shared_event(state: &Arc<DeviceState>) -> Result<(MockEvent, SharedEvent)> {
    needs_ipc(state, "shared_event")?;
    let slot = Arc::new(EventSlot::default());
    let token = state.machine.shared_event_made(&slot);
    let handle = SharedEvent {
        backend: "mock",
        data: token_data(token, state.machine.id),
    };
    Ok((MockEvent::shared(slot, state.clone()), handle))
}

pub(crate) fn import_event(state: &Arc<DeviceState>, handle: &SharedEvent) -> Result<MockEvent> {
    const OPERATION: &str = "import_event";
    takes_handle(state, OPERATION, handle.backend)?;
    let slot = data_token(&handle.data, state.machine.id)
        .and_then(|token| state.machine.shared_event(token))
        .ok_or_else(|| {
            Error::invalid(
                OPERATION,
                format!(
                    "the handle names no live interprocess event of device {}'s mock machine",
                    state.id
                ),
            )
        })?;
    Ok(MockEvent::shared(slot, state.clone()))
}
