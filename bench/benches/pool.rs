//! Criterion micro benchmarks of the caching pool's hit path and churn: over no-op native
//! memory (the pool alone) and, with the `mock` feature, over the mock backend.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpuhal_bench::noop::pool_alone;
use gpuhal_bench::suite::{ChurnPlan, CHURN_LIVE, HIT_SIZES};
use gpuhal_hal::MemoryKind;

/// Replays a churn plan one replacement (a free and an allocate) per iteration.
fn churn_loop<T>(c: &mut Criterion, group_name: &str, mut allocate: impl FnMut(u64) -> T) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(2));
    for (name, plan) in [
        ("random", ChurnPlan::random(0x5EED)),
        ("recurring", ChurnPlan::recurring(0x5EED)),
    ] {
        let mut live: Vec<Option<T>> = plan.initial.iter().map(|&size| Some(allocate(size))).collect();
        assert_eq!(live.len(), CHURN_LIVE);
        let mut cursor = 0;
        group.bench_function(BenchmarkId::new("replace", name), |b| {
            b.iter(|| {
                let (slot, size) = plan.steps[cursor];
                cursor = (cursor + 1) % plan.steps.len();
                live[slot] = None;
                live[slot] = Some(allocate(black_box(size)));
            })
        });
    }
    group.finish();
}

fn pool_alone_hit(c: &mut Criterion) {
    let (_allocator, cache) = pool_alone();
    let mut group = c.benchmark_group("pool-alone/hit");
    for (size, _, words) in HIT_SIZES {
        drop(
            cache
                .allocate(size, MemoryKind::Device)
                .expect("no-op native memory never fails"),
        );
        group.bench_function(BenchmarkId::new("allocate+drop", words), |b| {
            b.iter(|| black_box(cache.allocate(black_box(size), MemoryKind::Device)))
        });
    }
    group.finish();
}

fn pool_alone_churn(c: &mut Criterion) {
    let (_allocator, cache) = pool_alone();
    churn_loop(c, "pool-alone/churn", |size| {
        cache
            .allocate(size, MemoryKind::Device)
            .expect("no-op native memory never fails")
    });
}

#[cfg(feature = "mock")]
mod mock {
    use super::*;
    use gpuhal_hal::Device;
    use gpuhal_mock::Profile;

    pub fn hit(c: &mut Criterion) {
        let device = gpuhal_bench::mock::open(Profile::Discrete, false).expect("the mock device opens");
        let stream = device.create_stream().expect("the mock creates streams");
        let mut group = c.benchmark_group("mock/hit");
        for (size, _, words) in HIT_SIZES {
            drop(device.allocate(size, MemoryKind::Device, &stream));
            group.bench_function(BenchmarkId::new("allocate+drop", words), |b| {
                b.iter(|| black_box(device.allocate(black_box(size), MemoryKind::Device, &stream)))
            });
        }
        group.finish();
    }

    pub fn churn(c: &mut Criterion) {
        let device = gpuhal_bench::mock::open(Profile::Discrete, false).expect("the mock device opens");
        let stream = device.create_stream().expect("the mock creates streams");
        churn_loop(c, "mock/churn", |size| {
            device
                .allocate(size, MemoryKind::Device, &stream)
                .expect("the mock's 16 GiB hold the churn's live set")
        });
    }
}

#[cfg(feature = "mock")]
criterion_group!(benches, pool_alone_hit, pool_alone_churn, mock::hit, mock::churn);
#[cfg(not(feature = "mock"))]
criterion_group!(benches, pool_alone_hit, pool_alone_churn);
criterion_main!(benches);
