//! Whether this machine can run the Vulkan backend: a Vulkan loader (`libvulkan.so.1`)
//! and at least one installable client driver (an ICD manifest, such as lavapipe's).
//!
//! Checked from the file system rather than by opening a device, so `cargo xtask ci`
//! can say exactly what is missing before it builds anything.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What was found: the loader and the driver manifests.
#[derive(Debug)]
pub struct VulkanSetup {
    /// Where the loader library is.
    pub loader: PathBuf,
    /// ICD manifests (one per driver).
    pub drivers: Vec<PathBuf>,
}

/// The loader and drivers, or why the Vulkan backend cannot run here.
pub fn detect() -> Result<VulkanSetup, String> {
    let loader = find_loader().ok_or_else(|| {
        "no Vulkan loader (libvulkan.so.1) found; on Debian/Ubuntu: apt-get install libvulkan1".to_string()
    })?;
    let drivers = driver_manifests();
    if drivers.is_empty() {
        return Err(format!(
            "a Vulkan loader is installed ({}) but no driver manifest (ICD) was found; \
             for the CPU driver lavapipe: apt-get install mesa-vulkan-drivers",
            loader.display()
        ));
    }
    Ok(VulkanSetup { loader, drivers })
}

impl std::fmt::Display for VulkanSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .drivers
            .iter()
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        write!(f, "loader {}, drivers: {}", self.loader.display(), names.join(", "))
    }
}

const LOADER: &str = "libvulkan.so.1";

/// Where `libvulkan.so.1` is, if installed.
pub fn find_loader() -> Option<PathBuf> {
    find_library(LOADER)
}

/// Where the shared library `name` (a soname such as `libvulkan.so.1`) is, if installed.
pub fn find_library(name: &str) -> Option<PathBuf> {
    // ldconfig knows the dynamic linker's own search path; the directories below cover
    // machines where it is not on PATH.
    if let Ok(output) = Command::new("ldconfig").arg("-p").output() {
        let listing = String::from_utf8_lossy(&output.stdout);
        let found = listing
            .lines()
            .filter(|line| line.trim_start().starts_with(name))
            .filter_map(|line| line.rsplit("=> ").next())
            .map(|path| PathBuf::from(path.trim()))
            .find(|path| path.exists());
        if found.is_some() {
            return found;
        }
    }
    let from_env = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let standard = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ];
    let found = from_env
        .split(':')
        .filter(|dir| !dir.is_empty())
        .chain(standard)
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists());
    found
}

fn driver_manifests() -> Vec<PathBuf> {
    // The loader reads VK_DRIVER_FILES (or the older VK_ICD_FILENAMES) instead of the
    // standard directories when either is set; do the same.
    for variable in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        if let Ok(list) = std::env::var(variable) {
            let listed: Vec<PathBuf> = list
                .split(':')
                .filter(|entry| !entry.is_empty())
                .flat_map(|entry| manifests_at(Path::new(entry)))
                .collect();
            if !list.is_empty() {
                return listed;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(config_home) = std::env::var("XDG_CONFIG_HOME") {
        dirs.push(Path::new(&config_home).join("vulkan/icd.d"));
    }
    if let Ok(home) = std::env::var("HOME") {
        dirs.push(Path::new(&home).join(".local/share/vulkan/icd.d"));
    }
    for dir in [
        "/etc/xdg/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
        "/usr/share/vulkan/icd.d",
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs.iter().flat_map(|dir| manifests_at(dir)).collect()
}

fn manifests_at(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    manifests.sort();
    manifests
}
