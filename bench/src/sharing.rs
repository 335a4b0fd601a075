//! Two processes on one device: the exporter allocates and fills a buffer and exports it
//! with an interprocess event; the importer maps it, checks it, writes its answer and
//! records the event; the exporter waits on the event and checks the answer. Then the
//! figures: export, import and the export → send → import → reply round trip (medians of
//! many), and copy bandwidth through the imported buffer beside a local one, measured in
//! the importer, interleaved.
//!
//! The importer runs in a child process (`gpuhal-bench sharing-importer`) where the
//! backend's handles are real operating-system handles (CUDA), on a thread of this
//! process for the mock.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use gpuhal_hal::handle_transfer::{receive_shared, send_shared};
use gpuhal_hal::{Backend, Device, Event, MemoryKind, Stream};

use crate::harness::{Settings, Summary};
use crate::report::{Report, Verdict};

/// The benchmark's name in reports.
pub const GROUP: &str = "sharing";
/// How close copies through an imported buffer must come to a local buffer's.
pub const BANDWIDTH_TARGET: f64 = 0.97;

const ANSWERED: u8 = 1;
const NEXT: u8 = 2;
const IMPORTED: u8 = 3;
const RELEASED: u8 = 4;

/// Bytes the importer checks and answers at the start of the buffer.
const CHECKED_LEN: usize = 64 << 10;
const FILL: u8 = 0x3c;
const ANSWER: u8 = 0xa5;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect()
}

/// What the exporter tells the importer to do.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Size of the shared buffer (and of the importer's local buffers).
    len: u64,
    /// Timed copies per direction and buffer.
    copies: u32,
    /// Export/import round trips.
    imports: u32,
}

impl Plan {
    fn for_settings(settings: &Settings) -> Plan {
        Plan {
            len: settings.bytes(256 << 20, 1 << 20),
            copies: settings.samples(41) as u32,
            imports: settings.samples(201) as u32,
        }
    }

    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.len.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.copies.to_le_bytes());
        bytes[12..].copy_from_slice(&self.imports.to_le_bytes());
        bytes
    }

    fn decode(bytes: [u8; 16]) -> Plan {
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        Plan {
            len: u64::from_le_bytes(len),
            copies: word(8),
            imports: word(12),
        }
    }
}

fn send(peer: &UnixStream, message: u8) -> Result<()> {
    (&*peer).write_all(&[message]).context("sending to the other process")
}

fn expect(peer: &UnixStream, message: u8, what: &str) -> Result<()> {
    let mut got = [0u8];
    (&*peer)
        .read_exact(&mut got)
        .with_context(|| format!("waiting for {what}: the other side stopped"))?;
    ensure!(got[0] == message, "waiting for {what}: got message {}", got[0]);
    Ok(())
}

fn send_values(peer: &UnixStream, values: &[f64]) -> Result<()> {
    let mut bytes = Vec::with_capacity(4 + values.len() * 8);
    bytes.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    (&*peer).write_all(&bytes).context("sending measurements")
}

fn receive_values(peer: &UnixStream) -> Result<Vec<f64>> {
    let mut count = [0u8; 4];
    (&*peer).read_exact(&mut count).context("receiving measurements")?;
    let mut values = Vec::new();
    for _ in 0..u32::from_le_bytes(count) {
        let mut value = [0u8; 8];
        (&*peer).read_exact(&mut value).context("receiving measurements")?;
        values.push(f64::from_le_bytes(value));
    }
    Ok(values)
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The exporter's side, on `device` (opened with sharing enabled), with the importer at
/// the other end of `peer`. Adds the rows and the bandwidth check to `report`.
pub fn exporter<B: Backend>(
    device: &B::Device,
    peer: &UnixStream,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let plan = Plan::for_settings(settings);
    (&*peer).write_all(&plan.encode()).context("sending the plan")?;
    let stream = device.create_stream()?;
    let buffer = device.allocate(plan.len, MemoryKind::Device, &stream)?;
    stream.fill(&buffer, 0, plan.len, FILL)?;
    stream.write(&buffer, 0, &pattern(CHECKED_LEN))?;
    let (ready, ready_handle) = device.shared_event()?;
    ready.record(&stream)?;
    let handle = device.export(&buffer)?;
    send_shared(peer, &handle, Some(&ready_handle))?;
    expect(peer, ANSWERED, "the importer's answer")?;
    stream.wait_event(&ready)?;
    let mut answer = vec![0u8; CHECKED_LEN];
    stream.read(&buffer, 0, &mut answer)?;
    if let Some(at) = answer.iter().position(|&b| b != ANSWER) {
        bail!(
            "the exporter's buffer after the importer's answer: byte {at} is {:#04x}, expected {ANSWER:#04x}",
            answer[at]
        );
    }
    let mut tail = [0u8; 16];
    stream.read(&buffer, plan.len - 16, &mut tail)?;
    ensure!(
        tail == [FILL; 16],
        "the importer changed bytes past its answer: {tail:?}"
    );
    send(peer, NEXT)?;
    let bandwidth: Vec<Vec<f64>> = (0..3).map(|_| receive_values(peer)).collect::<Result<_>>()?;

    let mut export_us = Vec::new();
    let mut round_trip_us = Vec::new();
    for _ in 0..plan.imports {
        let started = Instant::now();
        let handle = device.export(&buffer)?;
        let exported = started.elapsed();
        send_shared(peer, &handle, None)?;
        expect(peer, IMPORTED, "the importer's import")?;
        round_trip_us.push(micros(started.elapsed()));
        export_us.push(micros(exported));
    }
    let import_us = receive_values(peer)?;
    expect(peer, RELEASED, "the importer releasing its import")?;
    drop(buffer);

    let mib = plan.len >> 20;
    let summary = |values: &[f64], what: &str| Summary::of(values).ok_or_else(|| anyhow!("no samples of {what}"));
    report.measured(
        "sharing/export",
        GROUP,
        "export: pool fd + allocation export data",
        "us",
        summary(&export_us, "export")?,
    );
    report.measured(
        "sharing/import",
        GROUP,
        "import_shared in the importer: open pool + map allocation",
        "us",
        summary(&import_us, "import")?,
    );
    report.measured(
        "sharing/round-trip",
        GROUP,
        "export → send over the socket → import → reply",
        "us",
        summary(&round_trip_us, "the round trip")?,
    );
    let labels = [
        ("sharing/copy-local", format!("copy {mib} MiB local → local")),
        ("sharing/copy-from-import", format!("copy {mib} MiB imported → local")),
        ("sharing/copy-to-import", format!("copy {mib} MiB local → imported")),
    ];
    let mut medians = Vec::new();
    for ((id, label), values) in labels.iter().zip(&bandwidth) {
        let summary = summary(values, label)?;
        medians.push(summary.median);
        report.measured(id, GROUP, label, "GB/s", summary);
    }
    let (from, to) = (medians[1] / medians[0], medians[2] / medians[0]);
    report.check(
        GROUP,
        format!("copies through an imported buffer within 3% of a local buffer ({mib} MiB)"),
        format!(
            "imported → local {:.1} GB/s ({from:.3} x local), local → imported {:.1} GB/s ({to:.3} x), local {:.1} GB/s",
            medians[1], medians[2], medians[0]
        ),
        if settings.smoke {
            Verdict::NotMeasured
        } else {
            Verdict::from_bool(from.min(to) >= BANDWIDTH_TARGET)
        },
    );
    Ok(())
}

/// GB/s of one copy of `len` bytes timed by two timing events on `stream`.
fn timed_copy<B: Backend>(
    device: &B::Device,
    stream: &B::Stream,
    src: &dyn gpuhal_hal::AsRegion,
    dst: &dyn gpuhal_hal::AsRegion,
    len: u64,
) -> Result<f64> {
    let start = device.event(true)?;
    let end = device.event(true)?;
    start.record(stream)?;
    stream.copy(src, 0, dst, 0, len)?;
    end.record(stream)?;
    end.synchronize()?;
    let seconds = start.elapsed(&end)?.as_secs_f64();
    Ok(if seconds > 0.0 { len as f64 / seconds / 1e9 } else { 0.0 })
}

/// The importer's side, on `device`, with the exporter at the other end of `peer`.
pub fn importer<B: Backend>(device: &B::Device, peer: &UnixStream) -> Result<()> {
    let mut plan = [0u8; 16];
    (&*peer).read_exact(&mut plan).context("receiving the plan")?;
    let plan = Plan::decode(plan);
    let (handle, event) = receive_shared(peer)?;
    let event = event.ok_or_else(|| anyhow!("the handle came without its interprocess event"))?;
    ensure!(
        handle.len == plan.len,
        "the handle names {} bytes, the plan {}",
        handle.len,
        plan.len
    );
    let stream = device.create_stream()?;
    let imported = device.import_shared(&handle)?;
    let ready = device.import_event(&event)?;
    stream.wait_event(&ready)?;
    let mut seen = vec![0u8; CHECKED_LEN];
    stream.read(&imported, 0, &mut seen)?;
    if let Some(at) = seen.iter().zip(pattern(CHECKED_LEN)).position(|(a, b)| *a != b) {
        bail!("the importer's view of the exported buffer differs at byte {at}");
    }
    let local_src = device.allocate(plan.len, MemoryKind::Device, &stream)?;
    let local_dst = device.allocate(plan.len, MemoryKind::Device, &stream)?;
    stream.fill(&local_src, 0, plan.len, ANSWER)?;
    stream.copy(&local_src, 0, &imported, 0, CHECKED_LEN as u64)?;
    ready.record(&stream)?;
    send(peer, ANSWERED)?;
    expect(peer, NEXT, "the exporter's check")?;

    // Interleaved, so drift on the host or the device touches every row alike.
    let mut bandwidth = [Vec::new(), Vec::new(), Vec::new()];
    timed_copy::<B>(device, &stream, &local_src, &local_dst, plan.len)?;
    timed_copy::<B>(device, &stream, &imported, &local_dst, plan.len)?;
    for _ in 0..plan.copies {
        bandwidth[0].push(timed_copy::<B>(device, &stream, &local_src, &local_dst, plan.len)?);
        bandwidth[1].push(timed_copy::<B>(device, &stream, &imported, &local_dst, plan.len)?);
        bandwidth[2].push(timed_copy::<B>(device, &stream, &local_src, &imported, plan.len)?);
    }
    stream.synchronize()?;
    for values in &bandwidth {
        send_values(peer, values)?;
    }
    // Each timed import is dropped before the next, as the first is before them.
    drop(imported);

    let mut import_us = Vec::new();
    for _ in 0..plan.imports {
        let (handle, _) = receive_shared(peer)?;
        let started = Instant::now();
        let again = device.import_shared(&handle)?;
        import_us.push(micros(started.elapsed()));
        send(peer, IMPORTED)?;
        drop(again);
    }
    send_values(peer, &import_us)?;
    drop(ready);
    send(peer, RELEASED)
}

/// Runs the exporter here and the importer on a thread of this process, on the same
/// device (for backends whose handles do not need a second process, the mock).
pub fn in_process<B: Backend>(device: &B::Device, settings: &Settings, report: &mut Report) -> Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    for socket in [&ours, &theirs] {
        socket.set_read_timeout(Some(Duration::from_secs(60)))?;
    }
    std::thread::scope(|scope| {
        let importer = scope.spawn(move || importer::<B>(device, &theirs));
        let exported = exporter::<B>(device, &ours, settings, report);
        drop(ours);
        let imported = importer
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the importer's thread panicked")));
        match (exported, imported) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(err), Ok(())) | (Ok(()), Err(err)) => Err(err),
            (Err(exporter), Err(importer)) => Err(anyhow!("{exporter:#}; the importer: {importer:#}")),
        }
    })
}

/// Runs the exporter here and the importer in a child process: `program` with `args`
/// and `--socket PATH`, which must call [`importer`] on a device of its own.
pub fn with_child<B: Backend>(
    device: &B::Device,
    program: &std::path::Path,
    args: &[String],
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let path = std::env::temp_dir().join(format!("gpuhal-bench-sharing-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener =
        std::os::unix::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .arg("--socket")
        .arg(&path)
        .spawn()
        .with_context(|| format!("starting the importer process {}", program.display()))?;
    let outcome = (|| {
        let (peer, _) = listener.accept().context("accepting the importer's connection")?;
        peer.set_read_timeout(Some(Duration::from_secs(120)))?;
        exporter::<B>(device, &peer, settings, report)
    })();
    let status = match &outcome {
        Ok(()) => child.wait().context("waiting for the importer process")?,
        Err(_) => {
            let _ = child.kill();
            child.wait().context("waiting for the importer process")?
        }
    };
    let _ = std::fs::remove_file(&path);
    outcome?;
    ensure!(status.success(), "the importer process failed ({status})");
    Ok(())
}

/// The importer process's body: connects to the exporter at `socket`.
pub fn serve<B: Backend>(device: &B::Device, socket: &std::path::Path) -> Result<()> {
    let peer = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    peer.set_read_timeout(Some(Duration::from_secs(120)))?;
    importer::<B>(device, &peer)
}
