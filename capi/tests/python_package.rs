//! Runs the Python package's tests (`python/tests`, through its ctypes layer) on the mock
//! backend, against the library this build made.

use std::path::Path;
use std::process::Command;

#[test]
fn python_package_tests_pass_on_the_mock() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("capi sits in the workspace root");
    let exe = std::env::current_exe().expect("the test knows its own path");
    // cargo writes the library into deps/ and copies it up to target/<profile>/ later.
    let deps = exe.parent().expect("the test runs from target/<profile>/deps");
    let library = [deps.join("libgpuhal_capi.so"), deps.join("../libgpuhal_capi.so")]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| deps.join("libgpuhal_capi.so"));
    assert!(library.exists(), "{} was not built", library.display());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(root)
        .env("GPUHAL_LIBRARY", &library)
        .env("PYTHONPATH", root.join("python"))
        .output()
        .unwrap_or_else(|err| panic!("`{python}` could not run ({err}); CI has python3"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python tests failed:\n{stderr}");
    assert!(stderr.contains("OK") && !stderr.contains("skipped"), "{stderr}");
}
