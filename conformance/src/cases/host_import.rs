//! Import of existing host memory (an mmap'd model file, say) by the cheapest path the
//! device offers, and never a silent copy.

use gpuhal_hal::{Backend, Capabilities, Device, Error, ImportPath, ImportPolicy, MemoryKind, Stream};

use super::{ensure_bytes, pattern, read_back};
use crate::case::{Area, Case, Context, Failure, ResultExt};
use crate::{ensure_eq, expect_error};

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    let area = Area::HostImport;
    let none = Capabilities::empty();
    vec![
        Case::new("default_policy_takes_the_cheapest_path", area, none, cheapest_path::<B>),
        Case::new(
            "coherent_when_pageable_access",
            area,
            Capabilities::PAGEABLE_ACCESS,
            coherent_import::<B>,
        ),
        Case::new(
            "coherent_with_prefetch",
            area,
            Capabilities::PAGEABLE_ACCESS,
            coherent_with_prefetch::<B>,
        ),
        Case::new(
            "registered_when_host_register",
            area,
            Capabilities::HOST_REGISTER,
            registered_import::<B>,
        ),
        Case::new("copy_refused_without_zero_copy_path", area, none, copy_refused::<B>),
        Case::new("copy_when_permitted_is_counted", area, none, copy_permitted::<B>),
        Case::new("unaligned_host_slice", area, none, unaligned_host_slice::<B>),
        Case::new(
            "read_only_file_mappings_import_promptly",
            area,
            none,
            read_only_file_mappings::<B>,
        ),
    ]
}

const IMPORT_LEN: usize = 256 * 1024 + 77;

/// Imports `host` under `policy`, checks the path and that the device reads the data
/// (through `stream.copy` into device memory) and that the path was counted.
fn import_and_check<B: Backend>(
    ctx: &Context<B>,
    host: &[u8],
    policy: ImportPolicy,
    expected: ImportPath,
) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let before = device.import_stats();
    let import = device
        .import_host(host, policy, &stream)
        .during(&format!("importing {} bytes expecting {expected:?}", host.len()))?;
    ensure_eq!(import.path(), expected, "import path");
    ensure_eq!(import.len(), host.len() as u64, "import length");
    let len = host.len() as u64;
    let on_device = device
        .allocate(len, MemoryKind::Device, &stream)
        .during("allocating device memory")?;
    stream
        .copy(&import, 0, &on_device, 0, len)
        .during("copying from the import")?;
    let read = read_back::<B>(&stream, &on_device, 0, host.len())?;
    ensure_bytes(&read, host, &format!("data read through a {expected:?} import"))?;
    let partial = read_back::<B>(&stream, &import, 1000, 5000)?;
    ensure_bytes(&partial, &host[1000..6000], "a range read directly from the import")?;
    let after = device.import_stats();
    let counted = match expected {
        ImportPath::Coherent => after.coherent - before.coherent,
        ImportPath::Registered => after.registered - before.registered,
        ImportPath::Copied => after.copied - before.copied,
    };
    ensure_eq!(counted, 1, "{expected:?} imports counted");
    if expected != ImportPath::Copied {
        ensure_eq!(
            after.copied_bytes,
            before.copied_bytes,
            "bytes copied by a zero-copy import"
        );
    }
    Ok(())
}

fn cheapest_path<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let host = pattern(IMPORT_LEN, 1);
    let capabilities = ctx.capabilities();
    if capabilities.contains(Capabilities::PAGEABLE_ACCESS) {
        import_and_check(ctx, &host, ImportPolicy::default(), ImportPath::Coherent)
    } else if capabilities.contains(Capabilities::HOST_REGISTER) {
        import_and_check(ctx, &host, ImportPolicy::default(), ImportPath::Registered)
    } else {
        let stream = ctx.stream()?;
        expect_error!(
            ctx.device().import_host(&host, ImportPolicy::default(), &stream),
            Error::ImportRefused { .. },
            "default (zero-copy) import on a device with neither pageable access nor host register"
        );
        ensure_eq!(ctx.device().import_stats().copied_bytes, 0, "bytes copied");
        Ok(())
    }
}

fn coherent_import<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let host = pattern(IMPORT_LEN, 2);
    // Coherent is cheapest: it wins even when every path is allowed.
    import_and_check(ctx, &host, ImportPolicy::ANY, ImportPath::Coherent)
}

fn coherent_with_prefetch<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let host = pattern(IMPORT_LEN, 3);
    let policy = ImportPolicy {
        prefetch_coherent: true,
        ..ImportPolicy::ZERO_COPY
    };
    import_and_check(ctx, &host, policy, ImportPath::Coherent)
}

fn registered_import<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let host = pattern(IMPORT_LEN, 4);
    let policy = if ctx.capabilities().contains(Capabilities::PAGEABLE_ACCESS) {
        // Coherent access would win; take it out to reach the registered path.
        ImportPolicy {
            allow_coherent: false,
            ..ImportPolicy::ZERO_COPY
        }
    } else {
        ImportPolicy::ZERO_COPY
    };
    import_and_check(ctx, &host, policy, ImportPath::Registered)
}

fn copy_refused<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let device = ctx.device();
    let stream = ctx.stream()?;
    let host = pattern(IMPORT_LEN, 5);
    let no_path = ImportPolicy {
        allow_coherent: false,
        prefetch_coherent: false,
        allow_registered: false,
        allow_copy: false,
    };
    let before = device.import_stats();
    let memory_before = device.memory_stats();
    let err = expect_error!(
        device.import_host(&host, no_path, &stream),
        Error::ImportRefused { .. },
        "importing with copy forbidden and no zero-copy path allowed"
    );
    if let Error::ImportRefused { len, .. } = err {
        ensure_eq!(len, host.len() as u64, "length in the error");
    }
    let after = device.import_stats();
    ensure_eq!(after.refused, before.refused + 1, "refused imports counted");
    ensure_eq!(after.copied, before.copied, "copied imports");
    ensure_eq!(after.copied_bytes, before.copied_bytes, "bytes copied");
    ensure_eq!(
        device.memory_stats().live_bytes,
        memory_before.live_bytes,
        "live device bytes after a refused import"
    );
    Ok(())
}

fn copy_permitted<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let host = pattern(IMPORT_LEN, 6);
    let copy_only = ImportPolicy {
        allow_coherent: false,
        prefetch_coherent: false,
        allow_registered: false,
        allow_copy: true,
    };
    let before = ctx.device().import_stats();
    import_and_check(ctx, &host, copy_only, ImportPath::Copied)?;
    let after = ctx.device().import_stats();
    ensure_eq!(
        after.copied_bytes - before.copied_bytes,
        host.len() as u64,
        "bytes counted as copied"
    );
    Ok(())
}

fn unaligned_host_slice<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let backing = pattern(IMPORT_LEN + 3, 7);
    // A tensor inside an mmap'd file rarely starts on a page boundary.
    let host = &backing[3..];
    let device = ctx.device();
    let stream = ctx.stream()?;
    let import = device
        .import_host(host, ImportPolicy::ANY, &stream)
        .during("importing an unaligned slice")?;
    ensure_eq!(import.len(), host.len() as u64, "import length");
    let read = read_back::<B>(&stream, &import, 0, host.len())?;
    ensure_bytes(
        &read,
        host,
        &format!("an unaligned slice imported by {:?}", import.path()),
    )
}

/// A temporary file mapped read-only, the way model weights arrive; unmapped and removed
/// on drop.
struct ReadOnlyFileMapping {
    address: *mut libc::c_void,
    len: usize,
    path: std::path::PathBuf,
}

impl ReadOnlyFileMapping {
    /// Writes `contents` to a new file in the temporary directory and maps it read-only,
    /// `MAP_SHARED` or `MAP_PRIVATE`.
    fn new(contents: &[u8], shared: bool) -> Result<ReadOnlyFileMapping, Failure> {
        use std::os::fd::AsRawFd;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gpuhal-conformance-{}-{serial}", std::process::id()));
        let written = std::fs::write(&path, contents).and_then(|()| std::fs::File::open(&path));
        let file =
            written.map_err(|err| Failure::skip(format!("cannot write a file in the temporary directory: {err}")))?;
        let sharing = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        // SAFETY: maps `contents.len()` bytes of the open file read-only at an address the kernel picks; unmapped in drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                contents.len(),
                libc::PROT_READ,
                sharing,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            let _ = std::fs::remove_file(&path);
            return Err(Failure::new(format!(
                "mmap of {} bytes failed: {}",
                contents.len(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(ReadOnlyFileMapping {
            address,
            len: contents.len(),
            path,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }
}

impl Drop for ReadOnlyFileMapping {
    fn drop(&mut self) {
        // SAFETY: `address` and `len` are the mapping made in `new`; no borrow of `bytes` outlives `self`.
        unsafe { libc::munmap(self.address, self.len) };
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read-only file mappings, shared and private, import by some path the policy allows and
/// read back exactly, without hanging: a driver that never returns from registering a
/// private read-only file mapping (CUDA driver 580 did) must be kept from trying.
fn read_only_file_mappings<B: Backend>(ctx: &Context<B>) -> Result<(), Failure> {
    let contents = pattern(IMPORT_LEN, 8);
    let device = ctx.device();
    let stream = ctx.stream()?;
    for shared in [true, false] {
        let what = if shared { "MAP_SHARED" } else { "MAP_PRIVATE" };
        let mapping = ReadOnlyFileMapping::new(&contents, shared)?;
        let import = device
            .import_host(mapping.bytes(), ImportPolicy::ANY, &stream)
            .during(&format!("importing a read-only {what} file mapping"))?;
        let read = read_back::<B>(&stream, &import, 0, contents.len())?;
        ensure_bytes(
            &read,
            &contents,
            &format!("a read-only {what} file mapping imported by {:?}", import.path()),
        )?;
    }
    Ok(())
}
