//! Helpers shared by the integration tests. Tests that need set-up artefacts (ONNX Runtime, models,
//! photos, fixtures) fail with a message naming the set-up command; they never skip silently.
#![allow(dead_code)]

mod lock;
mod process;

use std::path::{Path, PathBuf};

pub use lock::{shared_lock, timing_lock};
// Used by the binary whose tests start `kestrel`, not by the in-process one.
#[allow(unused_imports)]
pub use process::{kestrel, Daemon, Lines};

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

pub fn runtime() -> &'static kestrel_infer::runtime::Runtime {
    kestrel_infer::runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)")
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

/// CLOCK_MONOTONIC in nanoseconds: the clock of the timestamps the daemon and the library publish.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A named helper thread (the workspace's lints allow no anonymous threads, in tests either).
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn a test thread")
}
