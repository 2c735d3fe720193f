//! Helpers shared by the integration tests. Tests that need set-up artefacts (ONNX Runtime, models,
//! photos, fixtures) fail with a message naming the set-up command; they never skip silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{what} missing at {}: run scripts/setup.sh first",
        p.display()
    );
    p
}

pub fn runtime() -> &'static kestrel::runtime::Runtime {
    kestrel::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)")
}

pub fn fixture(name: &str) -> PathBuf {
    require(root().join("tests/fixtures/generated").join(name), "test fixture")
}

pub fn model(name: &str) -> PathBuf {
    require(root().join("models").join(name), "model")
}

/// Debian's darknet sample photos: the installed package, else the copy scripts/setup.sh extracts.
pub fn photo(name: &str) -> PathBuf {
    let installed = Path::new("/usr/share/darknet/data").join(name);
    if installed.exists() {
        return installed;
    }
    require(root().join(".cache/darknet").join(name), "darknet sample photo")
}
