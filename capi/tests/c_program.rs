//! Compiles `tests/c/capi_test.c` with the system C compiler against the generated header
//! and the built library, and runs it on the mock backend.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the built libgpuhal_capi, found from this test's own executable
/// (`target/<profile>/deps/c_program-…`): cargo writes the library into `deps/` and copies
/// it up to `target/<profile>/` (not always before the tests start), so `deps/` is tried
/// first.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe
        .parent()
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf();
    if deps.join("libgpuhal_capi.so").exists() {
        deps
    } else {
        deps.parent().expect("deps has a parent").to_path_buf()
    }
}

#[test]
fn c_program_runs_against_the_header_and_library() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = library_dir();
    assert!(
        libs.join("libgpuhal_capi.so").exists() || libs.join("libgpuhal_capi.a").exists(),
        "no libgpuhal_capi in {}",
        libs.display()
    );
    let out_dir = std::env::temp_dir().join(format!("gpuhal-capi-test-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let program = out_dir.join("capi_test");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&compiler)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/capi_test.c"))
        .arg("-o")
        .arg(&program)
        .arg(format!("-L{}", libs.display()))
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-lgpuhal_capi")
        .status()
        .unwrap_or_else(|err| panic!("the C compiler `{compiler}` could not run ({err}); CI installs one"));
    assert!(status.success(), "compiling tests/c/capi_test.c failed: {status}");
    let output = Command::new(&program).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "capi_test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out_dir);
}
