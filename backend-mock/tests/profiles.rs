//! Profiles: what each imitated platform can do, and how host import follows it.

use gpuhal_hal::{Capabilities, Device, Error, GraphPool, ImportPath, ImportPolicy, Location, MemoryKind, Stream};
use gpuhal_mock::{MockBackend, MockDevice, Profile};

#[test]
fn names_round_trip_and_unknown_names_are_refused() {
    for profile in Profile::ALL {
        assert_eq!(Profile::from_name(profile.name()), Some(profile));
        assert_eq!(profile.name().parse::<Profile>().unwrap(), profile);
    }
    assert_eq!(Profile::from_name("h100"), None);
    assert!("h100".parse::<Profile>().is_err());
}

#[test]
fn capabilities_follow_the_platform() {
    let discrete = Profile::Discrete.capabilities();
    assert!(discrete.contains(Capabilities::HOST_REGISTER | Capabilities::MANAGED | Capabilities::GRAPHS));
    assert!(!discrete.contains(Capabilities::PAGEABLE_ACCESS));
    let coherent = Profile::Coherent.capabilities();
    assert!(coherent.contains(Capabilities::PAGEABLE_ACCESS | Capabilities::MANAGED_ADVICE));
    assert!(!coherent.contains(Capabilities::HOST_REGISTER));
    let minimal = Profile::Minimal.capabilities();
    assert!(minimal.contains(Capabilities::TIMELINE_FENCE | Capabilities::TIMING_EVENTS));
    assert!(minimal
        .intersection(Capabilities::MANAGED | Capabilities::GRAPHS | Capabilities::HOST_REGISTER)
        .is_empty());
    for profile in Profile::ALL {
        let device = MockDevice::with_profile(profile).unwrap();
        assert_eq!(device.capabilities(), profile.capabilities());
        assert_eq!(device.info().name, format!("mock ({})", profile.name()));
        assert_eq!(device.info().backend, "mock");
    }
}

#[test]
fn each_profile_imports_host_memory_by_its_cheapest_path() {
    let host = vec![1u8; 8192];
    for (profile, path) in [
        (Profile::Discrete, ImportPath::Registered),
        (Profile::Coherent, ImportPath::Coherent),
        (Profile::Minimal, ImportPath::Copied),
    ] {
        let device = MockDevice::with_profile(profile).unwrap();
        let stream = device.create_stream().unwrap();
        let import = device.import_host(&host, ImportPolicy::ANY, &stream).unwrap();
        assert_eq!(import.path(), path, "{profile}");
        let copied = device.import_stats().copied_bytes;
        assert_eq!(copied, if path == ImportPath::Copied { 8192 } else { 0 }, "{profile}");
    }
}

#[test]
fn a_refused_import_names_every_path_and_why() {
    let device = MockDevice::with_profile(Profile::Coherent).unwrap();
    let stream = device.create_stream().unwrap();
    let host = vec![0u8; 4096];
    let policy = ImportPolicy {
        allow_coherent: false,
        ..ImportPolicy::ZERO_COPY
    };
    let err = device.import_host(&host, policy, &stream).unwrap_err();
    let Error::ImportRefused { len, reason } = &err else {
        panic!("expected a refusal, got {err}")
    };
    assert_eq!(*len, 4096);
    assert!(reason.contains("coherent") && reason.contains("policy"), "{reason}");
    assert!(
        reason.contains("registered") && reason.contains("HOST_REGISTER"),
        "{reason}"
    );
    assert!(reason.contains("copied") && reason.contains("allow_copy"), "{reason}");
    assert_eq!(device.import_stats().refused, 1);
}

#[test]
fn a_coherent_import_records_its_prefetch() {
    let device = MockDevice::with_profile(Profile::Coherent).unwrap();
    let stream = device.create_stream().unwrap();
    let host = vec![0u8; 4096];
    let policy = ImportPolicy {
        prefetch_coherent: true,
        ..ImportPolicy::ZERO_COPY
    };
    let import = device.import_host(&host, policy, &stream).unwrap();
    assert_eq!(
        import.device_address(),
        host.as_ptr() as u64,
        "coherent imports use the host address"
    );
    assert_eq!(device.import_prefetch(&import), Some(Location::Device));
}

#[test]
fn minimal_devices_refuse_managed_memory_and_graphs() {
    let device = MockDevice::with_profile(Profile::Minimal).unwrap();
    let stream = device.create_stream().unwrap();
    assert!(matches!(
        device.allocate(4096, MemoryKind::Managed, &stream),
        Err(Error::Unsupported { .. })
    ));
    let pool: GraphPool<MockBackend> = device.graph_pool();
    assert!(matches!(stream.begin_capture(&pool), Err(Error::Unsupported { .. })));
    assert!(!stream.is_capturing());
}
