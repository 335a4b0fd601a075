//! Export and import of device memory, ordered by interprocess events.
//!
//! The exporter and the importer are two sides within this one process: the importer
//! opens the handle on the exporter's device (as a second process on the same GPU would).
//! A run across two processes is not part of this suite yet.

use gpuhal_hal::{AsRegion, Backend, Capabilities, Device, Event, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, KIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

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
    ]
}

fn round_trip<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let exporter = device.create_stream().during("creating the exporter's stream")?;
    let importer = device.create_stream().during("creating the importer's stream")?;
    let len = 64 * KIB;
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

    let imported = device.import_shared(&handle).during("importing the buffer")?;
    ensure_eq!(imported.len(), len, "the imported length");
    let ready_there = device.import_event(&ready_handle).during("importing the event")?;
    importer
        .wait_event(&ready_there)
        .during("waiting on the exporter's event")?;
    let seen = read_back::<B>(&importer, &imported, 0, len as usize)?;
    ensure_bytes(&seen, &data, "the importer's view of the exported buffer")?;
    let answer = pattern(len as usize / 2, 82);
    importer
        .write(&imported, 0, &answer)
        .during("the importer writing its answer")?;
    ready_there.record(&importer).during("the importer signalling")?;
    exporter
        .wait_event(&ready)
        .during("the exporter waiting on the importer")?;
    let back = read_back::<B>(&exporter, &buffer, 0, len as usize)?;
    let mut expected = answer;
    expected.extend_from_slice(&data[len as usize / 2..]);
    ensure_bytes(&back, &expected, "the exporter's buffer after the importer's answer")?;
    importer.synchronize().during("finishing the importer's work")?;
    drop(imported);
    Ok(())
}

fn cached_piece<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.sharing_device()?;
    let stream = device.create_stream().during("creating a stream")?;
    // Small buffers are usually pieces of one native allocation: the handle must carry
    // the piece's offset, not the allocation's start.
    let neighbour = device
        .allocate(4 * KIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    let buffer = device
        .allocate(4 * KIB, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream
        .fill(&neighbour, 0, 4 * KIB, 0x99)
        .during("filling the neighbour")?;
    let data = pattern(4 * KIB as usize, 83);
    stream.write(&buffer, 0, &data).during("filling the buffer")?;
    stream.synchronize().during("synchronizing")?;
    let handle = device.export(&buffer).during("exporting")?;
    ensure_eq!(handle.offset, buffer.region().native_offset, "the handle's offset");
    let imported = device.import_shared(&handle).during("importing")?;
    let seen = read_back::<B>(&stream, &imported, 0, data.len())?;
    ensure_bytes(&seen, &data, "the imported piece")
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
    let data = pattern(16 * KIB as usize, 84);
    let buffer = device
        .allocate(data.len() as u64, MemoryKind::Device, &stream)
        .during("allocating")?;
    stream.write(&buffer, 0, &data).during("filling")?;
    stream.synchronize().during("synchronizing")?;
    let handle = device.export(&buffer).during("exporting")?;
    let first = device.import_shared(&handle).during("importing")?;
    let seen = read_back::<B>(&stream, &first, 0, data.len())?;
    ensure_bytes(&seen, &data, "the first import")?;
    drop(first);
    let kept = read_back::<B>(&stream, &buffer, 0, data.len())?;
    ensure_bytes(&kept, &data, "the exporter's buffer after the import was dropped")?;
    stream
        .fill(&buffer, 0, 16, 0x5c)
        .during("the exporter still writing its buffer")?;
    let second = device.import_shared(&handle).during("importing again")?;
    let again = read_back::<B>(&stream, &second, 0, 16)?;
    ensure_bytes(&again, &[0x5c; 16], "a second import of the same handle")
}
