//! Platform profiles: which real machine the mock device stands in for.

use gpuhal_hal::Capabilities;

/// The kind of machine a mock device imitates; decides its [`Capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// A discrete GPU on an x86 host (an H100): host memory can be page-locked and
    /// mapped, but the device cannot read pageable host memory.
    #[default]
    Discrete,
    /// A coherent CPU+GPU platform (GH200, GB10): the device reads pageable host memory
    /// directly, and page-locking existing host memory is not supported.
    Coherent,
    /// A bare device: stream-ordered device memory, events, fences and timing only; no
    /// managed memory, no graphs, no host registration.
    Minimal,
}

impl Profile {
    /// Every profile, in a fixed order (the conformance runner iterates it).
    pub const ALL: [Profile; 3] = [Profile::Discrete, Profile::Coherent, Profile::Minimal];

    /// The profile's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Discrete => "discrete",
            Profile::Coherent => "coherent",
            Profile::Minimal => "minimal",
        }
    }

    /// The profile called `name` (as [`name`](Self::name) spells it), if any.
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|profile| profile.name() == name)
    }

    /// Whether devices of this profile can be given access to each other's memory.
    pub fn can_be_peer(self) -> bool {
        self != Profile::Minimal
    }

    /// What a device of this profile can do.
    pub fn capabilities(self) -> Capabilities {
        let common = Capabilities::STREAM_ORDERED_ALLOC
            | Capabilities::TIMING_EVENTS
            | Capabilities::TIMELINE_FENCE
            | Capabilities::HOST_PINNED;
        // Growable segments need virtual-memory management, which the minimal device
        // (a platform with the bare minimum) lacks.
        // Peer access depends on the machine as well (another device to be a peer of):
        // the device adds PEER_ACCESS when it was opened with one.
        let managed_and_graphs = Capabilities::IPC
            | Capabilities::MANAGED
            | Capabilities::CONCURRENT_MANAGED
            | Capabilities::MANAGED_ADVICE
            | Capabilities::GRAPHS
            | Capabilities::GRAPH_MEM_NODES;
        match self {
            Profile::Discrete => {
                common | managed_and_graphs | Capabilities::HOST_REGISTER | Capabilities::GROWABLE_SEGMENTS
            }
            Profile::Coherent => {
                common | managed_and_graphs | Capabilities::PAGEABLE_ACCESS | Capabilities::GROWABLE_SEGMENTS
            }
            Profile::Minimal => common,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = gpuhal_hal::Error;

    fn from_str(name: &str) -> gpuhal_hal::Result<Profile> {
        Profile::from_name(name).ok_or_else(|| {
            gpuhal_hal::Error::invalid(
                "Profile::from_str",
                format!("unknown mock profile {name:?}; expected one of discrete, coherent, minimal"),
            )
        })
    }
}
