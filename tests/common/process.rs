//! The `kestrel` binary as a child process: the command line every test starts from, and a daemon whose output
//! is read while it runs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `kestrel`, run in the project root, finding ONNX Runtime by its own search (no `ORT_DYLIB_PATH`), logging
/// warnings only.
pub fn kestrel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kestrel"));
    c.current_dir(super::root())
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn");
    c
}

/// Lines read from a child's output, each with its arrival time.
pub type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// Collect lines from `r` (if there is one) with their arrival time, until its end, by a thread added to
/// `readers`.
fn collect<R: Read + Send + 'static>(r: Option<R>, readers: &mut Vec<JoinHandle<()>>) -> Lines {
    let lines: Lines = Arc::default();
    if let Some(r) = r {
        let out = lines.clone();
        readers.push(super::spawn("output-reader", move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                out.lock().unwrap().push((Instant::now(), line));
            }
        }));
    }
    lines
}

/// A daemon whose piped stdout and stderr are drained by threads (a full pipe would block it) into `stdout`
/// and `stderr`, which the test can read while it runs. Killed when dropped, if still running.
pub struct Daemon {
    pub child: Child,
    /// Empty unless the command piped its stdout.
    pub stdout: Lines,
    /// Empty unless the command piped its stderr.
    pub stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Start `cmd` (its stdout and stderr set up by the caller).
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let mut readers = Vec::new();
        let stdout = collect(child.stdout.take(), &mut readers);
        let stderr = collect(child.stderr.take(), &mut readers);
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log (stderr) so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!("daemon exited ({s}):\n{}", self.log());
        }
    }

    /// Send `sig` (a name, as `kill -NAME` takes it).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait (≤ `timeout`) until `pred` holds for the log; panics with the log otherwise.
    pub fn wait_log(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let t0 = Instant::now();
        while !pred(&self.log()) {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("daemon exited ({s}) while waiting for {what}:\n{}", self.log());
            }
            assert!(t0.elapsed() < timeout, "no {what} within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the exit (`limit`: a hang guard), then for the reader threads to reach the end of
    /// its output; the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < limit,
                "daemon did not stop within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        status.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
