//! Several mock devices of one machine: peer access, cross-device ordering and races,
//! export and import of memory and interprocess events, and who keeps shared memory alive.

use gpuhal_hal::{Capabilities, Device, Error, Event, MemoryKind, Stream};
use gpuhal_mock::{MockConfig, MockDevice, Profile};

fn pair() -> Vec<MockDevice> {
    MockDevice::open_machine(&[
        MockConfig::default(),
        MockConfig {
            ordinal: 1,
            ..MockConfig::default()
        },
    ])
    .unwrap()
}

fn sharing(ordinal: u32) -> MockConfig {
    MockConfig {
        ordinal,
        sharing: true,
        ..MockConfig::default()
    }
}

fn read(stream: &gpuhal_mock::MockStream, region: &dyn gpuhal_hal::AsRegion, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    stream.read(region, 0, &mut out).unwrap();
    out
}

#[test]
fn peer_access_is_reported_only_with_a_peer_and_not_on_minimal_devices() {
    let alone = MockDevice::with_profile(Profile::Discrete).unwrap();
    assert!(!alone.capabilities().contains(Capabilities::PEER_ACCESS));
    assert!(alone.capabilities().contains(Capabilities::IPC));
    let devices = pair();
    assert!(devices[0].capabilities().contains(Capabilities::PEER_ACCESS));
    assert!(devices[0].can_access_peer(&devices[1]));
    assert!(!devices[0].can_access_peer(&devices[0]));
    assert!(!devices[0].can_access_peer(&alone));
    let minimal = MockDevice::open_machine(&[
        MockConfig {
            profile: Profile::Minimal,
            ..MockConfig::default()
        },
        MockConfig::default(),
    ])
    .unwrap();
    assert!(!minimal[0]
        .capabilities()
        .contains(Capabilities::PEER_ACCESS | Capabilities::IPC));
    assert!(matches!(
        minimal[0].enable_peer_access(&minimal[1]),
        Err(Error::Unsupported {
            needed: Capabilities::PEER_ACCESS,
            ..
        })
    ));
}

#[test]
fn copy_from_a_peer_needs_access_and_the_error_names_both_devices() {
    let devices = pair();
    let (a, b) = (&devices[0], &devices[1]);
    let (on_a, on_b) = (a.create_stream().unwrap(), b.create_stream().unwrap());
    let source = b.allocate(4096, MemoryKind::Device, &on_b).unwrap();
    let target = a.allocate(4096, MemoryKind::Device, &on_a).unwrap();
    on_b.fill(&source, 0, 4096, 0x42).unwrap();
    on_b.synchronize().unwrap();
    let err = on_a.copy(&source, 0, &target, 0, 4096).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::PeerAccess { device, peer, possible: true, .. } if device == a.id().0 && peer == b.id().0),
        "{err:?}"
    );
    assert!(message.contains(&format!("device {}", a.id())) && message.contains(&format!("device {}", b.id())));
    a.enable_peer_access(b).unwrap();
    a.enable_peer_access(b).unwrap();
    on_a.copy(&source, 0, &target, 0, 4096).unwrap();
    assert_eq!(read(&on_a, &target, 4096), vec![0x42; 4096]);
    // One direction only: b's streams still cannot touch a's memory.
    assert!(matches!(
        on_b.copy(&target, 0, &source, 0, 16),
        Err(Error::PeerAccess { .. })
    ));
}

#[test]
fn devices_opened_separately_cannot_be_peers() {
    let a = MockDevice::with_profile(Profile::Discrete).unwrap();
    let b = MockDevice::with_profile(Profile::Discrete).unwrap();
    assert!(matches!(a.enable_peer_access(&b), Err(Error::Unsupported { .. })));
    let on_a = a.create_stream().unwrap();
    let on_b = b.create_stream().unwrap();
    let foreign = b.allocate(256, MemoryKind::Device, &on_b).unwrap();
    assert!(matches!(
        on_a.fill(&foreign, 0, 256, 1),
        Err(Error::ForeignHandle { .. })
    ));
    let event = b.event(false).unwrap();
    assert!(matches!(on_a.wait_event(&event), Err(Error::ForeignHandle { .. })));
}

#[test]
fn an_unsynchronised_cross_device_use_is_a_race_and_an_event_of_the_peer_orders_it() {
    let devices = pair();
    let (a, b) = (&devices[0], &devices[1]);
    a.enable_peer_access(b).unwrap();
    let (on_a, on_b) = (a.create_stream().unwrap(), b.create_stream().unwrap());
    let source = b.allocate(1 << 16, MemoryKind::Device, &on_b).unwrap();
    let target = a.allocate(1 << 16, MemoryKind::Device, &on_a).unwrap();
    on_b.fill(&source, 0, 1 << 16, 9).unwrap();
    let err = on_a.copy(&source, 0, &target, 0, 1 << 16).unwrap_err();
    assert!(matches!(err, Error::Race { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&on_b.id().to_string()) && message.contains(&on_a.id().to_string()),
        "{message}"
    );
    // An event recorded on device b, waited on by device a's stream, orders the copy.
    let filled = b.event(false).unwrap();
    filled.record(&on_b).unwrap();
    on_a.wait_event(&filled).unwrap();
    on_a.copy(&source, 0, &target, 0, 1 << 16).unwrap();
    // And the reverse: b overwriting its buffer while a's copy may still read it races.
    let err = on_b.fill(&source, 0, 16, 1).unwrap_err();
    assert!(matches!(err, Error::Race { .. }), "{err:?}");
    let copied = a.event(false).unwrap();
    copied.record(&on_a).unwrap();
    on_b.wait_event(&copied).unwrap();
    on_b.fill(&source, 0, 16, 1).unwrap();
    assert_eq!(read(&on_a, &target, 1 << 16), vec![9; 1 << 16]);
}

#[test]
fn a_hand_made_region_naming_one_device_but_pointing_into_another_is_refused() {
    let devices = pair();
    let (a, b) = (&devices[0], &devices[1]);
    let (on_a, on_b) = (a.create_stream().unwrap(), b.create_stream().unwrap());
    let theirs = b.allocate(256, MemoryKind::Device, &on_b).unwrap();
    let forged = gpuhal_hal::Region {
        device: a.id(),
        native: 0,
        ..gpuhal_hal::AsRegion::region(&theirs)
    };
    assert!(matches!(
        on_a.fill(&forged, 0, 256, 1),
        Err(Error::ForeignHandle { .. })
    ));
}

#[test]
fn export_import_round_trip_ordered_by_a_shared_event_on_one_device() {
    let device = MockDevice::open(sharing(0)).unwrap();
    let (exporter, importer) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    // A piece of a larger native allocation: the handle carries its offset.
    let first = device.allocate(1000, MemoryKind::Device, &exporter).unwrap();
    let buffer = device.allocate(4096, MemoryKind::Device, &exporter).unwrap();
    drop(first);
    exporter.fill(&buffer, 0, 4096, 0x11).unwrap();
    let handle = device.export(&buffer).unwrap();
    assert_eq!(handle.len, 4096);
    assert_eq!(handle.offset, gpuhal_hal::AsRegion::region(&buffer).native_offset);
    let (ready, ready_handle) = device.shared_event().unwrap();
    ready.record(&exporter).unwrap();

    let imported = device.import_shared(&handle).unwrap();
    assert_eq!(imported.len(), 4096);
    let ready_there = device.import_event(&ready_handle).unwrap();
    // Without waiting on the exporter's event the importer's read races its fill.
    let mut out = vec![0; 4096];
    assert!(matches!(importer.read(&imported, 0, &mut out), Err(Error::Race { .. })));
    importer.wait_event(&ready_there).unwrap();
    assert_eq!(read(&importer, &imported, 4096), vec![0x11; 4096]);
    importer.fill(&imported, 0, 2048, 0x22).unwrap();
    let answered = device.import_event(&ready_handle).unwrap();
    answered.record(&importer).unwrap();
    exporter.wait_event(&ready).unwrap();
    let mut expected = vec![0x22; 2048];
    expected.extend(vec![0x11; 2048]);
    assert_eq!(read(&exporter, &buffer, 4096), expected);
}

#[test]
fn another_device_imports_only_with_access_to_the_exporter() {
    let devices = MockDevice::open_machine(&[sharing(0), sharing(1)]).unwrap();
    let (a, b) = (&devices[0], &devices[1]);
    let on_a = a.create_stream().unwrap();
    let buffer = a.allocate(512, MemoryKind::Device, &on_a).unwrap();
    on_a.fill(&buffer, 0, 512, 5).unwrap();
    on_a.synchronize().unwrap();
    let handle = a.export(&buffer).unwrap();
    let err = b.import_shared(&handle).unwrap_err();
    assert!(
        matches!(err, Error::PeerAccess { device, peer, .. } if device == b.id().0 && peer == a.id().0),
        "{err:?}"
    );
    b.enable_peer_access(a).unwrap();
    let imported = b.import_shared(&handle).unwrap();
    let on_b = b.create_stream().unwrap();
    assert_eq!(read(&on_b, &imported, 512), vec![5; 512]);
    // A device of another machine cannot open the handle at all.
    let stranger = MockDevice::open(sharing(0)).unwrap();
    assert!(matches!(
        stranger.import_shared(&handle),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn export_needs_sharing_enabled_and_device_memory() {
    let plain = MockDevice::with_profile(Profile::Discrete).unwrap();
    let stream = plain.create_stream().unwrap();
    let buffer = plain.allocate(256, MemoryKind::Device, &stream).unwrap();
    let err = plain.export(&buffer).unwrap_err();
    assert!(err.to_string().contains("sharing enabled"), "{err}");
    let device = MockDevice::open(sharing(0)).unwrap();
    let stream = device.create_stream().unwrap();
    let managed = device.allocate(256, MemoryKind::Managed, &stream).unwrap();
    assert!(matches!(device.export(&managed), Err(Error::InvalidArgument { .. })));
    let empty = device.allocate(0, MemoryKind::Device, &stream).unwrap();
    assert!(matches!(device.export(&empty), Err(Error::InvalidArgument { .. })));
    let minimal = MockConfig {
        profile: Profile::Minimal,
        sharing: true,
        ..MockConfig::default()
    };
    assert!(matches!(
        MockDevice::open(minimal),
        Err(Error::Unsupported {
            needed: Capabilities::IPC,
            ..
        })
    ));
}

#[test]
fn the_exporter_keeps_shared_memory_alive_and_an_import_outliving_it_is_a_use_after_free() {
    let device = MockDevice::open(sharing(0)).unwrap();
    let (exporter, importer) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let buffer = device.allocate(4096, MemoryKind::Device, &exporter).unwrap();
    exporter.fill(&buffer, 0, 4096, 3).unwrap();
    exporter.synchronize().unwrap();
    let handle = device.export(&buffer).unwrap();
    let imported = device.import_shared(&handle).unwrap();
    // Dropping an import releases only the importer's side: the exporter's buffer is untouched.
    let second = device.import_shared(&handle).unwrap();
    drop(second);
    assert_eq!(read(&exporter, &buffer, 4096), vec![3; 4096]);
    assert_eq!(read(&importer, &imported, 4096), vec![3; 4096]);
    // The exporter releasing its buffer ends the memory for every importer.
    drop(buffer);
    let reused = device.allocate(4096, MemoryKind::Device, &exporter).unwrap();
    exporter.fill(&reused, 0, 4096, 8).unwrap();
    exporter.synchronize().unwrap();
    let mut out = vec![0; 4096];
    let err = importer.read(&imported, 0, &mut out).unwrap_err();
    assert!(matches!(err, Error::UseAfterFree { .. }), "{err:?}");
    assert!(err.to_string().contains("exporter must keep the buffer"), "{err}");
    // A region of a dropped import is refused too.
    let region = gpuhal_hal::AsRegion::region(&imported);
    drop(imported);
    assert!(matches!(
        importer.read(&region, 0, &mut out),
        Err(Error::UseAfterFree { .. })
    ));
    // And a handle whose buffer is gone cannot be imported any more.
    assert!(matches!(device.import_shared(&handle), Err(Error::UseAfterFree { .. })));
}

#[test]
fn a_shared_event_from_another_machine_or_backend_is_refused() {
    let device = MockDevice::open(sharing(0)).unwrap();
    let (_event, handle) = device.shared_event().unwrap();
    let other = MockDevice::open(sharing(0)).unwrap();
    assert!(matches!(
        other.import_event(&handle),
        Err(Error::InvalidArgument { .. })
    ));
    let forged = gpuhal_hal::SharedEvent {
        backend: "cuda",
        ..handle
    };
    assert!(matches!(
        device.import_event(&forged),
        Err(Error::BackendMismatch { .. })
    ));
}
