//! What the operating system says about a host range before a backend hands it to a
//! driver for import: the file mappings it lies in.
//!
//! Drivers treat file-backed memory differently from anonymous memory, and some fail at
//! it in ways that cannot be undone: CUDA driver 580 never returned from registering a
//! private read-only mapping of a file on disk, and NVIDIA's Vulkan driver, after refusing
//! to import a file mapping, failed later allocations too. A backend asks
//! [`file_mappings`] first and keeps such ranges from the driver; which mappings it avoids
//! is its own rule.
//!
//! ```
//! let heap = vec![0u8; 1 << 16];
//! let start = heap.as_ptr() as u64;
//! // Heap memory is anonymous: no file mapping overlaps it.
//! assert!(gpuhal_hal::host_mapping::file_mappings(start, start + heap.len() as u64).is_empty());
//! ```

/// A mapping of a file that overlaps the range asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    /// The mapped file's path as the kernel reports it (may end in " (deleted)").
    pub path: String,
    /// `MAP_PRIVATE` (copy-on-write) rather than `MAP_SHARED`.
    pub private: bool,
    /// Mapped with `PROT_WRITE`.
    pub writable: bool,
    /// The file is on tmpfs (`/dev/shm`, say), whose pages are shared memory rather than
    /// a disk file's page cache. False when the path cannot be asked about.
    pub on_tmpfs: bool,
}

/// The file mappings that overlap `start..end`. Empty for anonymous memory, and where
/// the system cannot say (no `/proc/self/maps`: not Linux).
pub fn file_mappings(start: u64, end: u64) -> Vec<FileMapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    file_mappings_in(&maps, start, end, on_tmpfs)
}

/// [`file_mappings`] over the text of a maps file; `on_tmpfs` says whether a mapped
/// file's path is on tmpfs.
fn file_mappings_in(maps: &str, start: u64, end: u64, on_tmpfs: impl Fn(&str) -> bool) -> Vec<FileMapping> {
    maps.lines()
        .filter_map(MapsLine::parse)
        .filter(|line| line.start < end && start < line.end && line.inode != 0)
        .map(|line| FileMapping {
            path: line.path.to_string(),
            private: line.private,
            writable: line.writable,
            on_tmpfs: on_tmpfs(line.path),
        })
        .collect()
}

/// One line of `/proc/self/maps`: `start-end perms offset dev inode path`.
struct MapsLine<'a> {
    start: u64,
    end: u64,
    writable: bool,
    private: bool,
    inode: u64,
    path: &'a str,
}

impl<'a> MapsLine<'a> {
    fn parse(line: &'a str) -> Option<MapsLine<'a>> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.as_bytes();
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?.parse().ok()?;
        Some(MapsLine {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            writable: perms.get(1) == Some(&b'w'),
            private: perms.get(3) == Some(&b'p'),
            inode,
            path: fields.next().map_or("", str::trim),
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
    stats.f_type == libc::TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1311 /usr/bin/app
7f0000000000-7f0000201000 r--p 00000000 fd:01 4242                     /data/model.safetensors
7f0000300000-7f0000501000 r--s 00000000 fd:01 4243 /data/shared.bin
7f0000600000-7f0000801000 r--p 00000000 00:1a 77 /dev/shm/weights
7f0000900000-7f0000b00000 rw-p 00000000 00:00 0 
7f0000c00000-7f0000e01000 r--p 00000000 fd:01 4244 /data/gone (deleted)
";

    fn mappings(start: u64, end: u64) -> Vec<FileMapping> {
        file_mappings_in(MAPS, start, end, |path| path.starts_with("/dev/shm/"))
    }

    #[test]
    fn each_overlapping_file_mapping_is_reported_as_mapped() {
        let found = mappings(0x7f00_0000_1000, 0x7f00_0060_1000);
        let described: Vec<(&str, bool, bool, bool)> = found
            .iter()
            .map(|m| (m.path.as_str(), m.private, m.writable, m.on_tmpfs))
            .collect();
        assert_eq!(
            described,
            [
                ("/data/model.safetensors", true, false, false),
                ("/data/shared.bin", false, false, false),
                ("/dev/shm/weights", true, false, true),
            ]
        );
        assert_eq!(
            mappings(0x7f00_00c0_0000, 0x7f00_00c0_1000)[0].path,
            "/data/gone (deleted)"
        );
    }

    #[test]
    fn anonymous_memory_and_ranges_that_only_touch_a_mapping_report_none() {
        assert_eq!(mappings(0x7f00_0090_0000, 0x7f00_00b0_0000), [], "anonymous heap");
        // Ends exactly where the file mapping starts, starts exactly where one ends.
        assert_eq!(mappings(0x7eff_ffff_f000, 0x7f00_0000_0000), []);
        assert_eq!(mappings(0x7f00_0020_1000, 0x7f00_0030_0000), []);
    }

    #[test]
    fn the_live_process_maps_parse_and_a_real_file_mapping_is_found() {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            eprintln!("skipped: no /proc/self/maps on this system");
            return;
        };
        let parsed = maps.lines().filter_map(MapsLine::parse).count();
        assert_eq!(parsed, maps.lines().count(), "every line of the live maps parses");
        // The test binary's own code is a private, read-only file mapping.
        let code = the_live_process_maps_parse_and_a_real_file_mapping_is_found as *const () as usize as u64;
        let found = file_mappings(code, code + 1);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].private && !found[0].writable, "{found:?}");
    }
}
