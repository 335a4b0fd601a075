//! `cargo xtask header [--check]`: generates the C ABI's header from `capi/` with cbindgen,
//! or checks that the checked-in one is current.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cargo::workspace_root;

/// The header, relative to the workspace root.
pub const HEADER: &str = "capi/include/gpuhal.h";

/// Writes the header, or with `check` fails when the checked-in one differs.
pub fn header(check: bool) -> Result<()> {
    let root = workspace_root();
    let crate_dir = root.join("capi");
    let generated = generate(&crate_dir)?;
    let path = root.join(HEADER);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if check {
        if current != generated {
            bail!(
                "{HEADER} is stale: capi/src changed its exported items. Run `cargo xtask header` \
                 and commit the result"
            );
        }
        eprintln!("xtask: {HEADER} is current");
        return Ok(());
    }
    if current == generated {
        eprintln!("xtask: {HEADER} unchanged");
    } else {
        std::fs::write(&path, generated).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: wrote {HEADER}");
    }
    Ok(())
}

fn generate(crate_dir: &Path) -> Result<String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|err| anyhow::anyhow!("reading capi/cbindgen.toml: {err}"))?;
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .context("cbindgen could not generate the header from capi/src")?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).context("cbindgen wrote a header that is not UTF-8")
}
