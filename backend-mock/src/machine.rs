//! Several mock devices of one process opened together: the checker and lifetimes they
//! share (so a race between two devices' streams is found exactly as one between two
//! streams of one device), which of them may access which, and what they exported.
//!
//! Devices opened separately are separate machines: they can neither be peers nor
//! import each other's exports, and a handle of one is a foreign handle to the other.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use gpuhal_hal::{check_device, DeviceId, Error, Result};
use parking_lot::Mutex;

use crate::checker::Checker;
use crate::event::EventSlot;
use crate::lifetimes::Lifetimes;

/// Where an exported buffer lies in the lifetimes, as it was when exported: an import
/// stays valid only while that very hand-out is live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportRecord {
    pub(crate) exporter: DeviceId,
    /// The lifetimes shard and key (start address) of the exported hand-out.
    pub(crate) shard: usize,
    pub(crate) key: u64,
    /// The hand-out's serial: a later buffer at the same address is not the export.
    pub(crate) serial: u64,
    pub(crate) address: u64,
    pub(crate) len: u64,
}

/// What the devices of one machine share.
pub(crate) struct Machine {
    /// Process-wide identity, carried in handles so another machine refuses them.
    pub(crate) id: u64,
    pub(crate) checker: Arc<Mutex<Checker>>,
    pub(crate) lifetimes: Arc<Lifetimes>,
    /// Member devices and whether each can be a peer (its profile allows it).
    devices: Mutex<Vec<(DeviceId, bool)>>,
    /// (accessor, owner): the accessor's streams may use the owner's memory.
    peers: Mutex<HashSet<(DeviceId, DeviceId)>>,
    exports: Mutex<HashMap<u64, ExportRecord>>,
    shared_events: Mutex<HashMap<u64, Weak<EventSlot>>>,
    next_token: AtomicU64,
}

impl Machine {
    pub(crate) fn new(check_races: bool) -> Machine {
        static NEXT_MACHINE: AtomicU64 = AtomicU64::new(1);
        let lifetimes = Arc::new(Lifetimes::new());
        Machine {
            id: NEXT_MACHINE.fetch_add(1, Ordering::Relaxed),
            checker: Arc::new(Mutex::new(Checker::new(check_races, lifetimes.clone()))),
            lifetimes,
            devices: Mutex::new(Vec::new()),
            peers: Mutex::new(HashSet::new()),
            exports: Mutex::new(HashMap::new()),
            shared_events: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        }
    }

    pub(crate) fn join(&self, device: DeviceId, can_be_peer: bool) {
        self.devices.lock().push((device, can_be_peer));
    }

    pub(crate) fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    fn member(&self, device: DeviceId) -> Option<bool> {
        self.devices
            .lock()
            .iter()
            .find(|(id, _)| *id == device)
            .map(|(_, peer)| *peer)
    }

    pub(crate) fn can_be_peers(&self, device: DeviceId, peer: DeviceId) -> bool {
        device != peer && self.member(device) == Some(true) && self.member(peer) == Some(true)
    }

    pub(crate) fn enable_peer_access(&self, device: DeviceId, peer: DeviceId) -> Result<()> {
        if self.member(peer).is_none() {
            return Err(Error::invalid(
                "enable_peer_access",
                format!(
                    "device {peer} was not opened together with device {device} (MockDevice::open_machine): \
                     devices of different mock machines cannot be peers"
                ),
            ));
        }
        if device == peer {
            return Err(Error::invalid(
                "enable_peer_access",
                format!("device {device} always has access to its own memory"),
            ));
        }
        if !self.can_be_peers(device, peer) {
            return Err(Error::PeerAccess {
                operation: "enable_peer_access",
                device: device.0,
                peer: peer.0,
                possible: false,
            });
        }
        self.peers.lock().insert((device, peer));
        Ok(())
    }

    /// Refuses `operation` by a stream of `device` on memory of `owner` unless `owner` is
    /// `device` or a peer `device` was given access to.
    pub(crate) fn check_access(&self, operation: &'static str, device: DeviceId, owner: DeviceId) -> Result<()> {
        if device == owner {
            return Ok(());
        }
        if self.member(owner).is_none() {
            return check_device(operation, "buffer", device, owner);
        }
        if self.peers.lock().contains(&(device, owner)) {
            return Ok(());
        }
        Err(Error::PeerAccess {
            operation,
            device: device.0,
            peer: owner.0,
            possible: self.can_be_peers(device, owner),
        })
    }

    /// Refuses a handle (`what`) of `owner` used by `device` unless both are of this machine.
    pub(crate) fn check_member(
        &self,
        operation: &'static str,
        what: &'static str,
        device: DeviceId,
        owner: DeviceId,
    ) -> Result<()> {
        if device == owner || self.member(owner).is_some() {
            Ok(())
        } else {
            check_device(operation, what, device, owner)
        }
    }

    pub(crate) fn exported(&self, record: ExportRecord) -> u64 {
        let token = self.token();
        self.exports.lock().insert(token, record);
        token
    }

    pub(crate) fn export(&self, token: u64) -> Option<ExportRecord> {
        self.exports.lock().get(&token).copied()
    }

    pub(crate) fn shared_event_made(&self, slot: &Arc<EventSlot>) -> u64 {
        let token = self.token();
        let mut events = self.shared_events.lock();
        events.retain(|_, slot| slot.strong_count() > 0);
        events.insert(token, Arc::downgrade(slot));
        token
    }

    pub(crate) fn shared_event(&self, token: u64) -> Option<Arc<EventSlot>> {
        self.shared_events.lock().get(&token).and_then(Weak::upgrade)
    }
}

/// Bytes `token` is stored as in a handle's opaque data, and back.
pub(crate) fn token_data(token: u64, tag: u64) -> [u8; gpuhal_hal::sharing::EXPORT_DATA_LEN] {
    let mut data = [0u8; gpuhal_hal::sharing::EXPORT_DATA_LEN];
    data[..8].copy_from_slice(&token.to_le_bytes());
    data[8..16].copy_from_slice(&tag.to_le_bytes());
    data
}

/// The token in `data`, if it carries `tag` (the machine that made it).
pub(crate) fn data_token(data: &[u8; gpuhal_hal::sharing::EXPORT_DATA_LEN], tag: u64) -> Option<u64> {
    let mut token = [0u8; 8];
    let mut found = [0u8; 8];
    token.copy_from_slice(&data[..8]);
    found.copy_from_slice(&data[8..16]);
    (u64::from_le_bytes(found) == tag).then(|| u64::from_le_bytes(token))
}
