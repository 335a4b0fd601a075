//! Export and import of device memory, ordered by interprocess events.
//!
//! Each case is an exporter, run here, and an importer [`Role`] run on the other side of
//! a socket: a second process on the same device where the runner was told how to start
//! one (CUDA), a thread on the exporter's device otherwise (the mock). The handle crosses
//! with [`send_shared`]/[`receive_shared`]; the sides then tell each other when they are
//! done, and the exporter keeps its buffer (and its interprocess event) until the
//! importer says it has released its import.

use std::os::unix::net::UnixStream;

use gpuhal_hal::handle_transfer::{receive_shared, send_shared};
use gpuhal_hal::{AsRegion, Backend, Capabilities, Device, Event, MemoryKind, SharedMemory, Stream};

use super::{ensure_bytes, pattern, read_back, KIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::importer::{expect, send, Role};
use crate::{ensure, ensure_eq};

/// The importer wrote its answer and recorded the shared event after it.
const ANSWERED: u8 = 1;
/// The exporter checked what it had to check.
const CHECKED: u8 = 2;
/// The importer dropped its import (and its copy of the event) after its work completed.
const RELEASED: u8 = 3;
/// The importer dropped its first import.
const DROPPED: u8 = 4;
/// The exporter changed its buffer after the first import was dropped.
const CHANGED: u8 = 5;

const ROUND_TRIP_LEN: u64 = 64 * KIB;
const PIECE_LEN: u64 = 4 * KIB;
const DROP_LEN: u64 = 16 * KIB;

/// The importer sides, by name.
pub(crate) fn roles<B: Backend>() -> Vec<Role<B>> {
    vec![
        Role {
            name: "round_trip",
            run: round_trip_importer::<B>,
        },
        Role {
            name: "cached_piece",
            run: cached_piece_importer::<B>,
        },
        Role {
            name: "import_twice",
            run: import_twice_importer::<B>,
        },
        Role {
            name: "oversized_handle",
            run: oversized_importer::<B>,
        },
    ]
}

fn receive(peer: &UnixStream) -> Result<(SharedMemory, Option<gpuhal_hal::SharedEvent>), Failure> {
    receive_shared(peer).during("receiving the exporter's handle")
}

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Sharing;
    let ipc = Capabilities::IPC;
    vec![
        Case::new(
            "export_import_round_trip_ordered_by_a_shared_event",
            area,
            ipc,
            round_trip::<B>,
        ),
        Case::new(
            "export_of_a_cached_piece_names_its_own_bytes",
            area,
            ipc,
            cached_piece::<B>,
        ),
        Case::new(
            "export_needs_memory_from_the_exportable_pool",
            area,
            ipc,
            needs_exportable_pool::<B>,
        ),
        Case::new(
            "dropping_an_import_leaves_the_exporters_buffer",
            area,
            ipc,
            import_drop_keeps_exporter::<B>,
        ),
        Case::new(
            "a_handle_naming_bytes_past_its_allocation_is_refused",
            area,
            ipc,
            oversized_handle::<B>,
        ),
    ]
}

fn round_trip<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let exporter = device.create_stream().during("creating the exporter's stream")?;
    let len = ROUND_TRIP_LEN;
    let data = pattern(len as usize, 81);
    let buffer = device
        .allocate(len, MemoryKind::Device, &exporter)
        .during("allocating")?;
    exporter
        .write(&buffer, 0, &data)
        .during("filling the exported buffer")?;
    let (ready, ready_handle) = device.shared_event().during("making an interprocess event")?;
    ready.record(&exporter).during("recording it after the fill")?;
    let handle = device.export(&buffer).during("exporting the buffer")?;
    ensure_eq!(handle.len, len, "the exported length");
    ctx.with_importer(&device, "round_trip", |peer| {
        send_shared(peer, &handle, Some(&ready_handle)).during("sending the handle and the event")?;
        expect(peer, ANSWERED, "the importer's answer")?;
        exporter
            .wait_event(&ready)
            .during("the exporter waiting on the importer's record of the shared event")?;
        let back = read_back::<B>(&exporter, &buffer, 0, len as usize)?;
        let mut expected = pattern(len as usize / 2, 82);
        expected.extend_from_slice(&data[len as usize / 2..]);
        ensure_bytes(&back, &expected, "the exporter's buffer after the importer's answer")?;
        send(peer, CHECKED, "that the answer was checked")?;
        expect(peer, RELEASED, "the importer releasing its import")
    })
}

fn round_trip_importer<B: Backend>(device: &B::Device, peer: &UnixStream) -> Result<(), Failure> {
    let len = ROUND_TRIP_LEN;
    let (handle, event) = receive(peer)?;
    let event = event.ok_or_else(|| Failure::new("the handle came without its interprocess event"))?;
    let stream = device.create_stream().during("creating the importer's stream")?;
    let imported = device.import_shared(&handle).during("importing the buffer")?;
    ensure_eq!(imported.len(), len, "the imported length");
    let ready = device.import_event(&event).during("importing the event")?;
    stream.wait_event(&ready).during("waiting on the exporter's event")?;
    let seen = read_back::<B>(&stream, &imported, 0, len as usize)?;
    ensure_bytes(
        &seen,
        &pattern(len as usize, 81),
        "the importer's view of the exported buffer",
    )?;
    // The answer goes in by a stream-ordered copy, so only the shared event orders the
    // exporter's read after it.
    let answer = pattern(len as usize / 2, 82);
    let staging = device
        .allocate(answer.len() as u64, MemoryKind::Device, &stream)
        .during("allocating the importer's own buffer")?;
    stream
        .write(&staging, 0, &answer)
        .during("filling the importer's buffer")?;
    stream
        .copy(&staging, 0, &imported, 0, answer.len() as u64)
        .during("the importer copying its answer into the imported buffer")?;
    ready
        .record(&stream)
        .during("the importer recording the shared event")?;
    send(peer, ANSWERED, "that the answer is enqueued")?;
    expect(peer, CHECKED, "the exporter's check")?;
    stream.synchronize().during("finishing the importer's work")?;
    drop(imported);
    drop(ready);
    send(peer, RELEASED, "that the import is released")
}

fn cached_piece<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let stream = device.create_stream().during("creating a stream")?;
    // Small buffers are usually pieces of one native allocation: the handle must carry
    // the piece's offset, not the allocation's start.
    let neighbour = device
        .allocate(PIECE_LEN, MemoryKind::Device, &stream)
        .during("allocating")?;
    let buffer = device
        .allocate(PIECE_LEN, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream
        .fill(&neighbour, 0, PIECE_LEN, 0x99)
        .during("filling the neighbour")?;
    let data = pattern(PIECE_LEN as usize, 83);
    stream.write(&buffer, 0, &data).during("filling the buffer")?;
    stream.synchronize().during("synchronizing")?;
    let handle = device.export(&buffer).during("exporting")?;
    ensure_eq!(handle.offset, buffer.region().native_offset, "the handle's offset");
    ctx.with_importer(&device, "cached_piece", |peer| {
        send_shared(peer, &handle, None).during("sending the handle")?;
        expect(peer, RELEASED, "the importer checking and releasing the piece")
    })
}

fn cached_piece_importer<B: Backend>(device: &B::Device, peer: &UnixStream) -> Result<(), Failure> {
    let (handle, _) = receive(peer)?;
    let stream = device.create_stream().during("creating a stream")?;
    let imported = device.import_shared(&handle).during("importing")?;
    let seen = read_back::<B>(&stream, &imported, 0, PIECE_LEN as usize)?;
    ensure_bytes(&seen, &pattern(PIECE_LEN as usize, 83), "the imported piece")?;
    drop(imported);
    send(peer, RELEASED, "that the piece is released")
}

fn needs_exportable_pool<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    // The device under test was opened without sharing: its memory is not exportable.
    let stream = ctx.stream()?;
    let plain = ctx
        .device()
        .allocate(4 * KIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    ensure!(
        ctx.device().export(&plain).is_err(),
        "a buffer of a device opened without sharing was exported"
    );
    let device = ctx.sharing_device()?;
    let stream = device.create_stream().during("creating a stream")?;
    let empty = device
        .allocate(0, MemoryKind::Device, &stream)
        .during("allocating zero bytes")?;
    ensure!(device.export(&empty).is_err(), "a zero-size buffer was exported");
    if device.capabilities().contains(Capabilities::MANAGED) {
        let managed = device
            .allocate(4 * KIB, MemoryKind::Managed, &stream)
            .during("allocating managed memory")?;
        ensure!(device.export(&managed).is_err(), "managed memory was exported");
    }
    Ok(())
}

fn import_drop_keeps_exporter<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let stream = device.create_stream().during("creating a stream")?;
    let data = pattern(DROP_LEN as usize, 84);
    let buffer = device
        .allocate(DROP_LEN, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.write(&buffer, 0, &data).during("filling")?;
    stream.synchronize().during("synchronizing")?;
    let handle = device.export(&buffer).during("exporting")?;
    ctx.with_importer(&device, "import_twice", |peer| {
        send_shared(peer, &handle, None).during("sending the handle")?;
        expect(peer, DROPPED, "the importer dropping its first import")?;
        let kept = read_back::<B>(&stream, &buffer, 0, data.len())?;
        ensure_bytes(&kept, &data, "the exporter's buffer after the import was dropped")?;
        stream
            .fill(&buffer, 0, 16, 0x5c)
            .during("the exporter still writing its buffer")?;
        stream.synchronize().during("finishing the exporter's write")?;
        send(peer, CHANGED, "that the buffer changed")?;
        expect(peer, RELEASED, "the importer checking a second import")
    })
}

fn import_twice_importer<B: Backend>(device: &B::Device, peer: &UnixStream) -> Result<(), Failure> {
    let (handle, _) = receive(peer)?;
    let stream = device.create_stream().during("creating a stream")?;
    let first = device.import_shared(&handle).during("importing")?;
    let seen = read_back::<B>(&stream, &first, 0, DROP_LEN as usize)?;
    ensure_bytes(&seen, &pattern(DROP_LEN as usize, 84), "the first import")?;
    drop(first);
    send(peer, DROPPED, "that the first import is dropped")?;
    expect(peer, CHANGED, "the exporter's write")?;
    let second = device
        .import_shared(&handle)
        .during("importing the same handle again")?;
    let again = read_back::<B>(&stream, &second, 0, 16)?;
    ensure_bytes(&again, &[0x5c; 16], "a second import of the same handle")?;
    drop(second);
    send(peer, RELEASED, "that the second import is released")
}

fn oversized_handle<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let stream = device.create_stream().during("creating a stream")?;
    let buffer = device
        .allocate(PIECE_LEN, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.fill(&buffer, 0, PIECE_LEN, 0x21).during("filling")?;
    stream.synchronize().during("synchronizing")?;
    let mut handle = device.export(&buffer).during("exporting")?;
    // A handle that claims more than the exporter's allocation holds must not give the
    // importer a region reaching past it.
    handle.len += 1 << 40;
    ctx.with_importer(&device, "oversized_handle", |peer| {
        send_shared(peer, &handle, None).during("sending the handle")?;
        expect(peer, RELEASED, "the importer trying the handle")
    })?;
    let kept = read_back::<B>(&stream, &buffer, 0, 16)?;
    ensure_bytes(&kept, &[0x21; 16], "the exporter's buffer after a refused import")
}

fn oversized_importer<B: Backend>(device: &B::Device, peer: &UnixStream) -> Result<(), Failure> {
    let (handle, _) = receive(peer)?;
    ensure!(
        device.import_shared(&handle).is_err(),
        "a handle naming {} bytes at offset {} was imported",
        handle.len,
        handle.offset
    );
    send(peer, RELEASED, "that the import was refused")
}
