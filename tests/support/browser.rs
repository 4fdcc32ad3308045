//! What the browser tests share: the tools `scripts/install-browser.sh` installs, found
//! through the environment (their absence fails the test: it is never skipped), and where
//! screenshots go.

use std::path::{Path, PathBuf};

/// A tool the test needs (`MALLQUEST_BROWSER_PYTHON`, `MALLQUEST_AXE_JS`), from the
/// environment; its absence fails the test.
pub fn tool(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run `eval \"$(scripts/install-browser.sh)\"` and export \
             MALLQUEST_BROWSER_PYTHON and MALLQUEST_AXE_JS (scripts/test.sh does). This test \
             needs a real browser and is never skipped."
        )
    });
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

/// Where a browser test's screenshots go: `target/artifacts/<name>`.
pub fn artifacts_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts")
        .join(name)
}
