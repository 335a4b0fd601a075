//! Vector clocks: the happens-before relation between streams and the host, as the
//! race checker sees it at enqueue time.

use std::sync::Arc;

use crate::fence::FenceState;

/// One counter per agent (index 0 is the host, then one per stream), plus the fence
/// waits whose signal was not enqueued yet.
///
/// A stream may wait for a fence value that another stream signals only later in
/// enqueue order. What follows the wait is then ordered after a signal the checker has
/// not seen: until that signal is enqueued, the clock is *unresolved* and the accesses
/// made under it are neither reported nor reported against (the order is unknown, and
/// a false alarm would be worse than a missed one).
#[derive(Clone, Default)]
pub(crate) struct VectorClock {
    counters: Vec<u64>,
    awaited: Vec<(Arc<FenceState>, u64)>,
}

impl VectorClock {
    /// The agent's counter (0 for agents never seen).
    pub(crate) fn get(&self, agent: usize) -> u64 {
        self.counters.get(agent).copied().unwrap_or(0)
    }

    /// Advances the agent's own counter; returns the new value.
    pub(crate) fn tick(&mut self, agent: usize) -> u64 {
        if self.counters.len() <= agent {
            self.counters.resize(agent + 1, 0);
        }
        self.counters[agent] += 1;
        self.counters[agent]
    }

    /// Takes, per agent, the later of the two counters, and every unresolved wait of both.
    pub(crate) fn join(&mut self, other: &VectorClock) {
        if self.counters.len() < other.counters.len() {
            self.counters.resize(other.counters.len(), 0);
        }
        for (mine, theirs) in self.counters.iter_mut().zip(&other.counters) {
            *mine = (*mine).max(*theirs);
        }
        for (fence, value) in &other.awaited {
            self.await_signal(fence, *value);
        }
    }

    /// Everything after this point waits for `fence` to reach `value`, whose signal has
    /// not been enqueued yet.
    pub(crate) fn await_signal(&mut self, fence: &Arc<FenceState>, value: u64) {
        let known = self.awaited.iter().any(|(f, v)| Arc::ptr_eq(f, fence) && *v == value);
        if !known {
            self.awaited.push((fence.clone(), value));
        }
    }

    /// Fence waits whose signal is not known yet.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.awaited.len()
    }

    /// Joins the clocks of signals enqueued since they were awaited. Returns true when
    /// every awaited signal is known (the clock is exact).
    pub(crate) fn resolve(&mut self) -> bool {
        if self.awaited.is_empty() {
            return true;
        }
        // A signal's clock may itself await others: repeat until nothing changes. Waits
        // resolved once are not taken up again, so circular waits (a deadlock on the
        // device) cannot loop here.
        let mut done: Vec<(Arc<FenceState>, u64)> = Vec::new();
        loop {
            let mut joined = Vec::new();
            self.awaited.retain(|(fence, value)| {
                let resolved = done.iter().any(|(f, v)| Arc::ptr_eq(f, fence) && v == value);
                if resolved {
                    return false;
                }
                match fence.signal_clock(*value) {
                    Some(clock) => {
                        done.push((fence.clone(), *value));
                        joined.push(clock);
                        false
                    }
                    None => !fence.has_reached(*value),
                }
            });
            if joined.is_empty() {
                return self.awaited.is_empty();
            }
            for clock in &joined {
                self.join(clock);
            }
        }
    }
}

impl std::fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorClock")
            .field("counters", &self.counters)
            .field("awaited", &self.awaited.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_later_counter_of_each_agent() {
        let mut a = VectorClock::default();
        a.tick(1);
        a.tick(1);
        let mut b = VectorClock::default();
        b.tick(3);
        b.tick(1);
        a.join(&b);
        assert_eq!((a.get(0), a.get(1), a.get(3)), (0, 2, 1));
    }

    #[test]
    fn an_awaited_signal_is_joined_once_it_is_enqueued() {
        let fence = Arc::new(FenceState::new(0));
        let mut waiter = VectorClock::default();
        waiter.await_signal(&fence, 2);
        assert!(!waiter.resolve(), "no signal of 2 yet");
        let mut signaller = VectorClock::default();
        signaller.tick(4);
        fence.note_signal(2, signaller);
        assert!(waiter.resolve());
        assert_eq!(
            waiter.get(4),
            1,
            "the signaller's work is now ordered before the waiter"
        );
    }
}
