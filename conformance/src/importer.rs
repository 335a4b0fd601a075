//! The importer side of a sharing case: the second process of an export/import.
//!
//! A sharing case runs the exporter itself and hands the importer's part (a [`Role`]) to
//! another side, connected by a Unix socket over which the handle travels
//! ([`handle_transfer`](gpuhal_hal::handle_transfer)) and the two sides tell each other
//! when they are done. The other side is a thread of this process on the same device
//! (the mock, whose pools are this process's memory), or a child process: the runner
//! starts its own program again with `--sharing-importer ROLE --socket PATH`, since
//! drivers may refuse to open a pool handle in the process that exported it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gpuhal_hal::Backend;

use crate::case::{Failure, ResultExt};

/// How long either side waits for the other before failing the case.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit status of an importer process that skipped (its message on stderr says why).
const SKIPPED_STATUS: i32 = 3;

/// The importer's part of a sharing case, found by name in a child process.
pub struct Role<B: Backend> {
    /// The name the exporter asks for.
    pub name: &'static str,
    /// Runs the importer's part on `device`, talking to the exporter over `peer`.
    pub run: fn(&B::Device, &UnixStream) -> Result<(), Failure>,
}

impl<B: Backend> Clone for Role<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Role<B> {}

/// Where importer roles run.
#[derive(Debug, Clone)]
pub(crate) enum ImporterSide {
    /// On a thread of this process, on the exporter's own device.
    Thread,
    /// In a child process: `program` with `args`, then `--sharing-importer ROLE --socket
    /// PATH`.
    Process { program: PathBuf, args: Vec<String> },
}

/// Sends one message byte to the other side.
pub(crate) fn send(peer: &UnixStream, message: u8, what: &str) -> Result<(), Failure> {
    (&*peer)
        .write_all(&[message])
        .map_err(|err| Failure::new(format!("sending {what} to the other side: {err}")))
}

/// Waits for the other side's message byte `message`.
pub(crate) fn expect(peer: &UnixStream, message: u8, what: &str) -> Result<(), Failure> {
    let mut got = [0u8];
    match (&*peer).read_exact(&mut got) {
        Ok(()) if got[0] == message => Ok(()),
        Ok(()) => Err(Failure::new(format!(
            "waiting for {what}: the other side sent message {} instead of {message}",
            got[0]
        ))),
        Err(err) => Err(Failure::new(format!(
            "waiting for {what}: the other side stopped ({err}); its own failure, if any, follows"
        ))),
    }
}

fn set_timeouts(socket: &UnixStream) -> Result<(), Failure> {
    socket
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(|err| Failure::new(format!("setting the socket's timeouts: {err}")))
}

/// Runs `exporter` here and `role` on the other side, connected by a socket, and fails
/// with whichever side's failure came first (both, when both failed).
pub(crate) fn with_importer<B: Backend, R>(
    side: &ImporterSide,
    device: &B::Device,
    role: Role<B>,
    exporter: impl FnOnce(&UnixStream) -> Result<R, Failure>,
) -> Result<R, Failure> {
    match side {
        ImporterSide::Thread => on_thread(device, role, exporter),
        ImporterSide::Process { program, args } => in_child(program, args, role.name, exporter),
    }
}

fn combine<R>(exporter: Result<R, Failure>, importer: Result<(), Failure>) -> Result<R, Failure> {
    match (exporter, importer) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(Failure::Skipped(reason)), _) | (_, Err(Failure::Skipped(reason))) => Err(Failure::skip(reason)),
        (Ok(_), Err(importer)) => Err(Failure::new(format!("the importer: {}", importer.message()))),
        (Err(exporter), Ok(())) => Err(exporter),
        (Err(exporter), Err(importer)) => Err(Failure::new(format!(
            "{}; the importer: {}",
            exporter.message(),
            importer.message()
        ))),
    }
}

fn on_thread<B: Backend, R>(
    device: &B::Device,
    role: Role<B>,
    exporter: impl FnOnce(&UnixStream) -> Result<R, Failure>,
) -> Result<R, Failure> {
    let (ours, theirs) = UnixStream::pair().map_err(|err| Failure::new(format!("making a socket pair: {err}")))?;
    set_timeouts(&ours)?;
    set_timeouts(&theirs)?;
    std::thread::scope(|scope| {
        let importer = scope.spawn(move || {
            let result = (role.run)(device, &theirs);
            // The exporter sees the socket close, not a hang, whatever the role did.
            drop(theirs);
            result
        });
        let exported = exporter(&ours);
        drop(ours);
        let imported = importer
            .join()
            .unwrap_or_else(|_| Err(Failure::new("the importer's thread panicked")));
        combine(exported, imported)
    })
}

fn socket_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "gpuhal-conformance-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes the socket's path and ends the child, however the case ends.
struct ChildGuard {
    child: Child,
    path: PathBuf,
    waited: bool,
}

impl ChildGuard {
    /// Waits for the child to exit (killing it after [`PEER_TIMEOUT`]); its outcome.
    fn finish(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + PEER_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.waited = true;
                    return Err(Failure::new(format!(
                        "the importer process did not exit within {PEER_TIMEOUT:?}"
                    )));
                }
                Err(err) => return Err(Failure::new(format!("waiting for the importer process: {err}"))),
            }
        };
        self.waited = true;
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let stderr = stderr.trim();
        match status.code() {
            Some(0) => Ok(()),
            Some(SKIPPED_STATUS) => Err(Failure::skip(format!("the importer process skipped: {stderr}"))),
            _ => Err(Failure::new(format!("the importer process ({status}): {stderr}"))),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn in_child<R>(
    program: &Path,
    args: &[String],
    role: &str,
    exporter: impl FnOnce(&UnixStream) -> Result<R, Failure>,
) -> Result<R, Failure> {
    let path = socket_path();
    let listener =
        UnixListener::bind(&path).map_err(|err| Failure::new(format!("listening on {}: {err}", path.display())))?;
    let child = Command::new(program)
        .args(args)
        .arg("--sharing-importer")
        .arg(role)
        .arg("--socket")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| Failure::new(format!("starting the importer process {}: {err}", program.display())))?;
    let mut guard = ChildGuard {
        child,
        path,
        waited: false,
    };
    listener
        .set_nonblocking(true)
        .map_err(|err| Failure::new(format!("making the listener non-blocking: {err}")))?;
    let deadline = Instant::now() + PEER_TIMEOUT;
    let socket = loop {
        match listener.accept() {
            Ok((socket, _)) => break socket,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if matches!(guard.child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                    return Err(guard
                        .finish()
                        .err()
                        .unwrap_or_else(|| Failure::new("the importer process exited without connecting")));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(err) => return Err(Failure::new(format!("accepting the importer's connection: {err}"))),
        }
    };
    socket
        .set_nonblocking(false)
        .map_err(|err| Failure::new(format!("making the socket blocking: {err}")))?;
    set_timeouts(&socket)?;
    let exported = exporter(&socket);
    drop(socket);
    let imported = guard.finish();
    combine(exported, imported)
}

/// The body of an importer process: connects to the exporter at `socket` and runs the
/// role named `role` on the device `open` opens. Returns the process's exit status: 0
/// passed, 3 skipped, 1 failed (the message is printed on stderr).
pub fn serve_importer<B: Backend>(
    open: impl FnOnce() -> gpuhal_hal::Result<B::Device>,
    role: &str,
    socket: &Path,
) -> i32 {
    let outcome = (|| {
        let role = crate::cases::sharing_roles::<B>()
            .into_iter()
            .find(|r| r.name == role)
            .ok_or_else(|| Failure::new(format!("no importer role {role:?}")))?;
        let peer = UnixStream::connect(socket)
            .map_err(|err| Failure::new(format!("connecting to the exporter at {}: {err}", socket.display())))?;
        set_timeouts(&peer)?;
        let device = open().during("opening the importer's device with sharing enabled")?;
        (role.run)(&device, &peer)
    })();
    match outcome {
        Ok(()) => 0,
        Err(Failure::Skipped(reason)) => {
            eprintln!("{reason}");
            SKIPPED_STATUS
        }
        Err(Failure::Failed(message)) => {
            eprintln!("{message}");
            1
        }
    }
}
