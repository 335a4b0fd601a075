//! Host import: making existing host memory (an mmap'd file) usable by the device by
//! the cheapest path the profile and the policy allow, and saying which.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gpuhal_hal::{
    check_device, AsRegion, Capabilities, Device, Error, HostImport, ImportPath, ImportPolicy, Location, MemoryKind,
    Region, Result, Stream,
};

use crate::checker::IMPORT_TAG;
use crate::device::MockDevice;
use crate::queue::Action;
use crate::raw::ImportedHost;
use crate::state::DeviceState;
use crate::stream::MockStream;

/// Ends a coherent or registered import: unregisters the range, after the device's last
/// enqueued use of it.
struct ImportUndo {
    state: Arc<DeviceState>,
    token: u64,
}

impl Drop for ImportUndo {
    fn drop(&mut self) {
        let import = self.state.checker.lock().import_removed(self.token);
        if let Some(import) = import {
            import.wait_idle();
        }
    }
}

/// Imports `host` for `device`: coherent, registered or copied, in that order of
/// preference, as far as the profile and `policy` allow.
pub(crate) fn import_host<'a>(
    device: &MockDevice,
    host: &'a [u8],
    policy: ImportPolicy,
    stream: &MockStream,
) -> Result<HostImport<'a>> {
    let state = device.state();
    check_device("import_host", "stream", state.id, stream.device())?;
    let capabilities = state.capabilities;
    let mut refusals = Vec::new();

    if !policy.allow_coherent {
        refusals.push("coherent: not allowed by the import policy".to_string());
    } else if !capabilities.contains(Capabilities::PAGEABLE_ACCESS) {
        refusals.push(format!(
            "coherent: the {} device cannot read pageable host memory (no PAGEABLE_ACCESS)",
            state.profile
        ));
    } else {
        let prefetched = policy.prefetch_coherent.then_some(Location::Device);
        let import = zero_copy(state, host, ImportPath::Coherent, prefetched);
        if prefetched.is_some() {
            stream.queue().push(Action::Nothing)?;
        }
        state.import_stats.lock().coherent += 1;
        tracing::info!(len = host.len(), path = "coherent", "host import");
        return Ok(import);
    }

    if !policy.allow_registered {
        refusals.push("registered: not allowed by the import policy".to_string());
    } else if !capabilities.contains(Capabilities::HOST_REGISTER) {
        refusals.push(format!(
            "registered: the {} device cannot page-lock host memory (no HOST_REGISTER; registering returns \
             MOCK_ERROR_NOT_SUPPORTED)",
            state.profile
        ));
    } else {
        let import = zero_copy(state, host, ImportPath::Registered, None);
        state.import_stats.lock().registered += 1;
        tracing::info!(len = host.len(), path = "registered", refused = ?refusals, "host import");
        return Ok(import);
    }

    if !policy.allow_copy {
        refusals.push(format!(
            "copied: not allowed by the import policy (allow_copy is false; a copy would duplicate {} bytes on \
             the device)",
            host.len()
        ));
        state.import_stats.lock().refused += 1;
        tracing::warn!(len = host.len(), refused = ?refusals, "host import refused");
        return Err(Error::ImportRefused {
            len: host.len() as u64,
            reason: refusals.join("; "),
        });
    }
    tracing::warn!(len = host.len(), path = "copied", refused = ?refusals, "host import copies to the device");
    let buffer = device.allocate(host.len() as u64, MemoryKind::Device, stream)?;
    stream.write(&buffer, 0, host)?;
    let region = buffer.region();
    {
        let mut stats = state.import_stats.lock();
        stats.copied += 1;
        stats.copied_bytes += host.len() as u64;
    }
    Ok(HostImport::new(region, ImportPath::Copied, Box::new(buffer)))
}

/// A coherent or registered import: the device reads `host` where it is.
fn zero_copy<'a>(
    state: &Arc<DeviceState>,
    host: &'a [u8],
    path: ImportPath,
    prefetched: Option<Location>,
) -> HostImport<'a> {
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = IMPORT_TAG | NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let import = Arc::new(ImportedHost::new(token, host, path, prefetched));
    let region = Region {
        device: state.id,
        address: if host.is_empty() { 0 } else { import.address() },
        len: host.len() as u64,
        native: token,
        native_offset: 0,
        kind: MemoryKind::HostPinned,
    };
    state.checker.lock().import_added(import);
    let undo = ImportUndo {
        state: state.clone(),
        token,
    };
    HostImport::new(region, path, Box::new(undo))
}
