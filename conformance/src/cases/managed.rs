//! Managed memory: placement advice, prefetch and the managed policy, read back from the
//! device. Allocations stay small (well under any card's free memory) and never ask for
//! oversubscription.

use gpuhal_hal::{Advice, Backend, Capabilities, Device, Location, ManagedPolicy, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back, KIB, MIB};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure, ensure_eq};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::Managed;
    let managed = Capabilities::MANAGED;
    let advice = Capabilities::MANAGED | Capabilities::MANAGED_ADVICE;
    vec![
        Case::new("managed_round_trip", area, managed, managed_round_trip::<B>),
        Case::new("policy_round_trips", area, managed, policy_round_trips::<B>),
        Case::new("advice_read_back", area, advice, advice_read_back::<B>),
        Case::new("prefetch_read_back_keeps_data", area, advice, prefetch_read_back::<B>),
        Case::new(
            "policy_prefetches_only_below_threshold",
            area,
            advice,
            selective_prefetch::<B>,
        ),
        Case::new("policy_none_applies_nothing", area, advice, policy_none::<B>),
    ]
}

fn managed_round_trip<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let data = pattern(MIB as usize + 333, 13);
    let len = data.len() as u64;
    let managed = device
        .allocate(len, MemoryKind::Managed, &stream)
        .during("allocating managed memory")?;
    ensure_eq!(managed.kind(), MemoryKind::Managed, "kind");
    ensure!(
        managed.address() % 256 == 0,
        "managed buffer at {:#x} is not 256-byte aligned",
        managed.address()
    );
    let on_device = device
        .allocate(len, MemoryKind::Device, &stream)
        .during("allocating device memory")?;
    stream.write(&managed, 0, &data).during("writing managed memory")?;
    stream
        .copy(&managed, 0, &on_device, 0, len)
        .during("copying managed to device")?;
    stream.fill(&managed, 0, len, 0).during("clearing managed memory")?;
    stream
        .copy(&on_device, 0, &managed, 0, len)
        .during("copying device to managed")?;
    let read = read_back::<B>(&stream, &managed, 0, data.len())?;
    ensure_bytes(&read, &data, "managed memory after a round trip through device memory")
}

fn policy_round_trips<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    ensure!(
        !device.managed_policy().allow_oversubscription,
        "a fresh device allows managed oversubscription by default"
    );
    let policy = ManagedPolicy {
        advice: Advice::READ_MOSTLY | Advice::ACCESSED_BY_DEVICE,
        prefetch_below: 3 * MIB,
        allow_oversubscription: false,
    };
    device.set_managed_policy(policy);
    ensure_eq!(
        device.managed_policy(),
        policy,
        "policy read back after set_managed_policy"
    );
    Ok(())
}

fn advice_read_back<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    device.set_managed_policy(ManagedPolicy::NONE);
    let buffer = device
        .allocate(MIB, MemoryKind::Managed, &stream)
        .during("allocating managed memory")?;
    let wanted = Advice::PREFER_DEVICE | Advice::READ_MOSTLY | Advice::ACCESSED_BY_HOST;
    device.advise(&buffer, wanted).during("advising")?;
    let info = device.managed_range_info(&buffer).during("reading range info")?;
    ensure!(
        info.advice.contains(wanted),
        "advice read back: expected {wanted:?} to be in effect, got {:?}",
        info.advice
    );
    Ok(())
}

fn prefetch_read_back<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    device.set_managed_policy(ManagedPolicy::NONE);
    let data = pattern(2 * MIB as usize, 19);
    let buffer = device
        .allocate(data.len() as u64, MemoryKind::Managed, &stream)
        .during("allocating managed memory")?;
    stream.write(&buffer, 0, &data).during("writing")?;
    for to in [Location::Device, Location::Host, Location::Device] {
        device
            .prefetch(&buffer, to, &stream)
            .during(&format!("prefetching to {to:?}"))?;
        stream.synchronize().during("synchronising")?;
        let info = device.managed_range_info(&buffer).during("reading range info")?;
        ensure_eq!(info.last_prefetch, Some(to), "last prefetch location read back");
        let read = read_back::<B>(&stream, &buffer, 0, data.len())?;
        ensure_bytes(&read, &data, &format!("data after prefetching to {to:?}"))?;
    }
    Ok(())
}

fn selective_prefetch<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let advice = Advice::PREFER_DEVICE | Advice::ACCESSED_BY_HOST;
    let threshold = MIB;
    device.set_managed_policy(ManagedPolicy {
        advice,
        prefetch_below: threshold,
        allow_oversubscription: false,
    });
    let small = device
        .allocate(64 * KIB, MemoryKind::Managed, &stream)
        .during("allocating 64 KiB of managed memory")?;
    let large = device
        .allocate(4 * MIB, MemoryKind::Managed, &stream)
        .during("allocating 4 MiB of managed memory")?;
    stream.synchronize().during("synchronising")?;
    let small_info = device.managed_range_info(&small).during("reading the small range")?;
    let large_info = device.managed_range_info(&large).during("reading the large range")?;
    ensure_eq!(
        small_info.last_prefetch,
        Some(Location::Device),
        "prefetch of a 64 KiB allocation under a 1 MiB threshold"
    );
    ensure_eq!(
        large_info.last_prefetch,
        None,
        "prefetch of a 4 MiB allocation over a 1 MiB threshold"
    );
    for (what, info) in [("small", small_info), ("large", large_info)] {
        ensure!(
            info.advice.contains(advice),
            "policy advice on the {what} allocation: expected {advice:?}, got {:?}",
            info.advice
        );
    }
    Ok(())
}

fn policy_none<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    device.set_managed_policy(ManagedPolicy::NONE);
    let buffer = device
        .allocate(64 * KIB, MemoryKind::Managed, &stream)
        .during("allocating managed memory")?;
    stream.synchronize().during("synchronising")?;
    let info = device.managed_range_info(&buffer).during("reading range info")?;
    ensure_eq!(info.advice, Advice::empty(), "advice under ManagedPolicy::NONE");
    ensure_eq!(info.last_prefetch, None, "prefetch under ManagedPolicy::NONE");
    Ok(())
}
