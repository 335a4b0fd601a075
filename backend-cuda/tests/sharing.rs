//! Sharing on a real GPU: exportable pools, a second process importing, interprocess
//! events, and peer access on a machine with one GPU (its errors).
//!
//! Reported as ignored with no CUDA driver; `GPUHAL_REQUIRE_GPU=1` makes that a failure.
//! The two-process test starts this binary again as the importer (the environment
//! variable [`IMPORTER_SOCKET`] tells it so).

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use gpuhal_cuda::{driver_available, CudaDevice};
use gpuhal_hal::handle_transfer::{receive_shared, send_shared};
use gpuhal_hal::{
    AsRegion, Capabilities, Device, Error, Event, MemoryKind, PoolConfig, PoolHandle, SegmentStrategy, Stream,
};

/// Set in the child process: the exporter's socket.
const IMPORTER_SOCKET: &str = "GPUHAL_TEST_IMPORTER_SOCKET";
const LEN: u64 = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(5) as u8)
        .collect()
}

fn shared_device() -> CudaDevice {
    match CudaDevice::open_shared(0, PoolConfig::default()) {
        Ok(device) => device,
        Err(err) => panic!("CUDA device 0 did not open with sharing enabled: {err}"),
    }
}

fn plain_device() -> CudaDevice {
    match CudaDevice::open(0) {
        Ok(device) => device,
        Err(err) => panic!("CUDA device 0 did not open: {err}"),
    }
}

fn gpu_ipc_is_reported_and_export_needs_a_sharing_device() {
    let plain = plain_device();
    assert!(
        plain.capabilities().contains(Capabilities::IPC),
        "an H100/H200 driver supports file-descriptor pool handles: {:?}",
        plain.attributes()
    );
    assert!(!plain.sharing_enabled());
    let stream = plain.create_stream().unwrap();
    let buffer = plain.allocate(4096, MemoryKind::Device, &stream).unwrap();
    let err = plain.export(&buffer).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("open_shared"),
        "{err}"
    );

    let shared = shared_device();
    assert!(shared.sharing_enabled());
    let stream = shared.create_stream().unwrap();
    let buffer = shared.allocate(LEN, MemoryKind::Device, &stream).unwrap();
    let handle = shared.export(&buffer).unwrap();
    assert_eq!(
        (handle.backend, handle.len, handle.offset),
        ("cuda", LEN, buffer.region().native_offset)
    );
    assert!(matches!(handle.pool, PoolHandle::Fd(_)), "{:?}", handle.pool);
    let managed = shared.allocate(4096, MemoryKind::Managed, &stream).unwrap();
    assert!(shared.export(&managed).is_err(), "managed memory was exported");
    let empty = shared.allocate(0, MemoryKind::Device, &stream).unwrap();
    assert!(shared.export(&empty).is_err(), "a zero-size buffer was exported");

    let growable = CudaDevice::open_shared(
        0,
        PoolConfig {
            segments: SegmentStrategy::Growable,
            ..Default::default()
        },
    );
    assert!(growable.is_err(), "sharing opened over growable segments");
}

fn gpu_shared_events_order_streams_in_one_process() {
    let device = shared_device();
    let (a, b) = (device.create_stream().unwrap(), device.create_stream().unwrap());
    let (event, handle) = device.shared_event().unwrap();
    assert_eq!(handle.backend, "cuda");
    assert!(!event.has_timing());
    let buffer = device.allocate(LEN, MemoryKind::Device, &a).unwrap();
    let data = pattern(LEN as usize);
    let source = device.allocate(LEN, MemoryKind::Device, &a).unwrap();
    a.write(&source, 0, &data).unwrap();
    a.copy(&source, 0, &buffer, 0, LEN).unwrap();
    event.record(&a).unwrap();
    b.wait_event(&event).unwrap();
    let mut seen = vec![0u8; LEN as usize];
    b.read(&buffer, 0, &mut seen).unwrap();
    assert_eq!(seen, data);
    event.synchronize().unwrap();
    assert!(event.is_complete().unwrap());
}

/// What the driver does when the exporting process imports its own handle, said in the
/// log: either a working import or a clear error, never a crash.
fn gpu_import_in_the_exporting_process_works_or_is_refused_clearly() {
    let device = shared_device();
    let stream = device.create_stream().unwrap();
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).unwrap();
    stream.fill(&buffer, 0, LEN, 0x6b).unwrap();
    stream.synchronize().unwrap();
    let handle = device.export(&buffer).unwrap();
    match device.import_shared(&handle) {
        Ok(imported) => {
            let mut seen = vec![0u8; 64];
            stream.read(&imported, 0, &mut seen).unwrap();
            assert_eq!(seen, vec![0x6b; 64]);
            eprintln!("the driver imports a pool in the process that exported it");
        }
        Err(err) => {
            assert!(matches!(err, Error::Native { .. }), "{err}");
            eprintln!("the driver refuses a pool import in the exporting process: {err}");
        }
    }
    let (_event, event_handle) = device.shared_event().unwrap();
    match device.import_event(&event_handle) {
        Ok(_) => eprintln!("the driver opens an interprocess event in the process that made it"),
        Err(err) => eprintln!("the driver refuses an interprocess event in the process that made it: {err}"),
    }
}

fn gpu_two_processes_share_a_buffer_ordered_by_events() {
    let device = shared_device();
    let stream = device.create_stream().unwrap();
    let data = pattern(LEN as usize);
    let buffer = device.allocate(LEN, MemoryKind::Device, &stream).unwrap();
    stream.write(&buffer, 0, &data).unwrap();
    let (ready, ready_handle) = device.shared_event().unwrap();
    ready.record(&stream).unwrap();
    let handle = device.export(&buffer).unwrap();

    let path = std::env::temp_dir().join(format!("gpuhal-cuda-sharing-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(IMPORTER_SOCKET, &path)
        .spawn()
        .unwrap();
    let (peer, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&path);
    peer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    send_shared(&peer, &handle, Some(&ready_handle)).unwrap();
    let mut message = [0u8];
    std::io::Read::read_exact(&mut &peer, &mut message).expect("the importer stopped before answering");
    assert_eq!(message, [1], "the importer's answer");
    stream.wait_event(&ready).unwrap();
    let mut back = vec![0u8; LEN as usize];
    stream.read(&buffer, 0, &mut back).unwrap();
    assert!(
        back[..4096].iter().all(|&b| b == 0xe7),
        "the importer's answer is not in the buffer"
    );
    assert_eq!(&back[4096..], &data[4096..], "bytes past the answer changed");
    std::io::Write::write_all(&mut &peer, &[2]).unwrap();
    std::io::Read::read_exact(&mut &peer, &mut message).expect("the importer stopped before releasing");
    assert_eq!(message, [3], "the importer's release");
    let status = child.wait().unwrap();
    assert!(status.success(), "the importer process failed: {status}");
}

/// The child process of [`gpu_two_processes_share_a_buffer_ordered_by_events`].
fn serve_importer(socket: &str) -> std::process::ExitCode {
    let peer = UnixStream::connect(socket).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let device = shared_device();
    let (handle, event) = receive_shared(&peer).unwrap();
    let stream = device.create_stream().unwrap();
    let imported = device.import_shared(&handle).unwrap();
    let ready = device
        .import_event(&event.expect("the event came with the handle"))
        .unwrap();
    stream.wait_event(&ready).unwrap();
    let mut seen = vec![0u8; LEN as usize];
    stream.read(&imported, 0, &mut seen).unwrap();
    if seen != pattern(LEN as usize) {
        eprintln!("the importer's view of the exported buffer differs");
        return std::process::ExitCode::FAILURE;
    }
    let answer = device.allocate(4096, MemoryKind::Device, &stream).unwrap();
    stream.fill(&answer, 0, 4096, 0xe7).unwrap();
    stream.copy(&answer, 0, &imported, 0, 4096).unwrap();
    ready.record(&stream).unwrap();
    std::io::Write::write_all(&mut &peer, &[1]).unwrap();
    let mut message = [0u8];
    std::io::Read::read_exact(&mut &peer, &mut message).unwrap();
    stream.synchronize().unwrap();
    drop(imported);
    drop(ready);
    std::io::Write::write_all(&mut &peer, &[3]).unwrap();
    std::process::ExitCode::SUCCESS
}

fn gpu_peer_access_with_one_gpu_names_both_devices() {
    let (first, second) = (plain_device(), plain_device());
    assert!(!first.can_access_peer(&second), "a device is no peer of itself");
    let err = first.enable_peer_access(&second).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // Two openings of one GPU do not mix buffers: a foreign handle, not peer access.
    let (a, b) = (first.create_stream().unwrap(), second.create_stream().unwrap());
    let mine = first.allocate(4096, MemoryKind::Device, &a).unwrap();
    let theirs = second.allocate(4096, MemoryKind::Device, &b).unwrap();
    let err = a.copy(&theirs, 0, &mine, 0, 4096).unwrap_err();
    assert!(matches!(err, Error::ForeignHandle { .. }), "{err}");
    let other_event = second.event(false).unwrap();
    other_event.record(&b).unwrap();
    let err = a.wait_event(&other_event).unwrap_err();
    assert!(matches!(err, Error::ForeignHandle { .. }), "{err}");
    let peers = first.capabilities().contains(Capabilities::PEER_ACCESS);
    eprintln!("PEER_ACCESS reported: {peers}");
}

fn main() -> std::process::ExitCode {
    if let Ok(socket) = std::env::var(IMPORTER_SOCKET) {
        return serve_importer(&socket);
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = vec![
        gpu_test(
            "gpu_ipc_is_reported_and_export_needs_a_sharing_device",
            gpu_ipc_is_reported_and_export_needs_a_sharing_device,
        ),
        gpu_test(
            "gpu_shared_events_order_streams_in_one_process",
            gpu_shared_events_order_streams_in_one_process,
        ),
        gpu_test(
            "gpu_import_in_the_exporting_process_works_or_is_refused_clearly",
            gpu_import_in_the_exporting_process_works_or_is_refused_clearly,
        ),
        gpu_test(
            "gpu_two_processes_share_a_buffer_ordered_by_events",
            gpu_two_processes_share_a_buffer_ordered_by_events,
        ),
        gpu_test(
            "gpu_peer_access_with_one_gpu_names_both_devices",
            gpu_peer_access_with_one_gpu_names_both_devices,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// Why GPU tests cannot run here, or `None` when they can (or must).
fn skip_reason() -> Option<&'static str> {
    let required = std::env::var("GPUHAL_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if required || driver_available() {
        None
    } else {
        Some("skipped: no CUDA driver found")
    }
}

fn gpu_test(name: &'static str, body: fn()) -> libtest_mimic::Trial {
    libtest_mimic::Trial::ignorable_test(name, move || match skip_reason() {
        Some(reason) => Ok(libtest_mimic::Completion::ignored_with(reason)),
        None => {
            body();
            Ok(libtest_mimic::Completion::Completed)
        }
    })
}
