//! Two devices of one machine: peer access and its errors, cross-device copies, and
//! events recorded on one device ordering another device's stream.
//!
//! The cases open their own pair ([`Context::device_pair`]); a runner with one device
//! skips them, saying why.

use std::time::Duration;

use gpuhal_hal::{Backend, Capabilities, Device, Error, Event, Fence, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, OpenOnDrop, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, expect_error};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::MultiDevice;
    let none = Capabilities::empty();
    vec![
        Case::new(
            "peer_copy_needs_access_and_the_error_names_both_devices",
            area,
            none,
            peer_copy_needs_access::<B>,
        ),
        Case::new("peer_access_is_one_directional", area, none, one_directional::<B>),
        Case::new(
            "event_of_one_device_orders_another_devices_stream",
            area,
            none,
            cross_device_event::<B>,
        ),
        Case::new(
            "cross_device_copy_keeps_stream_order_on_both_sides",
            area,
            none,
            cross_device_copy_order::<B>,
        ),
    ]
}

/// Two devices that can be peers, or a skip saying what they lack.
fn peers<B: Backend>(ctx: &Context<B>) -> Result<(B::Device, B::Device), Failure> {
    let (a, b) = ctx.device_pair()?;
    for device in [&a, &b] {
        if !device.capabilities().contains(Capabilities::PEER_ACCESS) {
            return Err(Failure::skip(format!(
                "device {} ({}) lacks PEER_ACCESS",
                device.id(),
                device.info().name
            )));
        }
    }
    if !a.can_access_peer(&b) || !b.can_access_peer(&a) {
        return Err(Failure::skip(format!(
            "devices {} and {} cannot access each other's memory",
            a.id(),
            b.id()
        )));
    }
    Ok((a, b))
}

/// A stream on each device and a buffer of `len` bytes on each: `on_b`'s buffer is the
/// source the cases copy from, `on_a`'s the target.
struct PeerBuffers<B: Backend> {
    on_a: B::Stream,
    on_b: B::Stream,
    source: gpuhal_hal::Buffer<B>,
    target: gpuhal_hal::Buffer<B>,
}

fn peer_buffers<B: Backend>(a: &B::Device, b: &B::Device, len: u64) -> Result<PeerBuffers<B>, Failure> {
    let on_a = a.create_stream().during("creating a stream on the first device")?;
    let on_b = b.create_stream().during("creating a stream on the second device")?;
    let source = b
        .allocate(len, MemoryKind::Device, &on_b)
        .during("allocating on the second device")?;
    let target = a
        .allocate(len, MemoryKind::Device, &on_a)
        .during("allocating on the first device")?;
    Ok(PeerBuffers {
        on_a,
        on_b,
        source,
        target,
    })
}

fn peer_copy_needs_access<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let (a, b) = peers(ctx)?;
    let len = MIB;
    let data = pattern(len as usize, 61);
    let PeerBuffers {
        on_a,
        on_b,
        source,
        target,
    } = peer_buffers::<B>(&a, &b, len)?;
    on_b.write(&source, 0, &data).during("writing the source")?;
    on_b.synchronize().during("synchronizing the second device's stream")?;
    let err = expect_error!(
        on_a.copy(&source, 0, &target, 0, len),
        Error::PeerAccess { .. },
        "a copy from a peer before enable_peer_access"
    );
    let message = err.to_string();
    for device in [&a, &b] {
        ensure!(
            message.contains(&format!("device {}", device.id())),
            "the peer access error does not name device {}: {message}",
            device.id()
        );
    }
    a.enable_peer_access(&b).during("enabling peer access")?;
    a.enable_peer_access(&b).during("enabling peer access a second time")?;
    on_a.copy(&source, 0, &target, 0, len).during("copying from the peer")?;
    let copied = read_back::<B>(&on_a, &target, 0, len as usize)?;
    ensure_bytes(&copied, &data, "the buffer copied from the peer")
}

fn one_directional<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let (a, b) = peers(ctx)?;
    let PeerBuffers {
        on_a,
        on_b,
        source: theirs,
        target: ours,
    } = peer_buffers::<B>(&a, &b, 4096)?;
    on_a.fill(&ours, 0, 4096, 1)
        .during("filling the first device's buffer")?;
    on_b.fill(&theirs, 0, 4096, 2)
        .during("filling the second device's buffer")?;
    on_a.synchronize().during("synchronizing")?;
    on_b.synchronize().during("synchronizing")?;
    a.enable_peer_access(&b)
        .during("enabling the first device's access to the second")?;
    expect_error!(
        on_b.copy(&ours, 0, &theirs, 0, 4096),
        Error::PeerAccess { .. },
        "the second device copying from the first, which gave it no access"
    );
    // The refused copy changed nothing.
    let kept = read_back::<B>(&on_b, &theirs, 0, 4096)?;
    ensure_bytes(&kept, &[2; 4096], "the second device's buffer after a refused copy")?;
    b.enable_peer_access(&a).during("enabling the other direction")?;
    on_b.copy(&ours, 0, &theirs, 0, 4096)
        .during("copying with access both ways")?;
    let copied = read_back::<B>(&on_b, &theirs, 0, 4096)?;
    ensure_bytes(&copied, &[1; 4096], "the copy once both directions are enabled")
}

fn cross_device_event<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let (a, b) = ctx.device_pair()?;
    if !b.capabilities().contains(Capabilities::TIMELINE_FENCE) {
        return Err(Failure::skip(
            "the second device lacks TIMELINE_FENCE, used to hold its stream",
        ));
    }
    let on_a = a.create_stream().during("creating a stream on the first device")?;
    let on_b = b.create_stream().during("creating a stream on the second device")?;
    let gate = b.create_fence(0).during("creating a gate fence")?;
    let _open = OpenOnDrop::<B>::new(&gate, 1);
    let buffer = a.allocate(4096, MemoryKind::Device, &on_a).during("allocating")?;
    // The second device's stream is held at the gate, so its event stays pending.
    on_b.wait(&gate, 1).during("holding the second device's stream")?;
    let theirs = b.event(false).during("an event of the second device")?;
    theirs.record(&on_b).during("recording it")?;
    on_a.wait_event(&theirs)
        .during("the first device's stream waiting on it")?;
    on_a.fill(&buffer, 0, 4096, 7).during("work after the wait")?;
    let ours = a.event(false).during("an event of the first device")?;
    ours.record(&on_a).during("recording after the work")?;
    std::thread::sleep(Duration::from_millis(50));
    ensure!(
        !ours.is_complete().during("querying the first device's event")?,
        "the first device's stream ran past a wait on the second device's pending event"
    );
    gate.signal(1).during("opening the gate")?;
    ours.synchronize().during("waiting for the first device's work")?;
    ensure!(
        theirs.is_complete().during("querying the second device's event")?,
        "the first device's work completed before the event it waited on"
    );
    let filled = read_back::<B>(&on_a, &buffer, 0, 4096)?;
    ensure_bytes(&filled, &[7; 4096], "the work ordered after the cross-device wait")
}

fn cross_device_copy_order<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let (a, b) = peers(ctx)?;
    a.enable_peer_access(&b).during("enabling peer access")?;
    let len = MIB;
    let first = pattern(len as usize, 71);
    let PeerBuffers {
        on_a,
        on_b,
        source,
        target,
    } = peer_buffers::<B>(&a, &b, len)?;
    on_b.write(&source, 0, &first).during("writing the source")?;
    let written = b.event(false).during("an event of the second device")?;
    written.record(&on_b).during("recording after the write")?;
    on_a.wait_event(&written).during("ordering the copy after the write")?;
    on_a.copy(&source, 0, &target, 0, len).during("copying from the peer")?;
    let copied = a.event(false).during("an event of the first device")?;
    copied.record(&on_a).during("recording after the copy")?;
    // The second device overwrites its buffer only after the copy read it.
    on_b.wait_event(&copied)
        .during("ordering the overwrite after the copy")?;
    on_b.fill(&source, 0, len, 0xee).during("overwriting the source")?;
    let target_bytes = read_back::<B>(&on_a, &target, 0, len as usize)?;
    ensure_bytes(&target_bytes, &first, "the copy, ordered before the overwrite")?;
    let source_bytes = read_back::<B>(&on_b, &source, 0, len as usize)?;
    ensure_bytes(
        &source_bytes,
        &vec![0xee; len as usize],
        "the source after the overwrite",
    )
}
