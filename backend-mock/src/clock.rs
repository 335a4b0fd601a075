//! Vector clocks: the happens-before relation between streams and the host, as the
//! race checker sees it at enqueue time.

/// One counter per agent (index 0 is the host, then one per stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VectorClock(Vec<u64>);

impl VectorClock {
    /// The agent's counter (0 for agents never seen).
    pub(crate) fn get(&self, agent: usize) -> u64 {
        self.0.get(agent).copied().unwrap_or(0)
    }

    /// Advances the agent's own counter; returns the new value.
    pub(crate) fn tick(&mut self, agent: usize) -> u64 {
        if self.0.len() <= agent {
            self.0.resize(agent + 1, 0);
        }
        self.0[agent] += 1;
        self.0[agent]
    }

    /// Takes, per agent, the later of the two counters.
    pub(crate) fn join(&mut self, other: &VectorClock) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine = (*mine).max(*theirs);
        }
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
}
