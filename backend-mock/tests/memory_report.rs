//! The memory report of a fixed sequence on the mock, as a person and a program read it.
//!
//! Alone in its test binary: stream and device ids are process-wide counters, so they are
//! the same on every run only when nothing else in the process opens devices or streams.
//! The mock's addresses come from the host's mmap and differ between runs: they are
//! replaced before the comparison, and the sequence uses distinct sizes so that the
//! order (biggest first) does not depend on them.

use gpuhal_hal::{Device, MemoryKind, Stream};
use gpuhal_mock::MockDevice;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

#[test]
fn the_report_of_a_fixed_sequence_reads_the_same_on_every_run() {
    let device = MockDevice::open(Default::default()).unwrap();
    let first = device.create_stream().unwrap();
    let second = device.create_stream().unwrap();

    // An 8 MiB block returned, then cut for 7 MiB: a split allocation, 1 MiB idle.
    drop(device.allocate(8 * MIB, MemoryKind::Device, &first).unwrap());
    let activations = device.allocate(7 * MIB, MemoryKind::Device, &first).unwrap();
    let weights = device.allocate(3 * MIB, MemoryKind::Managed, &second).unwrap();
    // Used on the second stream too, then freed: pending on that stream's work.
    let staging = device.allocate(2 * MIB, MemoryKind::HostPinned, &first).unwrap();
    staging.record_use(second.cache());
    drop(staging);
    drop(device.allocate(512 * KIB, MemoryKind::Device, &second).unwrap());

    // A capture keeps one output and frees a temporary inside its graph pool.
    let pool = device.graph_pool();
    second.begin_capture(&pool).unwrap();
    let output = device.allocate(MIB, MemoryKind::Device, &second).unwrap();
    drop(device.allocate(256 * KIB, MemoryKind::Device, &second).unwrap());
    let _graph = second.end_capture().unwrap();

    let held = device.event(false).unwrap();
    drop(device.event(true).unwrap());

    let report = device.memory_report();
    assert_eq!(report.reserved_bytes, device.memory_stats().reserved_bytes);
    insta::with_settings!({ filters => vec![(r"0x[0-9a-f]{6,}", "[address]")] }, {
        insta::assert_snapshot!("display", report.to_string());
    });
    insta::assert_json_snapshot!("json", report, { ".allocations[].address" => "[address]" });
    drop((activations, weights, output, held));
}
