//! The misuse checker: which memory is live, who freed what, and the happens-before
//! order of every stream's accesses (vector clocks computed at enqueue time).
//!
//! Every region an operation names is resolved here before anything is enqueued, so an
//! address that is not inside live memory of this device never reaches a stream worker.
//! Lifetimes (native allocations and hand-outs) live in [`Lifetimes`], sharded, so the
//! pool's hand-outs and returns do not take this checker's device-wide lock.
//!
//! Races are found between accesses to the same memory, whatever buffers they went
//! through: a buffer handed out again inherits the accesses earlier buffers of its bytes
//! made (see [`Lifetimes::handed_out`]). A buffer dropped while another stream still
//! uses it is reported when its memory is next written (or, after a write, read) with
//! nothing ordering that access after the other stream's, not at the drop: the drop
//! itself is legal when the reuse is ordered some other way (an event the reusing
//! stream waits on after the drop), which a report at the drop would refuse, and a
//! drop cannot return an error. The pool's markers of `record_use` carry the using
//! stream's clock, so memory it held back and hands out again is ordered.

use std::collections::HashMap;
use std::sync::Arc;

use gpuhal_hal::{Error, Region, Result, StreamId};

use crate::clock::VectorClock;
use crate::fence::FenceState;
pub(crate) use crate::lifetimes::Use;
use crate::lifetimes::{describe, Access, Ending, HandOut, Life, Lifetimes, Shard};
use crate::machine::ExportRecord;
use crate::raw::{ImportedHost, Target};

/// `Region::native` of host imports carries this bit (native allocation ids never do).
pub(crate) const IMPORT_TAG: u64 = 1 << 63;

/// `Region::native` of imported shared memory carries this bit.
pub(crate) const SHARED_TAG: u64 = 1 << 62;

/// The host's index in vector clocks.
pub(crate) const HOST: usize = 0;

/// How an operation reaches the memory it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Enqueued now.
    Eager,
    /// Recorded into a graph: validated, not executed.
    Capture,
    /// A graph replay: ranges a capture carved from its graph pool stay valid after
    /// their buffers were returned, since the graph still uses them.
    Replay,
}

/// An operation's view of one resolved range.
pub(crate) struct Resolved {
    /// None for an empty range.
    pub(crate) target: Option<Target>,
    /// The buffer the range lies in (its shard and address), for the race checker.
    handout: Option<(usize, u64)>,
    /// The bytes the range covers (device addresses, end exclusive).
    bytes: (u64, u64),
}

impl Resolved {
    /// The access an operation of kind `kind` makes through this range.
    pub(crate) fn touch(&self, kind: Use, operation: &'static str) -> Touch {
        Touch {
            handout: self.handout,
            bytes: self.bytes,
            kind,
            operation,
        }
    }
}

/// One access an operation is about to make, for [`Checker::check_accesses`].
pub(crate) struct Touch {
    handout: Option<(usize, u64)>,
    bytes: (u64, u64),
    kind: Use,
    operation: &'static str,
}

/// The checker of one device.
pub(crate) struct Checker {
    check_races: bool,
    lifetimes: Arc<Lifetimes>,
    imports: HashMap<u64, Arc<ImportedHost>>,
    /// Live imports of shared memory, by token: the exported hand-out each names.
    shared: HashMap<u64, ExportRecord>,
    clocks: Vec<VectorClock>,
}

impl Checker {
    pub(crate) fn new(check_races: bool, lifetimes: Arc<Lifetimes>) -> Checker {
        Checker {
            check_races,
            lifetimes,
            imports: HashMap::new(),
            shared: HashMap::new(),
            clocks: vec![VectorClock::default()],
        }
    }

    // ----- host imports -----

    pub(crate) fn import_added(&mut self, import: Arc<ImportedHost>) {
        self.imports.insert(import.token, import);
    }

    pub(crate) fn import(&self, token: u64) -> Option<&Arc<ImportedHost>> {
        self.imports.get(&token)
    }

    pub(crate) fn import_removed(&mut self, token: u64) -> Option<Arc<ImportedHost>> {
        self.imports.remove(&token)
    }

    // ----- imports of shared memory -----

    pub(crate) fn shared_import_added(&mut self, token: u64, record: ExportRecord) {
        self.shared.insert(token, record);
    }

    pub(crate) fn shared_import_removed(&mut self, token: u64) {
        self.shared.remove(&token);
    }

    /// Resolves a range of an import of shared memory to the exported buffer it names,
    /// which must still be the live hand-out that was exported: the exporter keeps it
    /// alive, not the import.
    fn resolve_shared(&self, operation: &'static str, region: &Region, mode: Mode) -> Result<Resolved> {
        let Some(record) = self.shared.get(&region.native).copied() else {
            return Err(Error::UseAfterFree {
                operation,
                address: region.address,
                allocation: region.native & !SHARED_TAG,
                freed_by: "the drop of its SharedImport".into(),
            });
        };
        let shard = self.lifetimes.lock(record.shard);
        let exported = shard
            .handouts
            .get(&record.key)
            .filter(|h| h.serial == record.serial && matches!(h.life, Life::Live));
        let Some(handout) = exported else {
            return Err(Error::UseAfterFree {
                operation,
                address: region.address,
                allocation: record.serial,
                freed_by: format!(
                    "device {}, which exported it and released its buffer while this import on device {} was \
                     live (the exporter must keep the buffer until every importer has dropped its import)",
                    record.exporter, region.device
                ),
            });
        };
        let range = Region {
            device: record.exporter,
            native: handout.native,
            ..*region
        };
        Self::resolve_in(operation, record.shard, record.key, handout, &range, mode)
    }

    // ----- resolving ranges -----

    /// Resolves the range `region` names (already narrowed to what the operation
    /// touches) to memory an operation can use.
    pub(crate) fn resolve(
        &mut self,
        operation: &'static str,
        region: &Region,
        kind: Use,
        mode: Mode,
    ) -> Result<Resolved> {
        if region.len == 0 {
            return Ok(Resolved {
                target: None,
                handout: None,
                bytes: (region.address, region.address),
            });
        }
        let address = region.address;
        let len = region.len;
        if region.native & SHARED_TAG != 0 && region.native & IMPORT_TAG == 0 {
            return self.resolve_shared(operation, region, mode);
        }
        if region.native & IMPORT_TAG != 0 {
            let Some(import) = self.imports.get(&region.native).cloned() else {
                return Err(Error::UseAfterFree {
                    operation,
                    address,
                    allocation: region.native & !IMPORT_TAG,
                    freed_by: "the drop of its HostImport".into(),
                });
            };
            return Self::resolve_import(operation, import, address, len, kind);
        }
        // The region's own native allocation first: its shard holds its hand-outs.
        let home = Lifetimes::shard_of(region.native);
        {
            let shard = self.lifetimes.lock(home);
            if mode == Mode::Replay {
                if let Some(resolved) = Self::resolve_in_graph_segment(&shard, home, region) {
                    return Ok(resolved);
                }
            }
            if let Some((start, handout)) = shard.containing(address).filter(|(_, h)| h.native == region.native) {
                return Self::resolve_in(operation, home, start, handout, region, mode);
            }
        }
        // A region whose token does not name the memory at its address (made by hand):
        // whatever hand-out holds the address, a live one first.
        let mut stale = None;
        for index in Lifetimes::indices().filter(|&i| i != home) {
            let shard = self.lifetimes.lock(index);
            if let Some((start, handout)) = shard.containing(address) {
                if matches!(handout.life, Life::Live) {
                    return Self::resolve_in(operation, index, start, handout, region, mode);
                }
                stale.get_or_insert(index);
            }
        }
        if let Some(index) = stale {
            let shard = self.lifetimes.lock(index);
            if let Some((start, handout)) = shard.containing(address) {
                return Self::resolve_in(operation, index, start, handout, region, mode);
            }
        }
        let import = self
            .imports
            .values()
            .find(|i| address >= i.address() && address < i.address() + i.len)
            .cloned();
        match import {
            Some(import) => Self::resolve_import(operation, import, address, len, kind),
            None => Err(Error::invalid(
                operation,
                format!("{address:#x} (+{len} bytes) is not inside any live buffer or host import of this device"),
            )),
        }
    }

    /// Resolves `region` inside `handout` (at `start`, in shard `index`).
    fn resolve_in(
        operation: &'static str,
        index: usize,
        start: u64,
        handout: &HandOut,
        region: &Region,
        mode: Mode,
    ) -> Result<Resolved> {
        let (address, len) = (region.address, region.len);
        let offset = address - start;
        gpuhal_hal::check_range(operation, offset, len, handout.len)?;
        let freed = |handout: &HandOut, why: String| Error::UseAfterFree {
            operation,
            address,
            allocation: handout.serial,
            freed_by: why,
        };
        let allocation = match (&handout.life, &handout.allocation) {
            (Life::Live, Some(allocation)) => allocation.clone(),
            (Life::Returned(_), Some(allocation)) if mode == Mode::Replay && allocation.graph_segment => {
                allocation.clone()
            }
            (Life::Returned(why), _) => return Err(freed(handout, why.describe())),
            (Life::Live, None) => return Err(freed(handout, "a native free of its memory".into())),
        };
        if allocation.device != region.device {
            // Devices of one machine share the lifetimes: a region made by hand that
            // names one device but points into another's memory is refused here.
            return Err(Error::ForeignHandle {
                operation,
                what: "memory",
                expected: region.device.0,
                found: allocation.device.0,
            });
        }
        if allocation.asleep.lock().is_some() {
            return Err(Error::invalid(
                operation,
                format!(
                    "{address:#x} (allocation #{}) is asleep: the device's memory was put to sleep \
                     and is not mapped until wake",
                    handout.serial
                ),
            ));
        }
        let live = matches!(handout.life, Life::Live);
        let target = Target::native(allocation.clone(), address - allocation.address(), len).ok_or_else(|| {
            Error::invalid(
                operation,
                format!("{address:#x} (+{len} bytes) runs past its native allocation"),
            )
        })?;
        Ok(Resolved {
            target: Some(target),
            handout: live.then_some((index, start)),
            bytes: (address, address + len),
        })
    }

    /// A replayed range inside a graph pool's segment: valid while the segment lives,
    /// whatever captures carved from it since. Race-checked through the record of the
    /// buffer that holds it, live or returned: a range reused by another capture is
    /// the same memory, and the next buffer handed out there inherits its accesses.
    fn resolve_in_graph_segment(shard: &Shard, index: usize, region: &Region) -> Option<Resolved> {
        let allocation = shard.native(region.native).filter(|a| a.graph_segment)?;
        let offset = region.address.checked_sub(allocation.address())?;
        let target = Target::native(allocation.clone(), offset, region.len)?;
        let end = region.address + region.len;
        let handout = shard
            .handouts
            .range(..=region.address)
            .next_back()
            .filter(|(start, h)| h.native == region.native && end <= *start + h.len)
            .map(|(start, _)| (index, *start));
        Some(Resolved {
            target: Some(target),
            handout,
            bytes: (region.address, end),
        })
    }

    fn resolve_import(
        operation: &'static str,
        import: Arc<ImportedHost>,
        address: u64,
        len: u64,
        kind: Use,
    ) -> Result<Resolved> {
        if kind == Use::Write {
            return Err(Error::invalid(
                operation,
                format!(
                    "{address:#x} is imported host memory ({:?} import), which the device only reads",
                    import.path
                ),
            ));
        }
        let offset = address.checked_sub(import.address()).unwrap_or(u64::MAX);
        gpuhal_hal::check_range(operation, offset, len, import.len)?;
        let target = Target::host(import, offset, len)
            .ok_or_else(|| Error::invalid(operation, "range outside its host import"))?;
        Ok(Resolved {
            target: Some(target),
            handout: None,
            bytes: (address, address + len),
        })
    }

    // ----- vector clocks -----

    /// A new agent (a stream) in the clocks; returns its index.
    pub(crate) fn add_agent(&mut self) -> usize {
        self.clocks.push(VectorClock::default());
        self.clocks.len() - 1
    }

    /// One more operation by `agent`: it has seen everything the host has. Returns the
    /// operation's tick.
    pub(crate) fn tick(&mut self, agent: usize) -> u64 {
        self.clock_mut(agent);
        if agent != HOST {
            let (head, tail) = self.clocks.split_at_mut(agent);
            tail[0].join(&head[HOST]);
        }
        let clock = &mut self.clocks[agent];
        clock.resolve();
        clock.tick(agent)
    }

    /// `agent`'s later work waits for a fence signal not enqueued yet.
    pub(crate) fn await_signal(&mut self, agent: usize, fence: &Arc<FenceState>, value: u64) {
        self.clock_mut(agent).await_signal(fence, value);
    }

    /// What `agent` has seen so far.
    pub(crate) fn clock(&self, agent: usize) -> VectorClock {
        self.clocks.get(agent).cloned().unwrap_or_default()
    }

    /// `agent` now has seen everything `seen` covers (an event wait, a fence wait, a
    /// synchronize when `agent` is the host).
    pub(crate) fn join(&mut self, agent: usize, seen: &VectorClock) {
        let clock = self.clock_mut(agent);
        clock.join(seen);
        // Waits `seen` inherited whose signal is known by now are joined at once, so
        // they do not pile up (the host's clock is never ticked, so only this resolves it).
        clock.resolve();
    }

    fn clock_mut(&mut self, agent: usize) -> &mut VectorClock {
        if self.clocks.len() <= agent {
            self.clocks.resize(agent + 1, VectorClock::default());
        }
        &mut self.clocks[agent]
    }

    /// Checks that the accesses `agent`'s operation `tick` makes are ordered after every
    /// conflicting earlier access, then records them. Nothing is recorded on error.
    pub(crate) fn check_accesses(
        &mut self,
        agent: usize,
        tick: u64,
        stream: StreamId,
        touches: &[Touch],
    ) -> Result<()> {
        if !self.check_races {
            return Ok(());
        }
        let clock = self.clock_mut(agent);
        let ordered = clock.resolve();
        let clock = &self.clocks[agent];
        // With an unknown order on either side, only a certain conflict is reported.
        let happened_before =
            |prior: &Access| !ordered || !prior.ordered || prior.agent == agent || clock.get(prior.agent) >= prior.tick;
        for touch in touches {
            let Some((index, key)) = touch.handout else { continue };
            let shard = self.lifetimes.lock(index);
            let Some(handout) = shard.handouts.get(&key) else {
                continue;
            };
            let history = &handout.history;
            let unordered = |accesses: &[Access]| accesses.iter().find(|a| !happened_before(a)).copied();
            let conflict = match touch.kind {
                Use::Read => unordered(&history.writes),
                Use::Write => unordered(&history.writes).or_else(|| unordered(&history.reads)),
            };
            if let Some(prior) = conflict {
                return Err(Self::race(key, handout, &prior, stream, touch));
            }
        }
        for touch in touches {
            let Some((index, key)) = touch.handout else { continue };
            let mut shard = self.lifetimes.lock(index);
            let Some(handout) = shard.handouts.get_mut(&key) else {
                continue;
            };
            let access = Access {
                agent,
                tick,
                ordered,
                stream,
                operation: touch.operation,
                kind: touch.kind,
                start: touch.bytes.0,
                end: touch.bytes.1,
                through: None,
            };
            let history = &mut handout.history;
            match touch.kind {
                Use::Write => {
                    history.writes.clear();
                    history.writes.push(access);
                    history.reads.clear();
                }
                Use::Read => {
                    history.reads.retain(|r| r.agent != agent);
                    history.reads.push(access);
                }
            }
        }
        Ok(())
    }

    /// The report of `touch` by `stream` conflicting with the earlier access `prior` to
    /// the buffer `handout` (at `address`). When `prior` went through an earlier buffer
    /// of the same memory, the report says how the memory passed from one to the other
    /// and what would have ordered them.
    fn race(address: u64, handout: &HandOut, prior: &Access, stream: StreamId, touch: &Touch) -> Error {
        let verb = |kind: Use| match kind {
            Use::Read => "read",
            Use::Write => "written",
        };
        let Some(earlier) = prior.through else {
            return Error::Race {
                address,
                allocation: handout.serial,
                first: prior.describe(),
                second: describe(stream, touch.kind, touch.operation),
            };
        };
        let (freed, undeclared, remedy) = match earlier.ending {
            Ending::Cache(owner) => (
                format!("freed on {owner} by drop"),
                ", never declared with `record_use`",
                format!(
                    "declare the use on {} with `record_use` before the drop, or make {stream} wait on an event \
                     recorded on {} after its {}",
                    prior.stream, prior.stream, prior.operation
                ),
            ),
            Ending::GraphPool => (
                "freed by drop into its graph pool".to_string(),
                "",
                format!(
                    "graph pool buffers take no `record_use`: make {stream} wait on an event recorded on {} \
                     after its {}",
                    prior.stream, prior.operation
                ),
            ),
            Ending::NativeFreed => (
                "its native memory freed".to_string(),
                "",
                format!("make {stream} wait on an event recorded on {}", prior.stream),
            ),
        };
        Error::Race {
            address,
            allocation: handout.serial,
            first: format!(
                "allocation #{} ({freed}, last {} on {} by {}{undeclared}) was handed out again on {} as allocation #{}",
                earlier.serial,
                verb(prior.kind),
                prior.stream,
                prior.operation,
                handout.stream,
                handout.serial
            ),
            second: format!("{} by {} on {stream} ({remedy})", verb(touch.kind), touch.operation),
        }
    }

    /// Fence waits whose signal is not known yet, over every clock (the host's and every
    /// stream's): what the checker keeps per wait, which must not grow with round trips.
    #[cfg(test)]
    pub(crate) fn pending_waits(&self) -> usize {
        self.clocks.iter().map(VectorClock::pending).sum()
    }
}
