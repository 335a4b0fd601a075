//! The mock as a checker: misuse is an error naming both sides, and nothing else is lost.

use gpuhal_hal::pool::NativeMemory;
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
