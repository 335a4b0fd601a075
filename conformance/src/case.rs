//! What a conformance case is, what it gets to run with, and how it fails.

use std::fmt;
use std::sync::Arc;

use gpuhal_hal::{Backend, Capabilities, Device, Error};

use crate::importer::ImporterSide;

/// The part of the contract a case checks; the report tallies results by area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// The caching allocator over device (and pinned) memory.
    Memory,
    /// Managed memory: advice, prefetch, the managed policy.
    Managed,
    /// Import of existing host memory.
    HostImport,
    /// Pooled events: recording, waiting, timing.
    Events,
    /// Timeline fences.
    Fences,
    /// Graph capture, replay, update and graph pools.
    Graphs,
    /// Several threads and streams at once.
    Concurrency,
    /// Misuse that must fail cleanly and lose nothing else.
    BadInput,
    /// Two devices of one machine: peer access, cross-device copies and event waits.
    MultiDevice,
    /// Export and import of device memory and interprocess events.
    Sharing,
}

impl Area {
    /// Every area, in report order.
    pub const ALL: [Area; 10] = [
        Area::Memory,
        Area::Managed,
        Area::HostImport,
        Area::Events,
        Area::Fences,
        Area::Graphs,
        Area::Concurrency,
        Area::BadInput,
        Area::MultiDevice,
        Area::Sharing,
    ];

    /// The name used in reports and in case paths (`area/case`).
    pub fn name(self) -> &'static str {
        match self {
            Area::Memory => "memory",
            Area::Managed => "managed",
            Area::HostImport => "host import",
            Area::Events => "events",
            Area::Fences => "fences",
            Area::Graphs => "graphs",
            Area::Concurrency => "concurrency",
            Area::BadInput => "bad input",
            Area::MultiDevice => "multi device",
            Area::Sharing => "sharing",
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One conformance case: a check of one promise of the contract, generic over the backend.
pub struct Case<B: Backend> {
    /// Unique name, `snake_case`, saying what is promised.
    pub name: &'static str,
    /// The area it is tallied under.
    pub area: Area,
    /// Capabilities the device must have; without them the case is skipped.
    pub needs: Capabilities,
    /// The check itself, run on a freshly opened device.
    pub run: fn(&Context<B>) -> Result<(), Failure>,
}

impl<B: Backend> Case<B> {
    /// A case.
    pub fn new(
        name: &'static str,
        area: Area,
        needs: Capabilities,
        run: fn(&Context<B>) -> Result<(), Failure>,
    ) -> Self {
        Case { name, area, needs, run }
    }

    /// `area/name`, as the report and `--filter` see it.
    pub fn path(&self) -> String {
        format!("{}/{}", self.area.name().replace(' ', "_"), self.name)
    }
}

impl<B: Backend> Clone for Case<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Case<B> {}

impl<B: Backend> fmt::Debug for Case<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("area", &self.area)
            .field("needs", &self.needs)
            .finish()
    }
}

/// Opens a device of backend `B`; shared between the runner and cases that need a
/// second device.
pub(crate) type Opener<B> = Arc<dyn Fn() -> gpuhal_hal::Result<<B as Backend>::Device> + Send + Sync>;

/// Opens two devices of one machine (they may become peers).
pub(crate) type PairOpener<B> =
    Arc<dyn Fn() -> gpuhal_hal::Result<(<B as Backend>::Device, <B as Backend>::Device)> + Send + Sync>;

/// How the runner opens devices: one for each case, and, where the backend can, two
/// devices of one machine (the `multi device` area) and a device with sharing enabled
/// (the `sharing` area). Without one of the latter, the cases needing it are skipped
/// with the reason given.
pub struct Openers<B: Backend> {
    pub(crate) one: Opener<B>,
    pub(crate) pair: Result<PairOpener<B>, String>,
    pub(crate) sharing: Result<Opener<B>, String>,
    pub(crate) importer: ImporterSide,
}

impl<B: Backend> Clone for Openers<B> {
    fn clone(&self) -> Self {
        Openers {
            one: self.one.clone(),
            pair: self.pair.clone(),
            sharing: self.sharing.clone(),
            importer: self.importer.clone(),
        }
    }
}

impl<B: Backend> Openers<B> {
    /// Cases get a device opened by `open`; the multi-device and sharing cases skip.
    pub fn new(open: impl Fn() -> gpuhal_hal::Result<B::Device> + Send + Sync + 'static) -> Self {
        Openers {
            one: Arc::new(open),
            pair: Err("the runner was given no way to open two devices of one machine".into()),
            sharing: Err("the runner was given no way to open a device with sharing enabled".into()),
            importer: ImporterSide::Thread,
        }
    }

    /// Multi-device cases open their two devices with `open`.
    pub fn with_pair(
        mut self,
        open: impl Fn() -> gpuhal_hal::Result<(B::Device, B::Device)> + Send + Sync + 'static,
    ) -> Self {
        self.pair = Ok(Arc::new(open));
        self
    }

    /// Multi-device cases skip, saying `reason` (why the backend or machine has no pair).
    pub fn without_pair(mut self, reason: impl Into<String>) -> Self {
        self.pair = Err(reason.into());
        self
    }

    /// Sharing cases open their device (with sharing enabled) with `open`.
    pub fn with_sharing(mut self, open: impl Fn() -> gpuhal_hal::Result<B::Device> + Send + Sync + 'static) -> Self {
        self.sharing = Ok(Arc::new(open));
        self
    }

    /// The importer side of sharing cases runs in a child process: `program` with `args`
    /// and then `--sharing-importer ROLE --socket PATH`, which must call
    /// [`serve_importer`](crate::serve_importer). Without this it runs on a thread of
    /// this process, on the exporter's device (enough for the mock, whose pools are this
    /// process's memory; drivers may refuse to import in the exporting process).
    pub fn with_importer_process(mut self, program: impl Into<std::path::PathBuf>, args: Vec<String>) -> Self {
        self.importer = ImporterSide::Process {
            program: program.into(),
            args,
        };
        self
    }

    /// Sharing cases skip, saying `reason`.
    pub fn without_sharing(mut self, reason: impl Into<String>) -> Self {
        self.sharing = Err(reason.into());
        self
    }
}

/// What a case runs with: a device opened for it alone, and a way to open more.
pub struct Context<B: Backend> {
    device: B::Device,
    openers: Openers<B>,
}

impl<B: Backend> Context<B> {
    pub(crate) fn new(device: B::Device, openers: Openers<B>) -> Self {
        Context { device, openers }
    }

    /// The device under test, opened fresh for this case.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The device's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.device.capabilities()
    }

    /// A new stream on the device under test.
    pub fn stream(&self) -> Result<B::Stream, Failure> {
        self.device.create_stream().during("creating a stream")
    }

    /// Opens a second device the way the runner opened the first (for checks that
    /// handles of one device are refused by another).
    pub fn open_another_device(&self) -> Result<B::Device, Failure> {
        (self.openers.one)().during("opening a second device")
    }

    /// Two devices of one machine, or a skip saying why the runner has none.
    pub fn device_pair(&self) -> Result<(B::Device, B::Device), Failure> {
        match &self.openers.pair {
            Ok(open) => open().during("opening two devices"),
            Err(reason) => Err(Failure::skip(reason.clone())),
        }
    }

    /// A device opened with sharing enabled, or a skip saying why the runner has none.
    pub fn sharing_device(&self) -> Result<B::Device, Failure> {
        match &self.openers.sharing {
            Ok(open) => open().during("opening a device with sharing enabled"),
            Err(reason) => Err(Failure::skip(reason.clone())),
        }
    }
}

impl<B: Backend> Context<B> {
    /// Runs `exporter` here and the importer role named `role` on the other side (a
    /// thread on `device`, or a child process with a device of its own), connected by the
    /// socket `exporter` is given. Fails with either side's failure.
    pub fn with_importer<R>(
        &self,
        device: &B::Device,
        role: &str,
        exporter: impl FnOnce(&std::os::unix::net::UnixStream) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let found = crate::cases::sharing_roles::<B>()
            .into_iter()
            .find(|r| r.name == role)
            .ok_or_else(|| Failure::new(format!("no importer role {role:?}")))?;
        crate::importer::with_importer(&self.openers.importer, device, found, exporter)
    }
}

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The backend broke a promise; the message says what was expected and what happened.
    Failed(String),
    /// The case could not run because of a real limitation of the device (too little
    /// free memory, say). Never used to hide a failure.
    Skipped(String),
}

impl Failure {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Failure::Failed(message.into())
    }

    /// A skip, with the limitation of the device that prevents the case from running.
    pub fn skip(reason: impl Into<String>) -> Self {
        Failure::Skipped(reason.into())
    }

    /// A failure comparing what was expected with what happened.
    pub fn mismatch(what: impl fmt::Display, expected: impl fmt::Debug, actual: impl fmt::Debug) -> Self {
        Failure::Failed(format!("{what}: expected {expected:?}, got {actual:?}"))
    }

    /// The message or reason.
    pub fn message(&self) -> &str {
        match self {
            Failure::Failed(message) | Failure::Skipped(message) => message,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Failed(message) => write!(f, "failed: {message}"),
            Failure::Skipped(reason) => write!(f, "skipped: {reason}"),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Failed(format!("unexpected error: {err}"))
    }
}

/// Turns an unexpected `hal` error into a [`Failure`] that says what the case was doing.
pub trait ResultExt<T> {
    /// `Ok` unchanged; an error becomes "`doing`: expected success, got error …".
    fn during(self, doing: &str) -> Result<T, Failure>;
}

impl<T> ResultExt<T> for gpuhal_hal::Result<T> {
    fn during(self, doing: &str) -> Result<T, Failure> {
        self.map_err(|err| Failure::Failed(format!("{doing}: expected success, got error: {err}")))
    }
}

/// Fails the case with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::Failure::new(format!($($message)+)));
        }
    };
}

/// Fails the case unless `actual == expected`, naming both.
#[macro_export]
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($what:tt)+) => {{
        let actual = $actual;
        let expected = $expected;
        if actual != expected {
            return Err($crate::Failure::mismatch(format!($($what)+), expected, actual));
        }
    }};
}

/// Evaluates a `hal::Result` that must be an error matching `pattern`; yields the error,
/// or fails the case naming the expected variant and what came instead.
#[macro_export]
macro_rules! expect_error {
    ($result:expr, $pattern:pat, $($what:tt)+) => {
        match $result {
            Err(err @ $pattern) => err,
            Err(other) => {
                return Err($crate::Failure::new(format!(
                    "{}: expected {}, got error: {other} ({other:?})",
                    format!($($what)+),
                    stringify!($pattern)
                )))
            }
            Ok(_) => {
                return Err($crate::Failure::new(format!(
                    "{}: expected {}, got success",
                    format!($($what)+),
                    stringify!($pattern)
                )))
            }
        }
    };
}
