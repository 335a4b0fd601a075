//! What the operating system says about a host range before gpuhal asks the driver to
//! register it.
//!
//! On an H100 and an H200 with driver 580 (CUDA 13.0, Linux 6.x), `cuMemHostRegister` of a
//! private (`MAP_PRIVATE`), read-only mapping of a file on a disk filesystem (ext4) did
//! not return: the call was still running when killed after 8 s (H200) and 30 s (H100),
//! with and without `CU_MEMHOSTREGISTER_READ_ONLY`, with the pages faulted in or not. The
//! same file mapped `MAP_SHARED` registered in under a millisecond, as did a private
//! read-only mapping of a tmpfs file. A hung call cannot be recovered, so such ranges are
//! not offered to the driver at all: the import falls through to the next path and says
//! why.

/// Why registering `start..end` would hang the driver, or `None` when nothing says so.
/// Reads `/proc/self/maps`; where it cannot be read (not Linux), nothing is known.
pub(crate) fn register_hazard(start: u64, end: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    hazard_in(&maps, start, end, on_tmpfs)
}

/// [`register_hazard`] over the text of a maps file; `on_tmpfs` says whether a mapped
/// file's path is on tmpfs.
fn hazard_in(maps: &str, start: u64, end: u64, on_tmpfs: impl Fn(&str) -> bool) -> Option<String> {
    maps.lines().filter_map(Mapping::parse).find_map(|mapping| {
        let overlaps = mapping.start < end && start < mapping.end;
        let private_read_only_file = !mapping.writable && mapping.private && mapping.inode != 0;
        (overlaps && private_read_only_file && !on_tmpfs(mapping.path)).then(|| {
            format!(
                "the range lies in a private read-only mapping of {} (MAP_PRIVATE, PROT_READ, on a disk \
                 filesystem), which cuMemHostRegister did not return from on driver 580; map the file \
                 MAP_SHARED to import it by registration",
                if mapping.path.is_empty() {
                    "a file"
                } else {
                    mapping.path
                }
            )
        })
    })
}

/// One line of `/proc/self/maps`: `start-end perms offset dev inode path`.
struct Mapping<'a> {
    start: u64,
    end: u64,
    writable: bool,
    private: bool,
    inode: u64,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.as_bytes();
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?.parse().ok()?;
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            writable: perms.get(1) == Some(&b'w'),
            private: perms.get(3) == Some(&b'p'),
            inode,
            path: fields.next().unwrap_or("").trim(),
        })
    }
}

/// Whether `path` is on tmpfs. A path that cannot be asked about (deleted since it was
/// mapped, say) counts as not.
fn on_tmpfs(path: &str) -> bool {
    let Ok(path) = std::ffi::CString::new(path) else {
        return false;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` a writable statfs the call fills on success.
    let status = unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    // tmpfs (and `/dev/shm`): its private read-only mappings register.
    stats.f_type == libc::TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1311 /usr/bin/app
7f0000000000-7f0000201000 r--p 00000000 fd:01 4242 /data/model.safetensors
7f0000300000-7f0000501000 r--s 00000000 fd:01 4243 /data/shared.bin
7f0000600000-7f0000801000 r--p 00000000 00:1a 77 /dev/shm/weights
7f0000900000-7f0000b00000 rw-p 00000000 00:00 0 
7f0000c00000-7f0000e01000 r--p 00000000 fd:01 4244 /data/gone (deleted)
";

    fn hazard(start: u64, end: u64) -> Option<String> {
        hazard_in(MAPS, start, end, |path| path.starts_with("/dev/shm/"))
    }

    #[test]
    fn a_private_read_only_file_mapping_is_a_hazard_with_the_file_named() {
        let why = hazard(0x7f00_0000_1000, 0x7f00_0000_2000).unwrap_or_default();
        assert!(
            why.contains("/data/model.safetensors") && why.contains("MAP_SHARED"),
            "{why}"
        );
        // Overlapping only its last byte counts too.
        assert!(hazard(0x7f00_0020_0fff, 0x7f00_0030_0010).is_some());
        // A deleted file cannot be asked about its filesystem: counted as on disk.
        assert!(hazard(0x7f00_00c0_0000, 0x7f00_00c0_1000).is_some());
    }

    #[test]
    fn shared_tmpfs_and_anonymous_mappings_are_not() {
        assert_eq!(hazard(0x7f00_0030_0000, 0x7f00_0050_1000), None, "MAP_SHARED");
        assert_eq!(hazard(0x7f00_0060_0000, 0x7f00_0080_1000), None, "tmpfs");
        assert_eq!(hazard(0x7f00_0090_0000, 0x7f00_00b0_0000), None, "anonymous heap");
        // Ends exactly where the private file mapping starts: no overlap.
        assert_eq!(hazard(0x7eff_ffff_f000, 0x7f00_0000_0000), None);
    }

    #[test]
    fn the_live_process_maps_parse() {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            eprintln!("skipped: no /proc/self/maps on this system");
            return;
        };
        let parsed = maps.lines().filter_map(Mapping::parse).count();
        assert!(
            parsed > 0 && parsed == maps.lines().count(),
            "{parsed} of {} lines",
            maps.lines().count()
        );
        // The heap is private, writable and anonymous: never a hazard.
        let heap = vec![0u8; 1 << 20];
        let start = heap.as_ptr() as u64;
        assert_eq!(register_hazard(start, start + heap.len() as u64), None);
    }
}
