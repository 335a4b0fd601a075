//! Managed (unified) memory with a placement policy: what worked for large models on
//! Grace Hopper (GH200). Weights, under the prefetch threshold, are prefetched to the
//! device when allocated; KV-cache blocks, over it, fault in on demand; both prefer the
//! device and let the host read them without migrating pages back.
//!
//! Managed memory is opt-in: ordinary buffers should be `MemoryKind::Device` (stream
//! ordered), which is much faster as a default. `cargo run --example managed_policy` runs
//! on the mock; with `--features cuda` and an NVIDIA driver, on the GPU.

use std::error::Error;
use std::process::ExitCode;

use gpuhal::mock::{MockBackend, MockConfig, MockDevice, Profile};
use gpuhal::{Backend, Capabilities, Device, Location, ManagedPolicy, MemoryKind, Stream};

const WEIGHTS: u64 = 8 << 20;
const KV_BLOCK: u64 = 48 << 20;

fn run<B: Backend>(device: &B::Device) -> Result<(), Box<dyn Error>> {
    if !device.capabilities().contains(Capabilities::MANAGED) {
        println!(
            "managed_policy: {} has no managed memory; nothing to show",
            device.info().name
        );
        return Ok(());
    }
    // The default advice (PREFER_DEVICE | ACCESSED_BY_HOST), prefetching only allocations
    // under 16 MiB. Set it once, before allocating.
    let policy = ManagedPolicy {
        prefetch_below: 16 << 20,
        ..ManagedPolicy::default()
    };
    device.set_managed_policy(policy);

    let stream = device.create_stream()?;
    let weights = device.allocate(WEIGHTS, MemoryKind::Managed, &stream)?;
    let kv_block = device.allocate(KV_BLOCK, MemoryKind::Managed, &stream)?;
    // The prefetch is stream-ordered; wait for it before reading the placement back.
    stream.synchronize()?;
    for (name, buffer) in [("weights", &weights), ("kv block", &kv_block)] {
        let info = device.managed_range_info(buffer)?;
        println!(
            "managed_policy on {}: {name} ({} MiB): advice {:?}, prefetched to {:?}",
            device.info().name,
            buffer.len() >> 20,
            info.advice,
            info.last_prefetch
        );
        if !info.advice.contains(policy.advice) {
            return Err(format!("{name}: the policy's advice was not applied").into());
        }
    }
    if device.managed_range_info(&weights)?.last_prefetch != Some(Location::Device) {
        return Err("the weights, under the threshold, were not prefetched".into());
    }
    if device.managed_range_info(&kv_block)?.last_prefetch.is_some() {
        return Err("the KV block, over the threshold, was prefetched".into());
    }

    // Managed buffers are ordinary gpuhal buffers: streams fill, copy and read them.
    stream.fill(&weights, 0, WEIGHTS, 1)?;
    // Prefetch a block explicitly just before the step that uses it.
    device.prefetch(&kv_block, Location::Device, &stream)?;
    stream.copy(&weights, 0, &kv_block, 0, WEIGHTS)?;
    let mut head = vec![0; 4096];
    stream.read(&kv_block, 0, &mut head)?;
    if head.iter().any(|&b| b != 1) {
        return Err("the copy into the KV block read back wrong".into());
    }
    println!("  kv block prefetched before use, copy read back correct");
    Ok(())
}

fn main() -> ExitCode {
    #[cfg(feature = "cuda")]
    if gpuhal::cuda::driver_available() {
        return finish(
            gpuhal::cuda::CudaDevice::open(0)
                .map_err(Into::into)
                .and_then(|device| run::<gpuhal::cuda::CudaBackend>(&device)),
        );
    }
    if std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|value| value == "1") {
        eprintln!(
            "managed_policy: GPUHAL_REQUIRE_GPU=1, but no NVIDIA driver was found (or `cuda` is not compiled in)"
        );
        return ExitCode::FAILURE;
    }
    // The coherent profile stands in for a GH200.
    finish(
        MockDevice::open(MockConfig {
            profile: Profile::Coherent,
            ..Default::default()
        })
        .map_err(Into::into)
        .and_then(|device| run::<MockBackend>(&device)),
    )
}

fn finish(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("managed_policy: {error}");
            ExitCode::FAILURE
        }
    }
}
