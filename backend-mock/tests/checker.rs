//! The mock as a checker: misuse is an error naming both sides, and nothing else is lost.

use gpuhal_hal::pool::Allocator;
use gpuhal_hal::{AsRegion, Device, Error, Event, Fence, GraphExec, ImportPolicy, MemoryKind, Region, Stream};
use gpuhal_mock::{MockDevice, Profile};

fn device() -> MockDevice {
    MockDevice::with_profile(Profile::Discrete).unwrap()
}

#[test]
fn unsynchronised_read_after_write_names_both_streams_and_operations() {
    let device = device();
    let (writer, reader) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let buffer = device.allocate(4096, MemoryKind::Device, &writer).unwrap();
    writer.fill(&buffer, 0, 4096, 1).unwrap();
    let mut out = [0u8; 16];
    let err = reader.read(&buffer, 0, &mut out).unwrap_err();
    let Error::Race { first, second, .. } = &err else {
        panic!("expected a race, got {err}")
    };
    assert!(
        first.contains(&writer.id().to_string()) && first.contains("fill"),
        "{first}"
    );
    assert!(
        second.contains(&reader.id().to_string()) && second.contains("read"),
        "{second}"
    );

    // Nothing is lost: with an event between them the same read works.
    let done = device.event(false).unwrap();
    done.record(&writer).unwrap();
    reader.wait_event(&done).unwrap();
    reader.read(&buffer, 0, &mut out).unwrap();
    assert_eq!(out, [1; 16]);
}

#[test]
fn unsynchronised_write_after_read_is_a_race() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let source = device.allocate(512, MemoryKind::Device, &a).unwrap();
    let target = device.allocate(512, MemoryKind::Device, &a).unwrap();
    a.copy(&source, 0, &target, 0, 512).unwrap();
    let err = b.fill(&source, 0, 512, 9).unwrap_err();
    let Error::Race { first, second, .. } = &err else {
        panic!("expected a race, got {err}")
    };
    assert!(first.contains("reads") && first.contains("copy"), "{first}");
    assert!(second.contains("writes") && second.contains("fill"), "{second}");
}

#[test]
fn a_fence_orders_streams_even_when_the_wait_is_enqueued_before_the_signal() {
    let device = device();
    let (writer, reader) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let fence = device.create_fence(0).unwrap();
    let source = device.allocate(1024, MemoryKind::Device, &writer).unwrap();
    let target = device.allocate(1024, MemoryKind::Device, &reader).unwrap();
    reader.wait(&fence, 1).unwrap();
    reader.copy(&source, 0, &target, 0, 1024).unwrap();
    writer.fill(&source, 0, 1024, 5).unwrap();
    writer.signal(&fence, 1).unwrap();
    let mut out = vec![0u8; 1024];
    reader.read(&target, 0, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 5));
}

#[test]
fn host_synchronize_orders_later_work_on_other_streams() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let buffer = device.allocate(256, MemoryKind::Device, &a).unwrap();
    a.fill(&buffer, 0, 256, 3).unwrap();
    a.synchronize().unwrap();
    b.fill(&buffer, 0, 256, 4).unwrap();
}

#[test]
fn using_a_dropped_buffer_says_where_it_was_freed() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let buffer = device.allocate(1000, MemoryKind::Device, &stream).unwrap();
    let region = buffer.region();
    drop(buffer);
    let err = stream.fill(&region, 0, 1000, 0).unwrap_err();
    let Error::UseAfterFree {
        operation, freed_by, ..
    } = &err
    else {
        panic!("expected use after free, got {err}")
    };
    assert_eq!(*operation, "fill");
    assert!(
        freed_by.contains("drop") && freed_by.contains(&stream.id().to_string()),
        "{freed_by}"
    );
    // The allocator keeps working, and hands the block out afresh.
    let again = device.allocate(1000, MemoryKind::Device, &stream).unwrap();
    stream.fill(&again, 0, 1000, 1).unwrap();
}

#[test]
fn replaying_a_graph_whose_input_was_freed_is_refused() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let input = device.allocate(512, MemoryKind::Device, &stream).unwrap();
    let pool = device.graph_pool();
    let (graph, output) = stream
        .capture(&pool, |s| {
            let output = device.allocate(512, MemoryKind::Device, s)?;
            s.copy(&input, 0, &output, 0, 512)?;
            Ok(output)
        })
        .unwrap();
    let exec = gpuhal_hal::Graph::instantiate(&graph).unwrap();
    exec.launch(&stream).unwrap();
    drop(input);
    assert!(matches!(exec.launch(&stream), Err(Error::UseAfterFree { .. })));
    drop(output);
}

#[test]
fn handles_from_another_device_are_foreign() {
    let (one, two) = (device(), device());
    let stream_one = one.create_stream().unwrap();
    let stream_two = two.create_stream().unwrap();
    let buffer = one.allocate(256, MemoryKind::Device, &stream_one).unwrap();
    assert!(matches!(
        stream_two.fill(&buffer, 0, 256, 0),
        Err(Error::ForeignHandle { .. })
    ));
    let event = one.event(false).unwrap();
    assert!(matches!(event.record(&stream_two), Err(Error::ForeignHandle { .. })));
    let fence = one.create_fence(0).unwrap();
    assert!(matches!(stream_two.signal(&fence, 1), Err(Error::ForeignHandle { .. })));
    assert!(matches!(
        two.allocate(256, MemoryKind::Device, &stream_one),
        Err(Error::ForeignHandle { .. })
    ));
}

#[test]
fn a_native_double_free_is_reported() {
    let device = device();
    let native = device.allocator().native();
    let block = native.allocate(4096, MemoryKind::Device, None).unwrap();
    native.free(block, None).unwrap();
    assert!(matches!(native.free(block, None), Err(Error::DoubleFree { .. })));
}

#[test]
fn a_made_up_address_is_refused_not_dereferenced() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let bogus = Region {
        device: device.id(),
        address: 0x1000,
        len: 4096,
        native: 0,
        native_offset: 0,
        kind: MemoryKind::Device,
    };
    assert!(matches!(
        stream.fill(&bogus, 0, 4096, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let buffer = device.allocate(512, MemoryKind::Device, &stream).unwrap();
    let overlong = Region {
        len: 1 << 20,
        ..buffer.region()
    };
    assert!(matches!(
        stream.fill(&overlong, 0, 1 << 20, 0),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn imported_host_memory_is_read_only_and_dies_with_its_import() {
    let device = device();
    let stream = device.create_stream().unwrap();
    let host = vec![7u8; 4096];
    let import = device.import_host(&host, ImportPolicy::ZERO_COPY, &stream).unwrap();
    let region = import.region();
    assert!(matches!(
        stream.fill(&import, 0, 16, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let copy = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    stream.copy(&import, 0, &copy, 0, 4096).unwrap();
    drop(import);
    assert!(matches!(
        stream.copy(&region, 0, &copy, 0, 16),
        Err(Error::UseAfterFree { .. })
    ));
    let mut out = vec![0u8; 4096];
    stream.read(&copy, 0, &mut out).unwrap();
    assert_eq!(out, host);
}

#[test]
fn a_host_fence_wait_orders_later_work_after_the_signal() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let fence = device.create_fence(0).unwrap();
    let buffer = device.allocate(256, MemoryKind::Device, &a).unwrap();
    a.fill(&buffer, 0, 256, 1).unwrap();
    a.signal(&fence, 1).unwrap();
    fence.wait(1, std::time::Duration::from_secs(10)).unwrap();
    b.fill(&buffer, 0, 256, 2).unwrap();
}

#[test]
fn pieces_of_one_native_allocation_are_checked_apart() {
    let device = device();
    let stream = device.create_stream().unwrap();
    // An idle 2 MiB block is cut for the smaller requests that follow.
    drop(device.allocate(2 << 20, MemoryKind::Device, &stream).unwrap());
    let first = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let second = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let (a, b) = (first.region(), second.region());
    assert_eq!(a.native, b.native, "both are pieces of one native allocation");
    assert_eq!(b.native_offset, a.native_offset + 4096);
    assert_eq!(device.memory_stats().native_allocations, 1);
    // Each holds its own data.
    stream.fill(&first, 0, 4096, 1).unwrap();
    stream.fill(&second, 0, 4096, 2).unwrap();
    let mut out = vec![0u8; 4096];
    stream.read(&first, 0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 1));
    stream.read(&second, 0, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 2));
    // A returned piece is caught while its neighbour stays live and usable.
    drop(first);
    assert!(matches!(stream.fill(&a, 0, 4096, 0), Err(Error::UseAfterFree { .. })));
    stream.fill(&second, 0, 4096, 3).unwrap();
    drop(second);
    stream.synchronize().unwrap();
    assert_eq!(device.allocator().trim(), 2 << 20, "whole again, released as one");
}

// ----- memory handed out again while another stream still uses it -----

type MockBuffer = gpuhal_hal::pool::Buffer<gpuhal_mock::MockMemory>;
//
// Each misuse below is what a framework commits when it drops a buffer another stream
// still reads and lets the caching pool hand the memory out again; beside it, the same
// program made correct must pass.

/// Stream `a` fills `x`; an event orders `b` after it; `b` copies from `x` into a buffer
/// of its own. Returns `x` with the copy's destination.
fn read_on_other_stream(
    device: &MockDevice,
    a: &gpuhal_mock::MockStream,
    b: &gpuhal_mock::MockStream,
    len: u64,
) -> (MockBuffer, MockBuffer) {
    let x = device.allocate(len, MemoryKind::Device, a).unwrap();
    a.fill(&x, 0, len, 1).unwrap();
    let filled = device.event(false).unwrap();
    filled.record(a).unwrap();
    b.wait_event(&filled).unwrap();
    let copy = device.allocate(len, MemoryKind::Device, b).unwrap();
    b.copy(&x, 0, &copy, 0, len).unwrap();
    (x, copy)
}

/// The race between `b`'s read of the dropped buffer `old` and `a`'s write through the
/// buffer that reused its memory, with how the memory passed from one to the other.
fn assert_reuse_race(err: &Error, a: &gpuhal_mock::MockStream, b: &gpuhal_mock::MockStream, read_by: &str) {
    let Error::Race { first, second, .. } = err else {
        panic!("expected a race, got {err}")
    };
    let (a, b) = (a.id().to_string(), b.id().to_string());
    assert!(
        first.contains(&format!("last read on {b} by {read_by}"))
            && first.contains(&format!("handed out again on {a}")),
        "{first}"
    );
    assert!(
        second.contains("written by fill") && second.contains(&a) && second.contains("event"),
        "{second}"
    );
}

#[test]
fn a_buffer_dropped_while_another_stream_reads_it_races_with_the_reuse_of_its_memory() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let (x, _copy) = read_on_other_stream(&device, &a, &b, 4096);
    let address = x.address();
    drop(x);
    let y = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    assert_eq!(y.address(), address, "a cache hit: the same memory");
    let err = a.fill(&y, 0, 4096, 2).unwrap_err();
    assert_reuse_race(&err, &a, &b, "copy");
    let Error::Race { first, allocation, .. } = &err else {
        unreachable!()
    };
    assert!(
        first.contains(&format!("freed on {} by drop", a.id())) && first.contains("never declared with `record_use`"),
        "{first}"
    );
    // The old buffer's identity and the new one's are both named, and differ.
    assert!(
        first.starts_with("allocation #") && first.ends_with(&format!("as allocation #{allocation}")),
        "{first}"
    );
    assert!(!first.starts_with(&format!("allocation #{allocation} ")), "{first}");
}

#[test]
fn a_buffer_dropped_after_record_use_is_reused_without_a_race() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let (x, copy) = read_on_other_stream(&device, &a, &b, 4096);
    let address = x.address();
    x.record_use(b.cache());
    drop(x);
    // No host synchronisation: the pool alone holds the memory back until b has passed
    // its copy, then hands it out again. Other blocks are kept, so that each request
    // looks at the held-back one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut others = Vec::new();
    let y = loop {
        let y = device.allocate(4096, MemoryKind::Device, &a).unwrap();
        if y.address() == address {
            break y;
        }
        assert!(std::time::Instant::now() < deadline, "the memory never came back");
        others.push(y);
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    a.fill(&y, 0, 4096, 2).unwrap();
    a.synchronize().unwrap();
    let mut out = vec![0u8; 4096];
    b.read(&copy, 0, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 1), "b copied what a filled before the drop");
}

#[test]
fn a_buffer_dropped_once_an_event_orders_its_stream_after_the_read_is_reused_without_a_race() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let (x, copy) = read_on_other_stream(&device, &a, &b, 4096);
    let read = device.event(false).unwrap();
    read.record(&b).unwrap();
    a.wait_event(&read).unwrap();
    let address = x.address();
    drop(x);
    let y = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    assert_eq!(y.address(), address, "a cache hit: the same memory");
    a.fill(&y, 0, 4096, 2).unwrap();
    let mut out = vec![0u8; 4096];
    b.read(&copy, 0, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 1));
}

#[test]
fn a_split_piece_dropped_while_another_stream_reads_it_races_with_its_reuse() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    // An idle 2 MiB block is cut for the smaller requests that follow.
    drop(device.allocate(2 << 20, MemoryKind::Device, &a).unwrap());
    let (x, _copy) = read_on_other_stream(&device, &a, &b, 4096);
    let (address, native) = (x.address(), x.region().native);
    drop(x);
    // The piece merges back into its block; a larger piece cut there covers its bytes.
    let y = device.allocate(8192, MemoryKind::Device, &a).unwrap();
    assert_eq!(
        (y.address(), y.region().native),
        (address, native),
        "a piece of the same native allocation over the same bytes"
    );
    let err = a.fill(&y, 0, 8192, 2).unwrap_err();
    assert_reuse_race(&err, &a, &b, "copy");
}

#[test]
fn a_split_piece_dropped_after_record_use_is_reused_without_a_race() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    drop(device.allocate(2 << 20, MemoryKind::Device, &a).unwrap());
    let (x, _copy) = read_on_other_stream(&device, &a, &b, 4096);
    x.record_use(b.cache());
    drop(x);
    let y = device.allocate(8192, MemoryKind::Device, &a).unwrap();
    a.fill(&y, 0, 8192, 2).unwrap();
    b.synchronize().unwrap();
    let z = device.allocate(8192, MemoryKind::Device, &a).unwrap();
    a.fill(&z, 0, 8192, 3).unwrap();
    a.synchronize().unwrap();
}

#[test]
fn a_piece_cut_beside_bytes_another_stream_read_inherits_no_race() {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    drop(device.allocate(2 << 20, MemoryKind::Device, &a).unwrap());
    let x = device.allocate(8192, MemoryKind::Device, &a).unwrap();
    a.fill(&x, 0, 8192, 1).unwrap();
    let filled = device.event(false).unwrap();
    filled.record(&a).unwrap();
    b.wait_event(&filled).unwrap();
    let copy = device.allocate(4096, MemoryKind::Device, &b).unwrap();
    // b reads only the second half of x.
    b.copy(&x, 4096, &copy, 0, 4096).unwrap();
    let address = x.address();
    drop(x);
    let y = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    assert_eq!(y.address(), address, "cut over the half b did not read");
    a.fill(&y, 0, 4096, 2).unwrap();
    let z = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    assert_eq!(z.address(), address + 4096, "cut over the half b read");
    assert!(matches!(a.fill(&z, 0, 4096, 3), Err(Error::Race { .. })));
}

/// Captures a graph on `s` that allocates an output from `pool` and fills it.
fn capture_output(
    device: &MockDevice,
    s: &gpuhal_mock::MockStream,
    pool: &gpuhal_hal::GraphPool<gpuhal_mock::MockBackend>,
    value: u8,
) -> (gpuhal_mock::MockGraphExec, MockBuffer) {
    let (graph, output) = s
        .capture(pool, |s| {
            let output = device.allocate(4096, MemoryKind::Device, s)?;
            s.fill(&output, 0, 4096, value)?;
            Ok(output)
        })
        .unwrap();
    (gpuhal_hal::Graph::instantiate(&graph).unwrap(), output)
}

/// The first graph's output is read on `t` after an event; then the output is dropped
/// and a second capture on `s` takes the same pool range for its own output.
fn second_capture_over_read_output(
    ordered: bool,
) -> (gpuhal_mock::MockStream, gpuhal_mock::MockStream, gpuhal_hal::Result<()>) {
    let device = device();
    let (s, t) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let pool = device.graph_pool();
    let (first, output) = capture_output(&device, &s, &pool, 1);
    first.launch(&s).unwrap();
    let replayed = device.event(false).unwrap();
    replayed.record(&s).unwrap();
    t.wait_event(&replayed).unwrap();
    let copy = device.allocate(4096, MemoryKind::Device, &t).unwrap();
    t.copy(&output, 0, &copy, 0, 4096).unwrap();
    let address = output.address();
    drop(output);
    let (second, reused) = capture_output(&device, &s, &pool, 2);
    assert_eq!(reused.address(), address, "the second capture took the same pool range");
    if ordered {
        let read = device.event(false).unwrap();
        read.record(&t).unwrap();
        s.wait_event(&read).unwrap();
    }
    let launched = second.launch(&s);
    if launched.is_ok() {
        let mut out = vec![0u8; 4096];
        t.read(&copy, 0, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 1), "t copied the first graph's output");
    }
    (s, t, launched)
}

#[test]
fn a_graph_pool_range_reused_by_another_capture_races_with_a_read_of_the_first_output() {
    let (s, t, launched) = second_capture_over_read_output(false);
    let err = launched.unwrap_err();
    let Error::Race { first, second, .. } = &err else {
        panic!("expected a race, got {err}")
    };
    assert!(
        first.contains("graph pool")
            && first.contains(&format!("last read on {} by copy", t.id()))
            && first.contains(&format!("handed out again on {}", s.id())),
        "{first}"
    );
    assert!(
        second.contains("written by fill") && second.contains(&s.id().to_string()) && second.contains("event"),
        "{second}"
    );
}

#[test]
fn a_graph_pool_range_reused_after_an_event_orders_the_read_is_replayed_without_a_race() {
    let (_, _, launched) = second_capture_over_read_output(true);
    launched.unwrap();
}

/// A copied host import (the device copy is a pooled buffer) read on `b`, then dropped.
fn copied_import_read_on_other_stream(ordered: bool) -> gpuhal_hal::Result<()> {
    let device = device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let host = vec![7u8; 4096];
    let copy_only = ImportPolicy {
        allow_coherent: false,
        allow_registered: false,
        allow_copy: true,
        ..ImportPolicy::ANY
    };
    let import = device.import_host(&host, copy_only, &a).unwrap();
    assert_eq!(import.path(), gpuhal_hal::ImportPath::Copied);
    let imported = device.event(false).unwrap();
    imported.record(&a).unwrap();
    b.wait_event(&imported).unwrap();
    let copy = device.allocate(4096, MemoryKind::Device, &b).unwrap();
    b.copy(&import, 0, &copy, 0, 4096).unwrap();
    if ordered {
        let read = device.event(false).unwrap();
        read.record(&b).unwrap();
        a.wait_event(&read).unwrap();
    }
    let address = import.device_address();
    drop(import);
    let y = device.allocate(4096, MemoryKind::Device, &a).unwrap();
    assert_eq!(y.address(), address, "a cache hit on the import's device copy");
    let filled = a.fill(&y, 0, 4096, 0);
    if let Err(err) = &filled {
        assert_reuse_race(err, &a, &b, "copy");
    } else {
        let mut out = vec![0u8; 4096];
        b.read(&copy, 0, &mut out).unwrap();
        assert_eq!(out, host);
    }
    filled
}

#[test]
fn an_imported_host_range_dropped_while_another_stream_reads_it_races_with_its_reuse() {
    assert!(matches!(
        copied_import_read_on_other_stream(false),
        Err(Error::Race { .. })
    ));
}

#[test]
fn an_imported_host_range_dropped_after_an_event_orders_the_read_is_reused_without_a_race() {
    copied_import_read_on_other_stream(true).unwrap();
}
