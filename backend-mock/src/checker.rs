//! The misuse checker: which memory is live, who freed what, and the happens-before
//! order of every stream's accesses (vector clocks computed at enqueue time).
//!
//! Every region an operation names is resolved here before anything is enqueued, so an
//! address that is not inside live memory of this device never reaches a stream worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gpuhal_hal::pool::NativeBlock;
use gpuhal_hal::{Error, Region, Result, StreamId};

use crate::clock::VectorClock;
use crate::fence::FenceState;
use crate::raw::{ImportedHost, NativeAllocation, Target};

/// `Region::native` of host imports carries this bit (native allocation ids never do).
pub(crate) const IMPORT_TAG: u64 = 1 << 63;

/// The host's index in vector clocks.
pub(crate) const HOST: usize = 0;

/// Records of freed memory kept for error messages before old ones are forgotten.
const REMEMBERED_FREES: usize = 1 << 16;

/// Whether an operation reads or writes a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Read,
    Write,
}

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

/// One stream operation's access to a buffer.
#[derive(Debug, Clone, Copy)]
struct Access {
    agent: usize,
    tick: u64,
    /// False when the access followed a fence wait whose signal was not enqueued yet:
    /// its order against other streams is unknown.
    ordered: bool,
    stream: StreamId,
    operation: &'static str,
    kind: Use,
}

impl Access {
    fn describe(&self) -> String {
        let what = match self.kind {
            Use::Read => "reads",
            Use::Write => "writes",
        };
        format!("{} {what} it ({})", self.stream, self.operation)
    }
}

#[derive(Debug, Default)]
struct History {
    last_write: Option<Access>,
    reads: Vec<Access>,
}

#[derive(Debug)]
enum Life {
    Live,
    /// Returned to the pool (or the native memory freed): how, for the error message.
    Returned(String),
}

/// A block handed out as a buffer, live or returned.
#[derive(Debug)]
struct HandOut {
    len: u64,
    serial: u64,
    /// None once the native memory is freed.
    allocation: Option<Arc<NativeAllocation>>,
    life: Life,
    history: History,
}

/// An operation's view of one resolved range.
pub(crate) struct Resolved {
    /// None for an empty range.
    pub(crate) target: Option<Target>,
    /// The live buffer the range lies in (its address), for the race checker.
    handout: Option<u64>,
}

/// One access an operation is about to make, for [`Checker::check_accesses`].
pub(crate) struct Touch<'a> {
    pub(crate) resolved: &'a Resolved,
    pub(crate) kind: Use,
}

/// The checker of one device.
pub(crate) struct Checker {
    check_races: bool,
    natives: HashMap<u64, Arc<NativeAllocation>>,
    freed_natives: HashMap<u64, u64>,
    handouts: BTreeMap<u64, HandOut>,
    imports: HashMap<u64, Arc<ImportedHost>>,
    clocks: Vec<VectorClock>,
    next_serial: u64,
}

impl Checker {
    pub(crate) fn new(check_races: bool) -> Checker {
        Checker {
            check_races,
            natives: HashMap::new(),
            freed_natives: HashMap::new(),
            handouts: BTreeMap::new(),
            imports: HashMap::new(),
            clocks: vec![VectorClock::default()],
            next_serial: 1,
        }
    }

    // ----- native memory -----

    pub(crate) fn native_allocated(&mut self, allocation: Arc<NativeAllocation>) {
        let start = allocation.address();
        // Records of earlier memory at these addresses no longer mean anything.
        self.forget_range(start, start + allocation.size);
        self.freed_natives.remove(&allocation.id);
        self.natives.insert(allocation.id, allocation);
    }

    /// Takes a native allocation out of the registry for freeing.
    pub(crate) fn native_freed(&mut self, block: &NativeBlock) -> Result<Arc<NativeAllocation>> {
        let Some(allocation) = self.natives.remove(&block.native) else {
            return Err(match self.freed_natives.get(&block.native) {
                Some(_) => Error::DoubleFree {
                    address: block.address,
                    allocation: block.native,
                    first: "an earlier native free of the same block".into(),
                },
                None => Error::invalid(
                    "free",
                    format!(
                        "block {:#x} (native #{}) was not allocated by this device",
                        block.address, block.native
                    ),
                ),
            });
        };
        if self.freed_natives.len() >= REMEMBERED_FREES {
            self.freed_natives.clear();
        }
        self.freed_natives.insert(allocation.id, allocation.address());
        let start = allocation.address();
        let end = start + allocation.size;
        let keys: Vec<u64> = self.handouts.range(start..end).map(|(k, _)| *k).collect();
        for key in keys {
            if let Some(handout) = self.handouts.get_mut(&key) {
                handout.allocation = None;
                if matches!(handout.life, Life::Live) {
                    handout.life = Life::Returned("its native memory was freed while it was live".into());
                }
            }
        }
        if self.handouts.len() > REMEMBERED_FREES {
            self.handouts
                .retain(|_, h| matches!(h.life, Life::Live) || h.allocation.is_some());
        }
        Ok(allocation)
    }

    /// The native allocation with token `id`, if live.
    pub(crate) fn native(&self, id: u64) -> Option<&Arc<NativeAllocation>> {
        self.natives.get(&id)
    }

    fn forget_range(&mut self, start: u64, end: u64) {
        let mut keys: Vec<u64> = self.handouts.range(start..end).map(|(k, _)| *k).collect();
        if let Some((&key, handout)) = self.handouts.range(..start).next_back() {
            if key + handout.len > start {
                keys.push(key);
            }
        }
        for key in keys {
            self.handouts.remove(&key);
        }
    }

    // ----- buffer lifetimes -----

    pub(crate) fn handed_out(&mut self, block: &NativeBlock, len: u64) {
        self.forget_range(block.address, block.address + block.size.max(len));
        let serial = self.next_serial;
        self.next_serial += 1;
        let allocation = self.natives.get(&block.native).cloned();
        self.handouts.insert(
            block.address,
            HandOut {
                len,
                serial,
                allocation,
                life: Life::Live,
                history: History::default(),
            },
        );
    }

    pub(crate) fn returned(&mut self, block: &NativeBlock, stream: StreamId) {
        if let Some(handout) = self.handouts.get_mut(&block.address) {
            handout.history = History::default();
            handout.life = Life::Returned(if stream.0 == 0 {
                "the buffer's drop (returned to its graph pool)".into()
            } else {
                format!("the buffer's drop (returned to the cache of {stream})")
            });
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
            });
        }
        let address = region.address;
        let len = region.len;
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
        if mode == Mode::Replay {
            if let Some(resolved) = self.resolve_in_graph_segment(region) {
                return Ok(resolved);
            }
        }
        let found = self
            .handouts
            .range(..=address)
            .next_back()
            .filter(|(start, handout)| address < *start + handout.len.max(1));
        let Some((&start, handout)) = found else {
            let import = self
                .imports
                .values()
                .find(|i| address >= i.address() && address < i.address() + i.len)
                .cloned();
            return match import {
                Some(import) => Self::resolve_import(operation, import, address, len, kind),
                None => Err(Error::invalid(
                    operation,
                    format!("{address:#x} (+{len} bytes) is not inside any live buffer or host import of this device"),
                )),
            };
        };
        let offset = address - start;
        gpuhal_hal::check_range(operation, offset, len, handout.len)?;
        let freed = |handout: &HandOut, why: &str| Error::UseAfterFree {
            operation,
            address,
            allocation: handout.serial,
            freed_by: why.to_string(),
        };
        let allocation = match (&handout.life, &handout.allocation) {
            (Life::Live, Some(allocation)) => allocation.clone(),
            (Life::Returned(_), Some(allocation)) if mode == Mode::Replay && allocation.graph_segment => {
                allocation.clone()
            }
            (Life::Returned(why), _) => return Err(freed(handout, why)),
            (Life::Live, None) => return Err(freed(handout, "a native free of its memory")),
        };
        let live = matches!(handout.life, Life::Live);
        let target = Target::native(allocation.clone(), address - allocation.address(), len).ok_or_else(|| {
            Error::invalid(
                operation,
                format!("{address:#x} (+{len} bytes) runs past its native allocation"),
            )
        })?;
        Ok(Resolved {
            target: Some(target),
            handout: live.then_some(start),
        })
    }

    /// A replayed range inside a graph pool's segment: valid while the segment lives,
    /// whatever captures carved from it since. Race-checked when a live buffer holds it.
    fn resolve_in_graph_segment(&self, region: &Region) -> Option<Resolved> {
        let allocation = self.natives.get(&region.native).filter(|a| a.graph_segment)?;
        let offset = region.address.checked_sub(allocation.address())?;
        let target = Target::native(allocation.clone(), offset, region.len)?;
        let handout = self
            .handouts
            .range(..=region.address)
            .next_back()
            .filter(|(start, h)| matches!(h.life, Life::Live) && region.address + region.len <= *start + h.len)
            .map(|(start, _)| *start);
        Some(Resolved {
            target: Some(target),
            handout,
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
        let host = self.clocks[HOST].clone();
        let clock = self.clock_mut(agent);
        clock.join(&host);
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
        self.clock_mut(agent).join(seen);
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
        operation: &'static str,
        touches: &[Touch<'_>],
    ) -> Result<()> {
        if !self.check_races {
            return Ok(());
        }
        let mut clock = self.clock(agent);
        let ordered = clock.resolve();
        // With an unknown order on either side, only a certain conflict is reported.
        let happened_before =
            |prior: &Access| !ordered || !prior.ordered || prior.agent == agent || clock.get(prior.agent) >= prior.tick;
        for touch in touches {
            let Some(key) = touch.resolved.handout else { continue };
            let Some(handout) = self.handouts.get(&key) else {
                continue;
            };
            let history = &handout.history;
            let conflict = match touch.kind {
                Use::Read => history.last_write.filter(|w| !happened_before(w)),
                Use::Write => history
                    .last_write
                    .filter(|w| !happened_before(w))
                    .or_else(|| history.reads.iter().copied().find(|r| !happened_before(r))),
            };
            if let Some(prior) = conflict {
                let current = Access {
                    agent,
                    tick,
                    ordered,
                    stream,
                    operation,
                    kind: touch.kind,
                };
                return Err(Error::Race {
                    address: key,
                    allocation: handout.serial,
                    first: prior.describe(),
                    second: current.describe(),
                });
            }
        }
        for touch in touches {
            let Some(key) = touch.resolved.handout else { continue };
            let Some(handout) = self.handouts.get_mut(&key) else {
                continue;
            };
            let access = Access {
                agent,
                tick,
                ordered,
                stream,
                operation,
                kind: touch.kind,
            };
            let history = &mut handout.history;
            match touch.kind {
                Use::Write => {
                    history.last_write = Some(access);
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
}
