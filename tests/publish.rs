//! The detection socket on a real Unix socket with the real binary: many subscribers with one stalled, abusive
//! clients (SIGKILL, garbage, churn) with fd counting, the heartbeat with a source that produces nothing, and
//! the socket file's life cycle.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestrel::client::{Format, Message, Subscriber};

/// The tests here each start daemons; run them one at a time so their timing is not disturbed.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let model = common::root().join("tests/fixtures/generated/v5_const.onnx");
    let text = format!(
        "[model]\npath = \"{}\"\n[runtime]\nintra_threads = 1\n[metrics]\nlog_interval_ms = 0\n{body}",
        model.display()
    );
    let p = dir.join("k.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A daemon with its stderr drained by a thread (a full pipe would block its logging).
struct Daemon {
    child: Child,
    log: std::thread::JoinHandle<String>,
}

impl Daemon {
    fn id(&self) -> u32 {
        self.child.id()
    }
}

fn daemon(config: &Path, extra: &[&str]) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn,kestrel=info")
        .args(["run", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Daemon { child, log }
}

fn wait_for_socket(p: &Path, d: &mut Daemon) {
    let child = &mut d.child;
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon exited before creating its socket"
        );
        assert!(t0.elapsed() < Duration::from_secs(20), "no socket at {}", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, wait; returns (exit code, stderr).
fn stop(d: Daemon) -> (Option<i32>, String) {
    let Daemon { mut child, log } = d;
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "daemon did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), log.join().unwrap())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Published fps from the final log line: "stopped after X s …(frames in N, out M)".
fn fps_from_log(log: &str) -> f64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped after"))
        .expect("final metrics line");
    let secs: f64 = line
        .split("stopped after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let counts = line.split("(frames in ").nth(1).unwrap();
    let out: f64 = counts
        .split(", out ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    out / secs
}

const FAST_SOURCE: &str =
    "[source]\nkind = \"synthetic\"\nformat = \"rgb\"\nwidth = 320\nheight = 240\nfps_hz = 100.0\n\
                           [output]\nkind = \"none\"\n";

#[test]
fn sixteen_subscribers_one_stalled_others_get_everything_and_fps_is_unchanged() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "{FAST_SOURCE}[publish]\nsocket = \"{}\"\nqueue_messages = 16\nmax_lag_ms = 500\n",
            sock.display()
        ),
    );
    // Baseline: no subscribers.
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    std::thread::sleep(Duration::from_secs(5));
    let (code, log0) = stop(d);
    assert_eq!(code, Some(0), "{log0}");
    let fps0 = fps_from_log(&log0);

    // 15 readers and one that never reads.
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    let stalled = UnixStream::connect(&sock).unwrap();
    let readers: Vec<_> = (0..15)
        .map(|i| {
            let sock = sock.clone();
            let format = if i % 2 == 0 { Format::Json } else { Format::Binary };
            std::thread::spawn(move || {
                let mut sub = Subscriber::connect(&sock, format).unwrap();
                let mut msgs = Vec::new();
                loop {
                    match sub.next(Duration::from_secs(5)) {
                        Ok(Some(m)) => msgs.push(m),
                        Ok(None) => panic!("reader {i}: nothing for 5 s"),
                        Err(_) => return msgs, // closed at the daemon's exit
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let (code, log1) = stop(d);
    assert_eq!(code, Some(0), "{log1}");
    drop(stalled);
    let fps1 = fps_from_log(&log1);
    let results: Vec<Vec<Message>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!("published fps: {fps0:.1} with no subscribers, {fps1:.1} with 16 (one stalled)");
    assert!(
        fps1 >= 0.95 * fps0,
        "fps {fps1:.1} with subscribers vs {fps0:.1} without"
    );
    // Every reader: no `missed`, detections in strictly increasing order; all readers saw the same frames
    // from the point the last one joined.
    let seqs: Vec<Vec<u64>> = results
        .iter()
        .enumerate()
        .map(|(i, msgs)| {
            // (a binary reader may get the `format` switch first: the JSON hello was not sent yet)
            let first = msgs.iter().find(|m| !matches!(m, Message::FormatSwitch { .. }));
            assert!(matches!(first, Some(Message::Hello(_))), "reader {i} starts with hello");
            assert!(
                !msgs.iter().any(|m| matches!(m, Message::Missed { .. })),
                "reader {i} missed messages"
            );
            let s: Vec<u64> = msgs
                .iter()
                .filter_map(|m| match m {
                    Message::Detections(d) => Some(d.seq),
                    _ => None,
                })
                .collect();
            assert!(s.windows(2).all(|w| w[1] > w[0]), "reader {i}: out of order");
            assert!(s.len() > 200, "reader {i}: only {} frames", s.len());
            s
        })
        .collect();
    let from = seqs.iter().map(|s| s[0]).max().unwrap();
    let to = seqs.iter().map(|s| *s.last().unwrap()).min().unwrap();
    let window = |s: &Vec<u64>| {
        s.iter()
            .copied()
            .filter(|q| (from..=to).contains(q))
            .collect::<Vec<_>>()
    };
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(window(s), window(&seqs[0]), "reader {i} saw different frames");
    }
    // The stalled one was disconnected and that was counted.
    assert!(
        log1.contains("disconnected: took nothing for more than 500 ms"),
        "{log1}"
    );
    let last_status = results[0]
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::Status(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert!(last_status.drops["subscriber_missed"] > 0, "{:?}", last_status.drops);
    assert_eq!(last_status.subscribers, 15);
}

#[test]
fn killed_garbage_and_churning_clients_leave_the_server_healthy_without_fd_leaks() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let cfg = write_config(
        dir.path(),
        &format!("{FAST_SOURCE}[publish]\nsocket = \"{}\"\n", sock.display()),
    );
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    // One healthy subscriber throughout.
    let watcher = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut sub = Subscriber::connect(&sock, Format::Json).unwrap();
            let (mut n, mut last) = (0u64, 0u64);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(8) {
                if let Some(Message::Detections(d)) = sub.next(Duration::from_secs(2)).unwrap() {
                    assert!(d.seq > last);
                    (n, last) = (n + 1, d.seq);
                }
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = open_fds(d.id());
    // Subscribers killed mid-stream.
    for _ in 0..5 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kestrel"))
            .args(["subscribe", "--socket"])
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("hello"), "{line}");
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    // 1 MiB of garbage (no newlines, then binary junk with newlines), then it stays connected reading nothing.
    let mut garbage = UnixStream::connect(&sock).unwrap();
    let junk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    garbage.write_all(&junk).unwrap();
    garbage
        .write_all(b"\n{\"format\":\"carrier-pigeon\"}\n{not json\n")
        .unwrap();
    // Connect/disconnect churn.
    for i in 0..1000 {
        let mut c = UnixStream::connect(&sock).unwrap();
        if i % 3 == 0 {
            let mut b = [0u8; 64];
            let _ = c.read(&mut b);
        }
    }
    drop(garbage);
    std::thread::sleep(Duration::from_millis(500));
    let fds_after = open_fds(d.id());
    let frames = watcher.join().unwrap();
    // Still serving a new subscriber.
    let mut sub = Subscriber::connect(&sock, Format::Binary).unwrap();
    let got = (0..50).find_map(|_| match sub.next(Duration::from_secs(2)) {
        Ok(Some(Message::Detections(d))) => Some(d),
        _ => None,
    });
    assert!(got.is_some(), "no detections after the abuse");
    let (code, log) = stop(d);
    assert_eq!(code, Some(0), "{log}");
    eprintln!("daemon fds before {fds_before}, after {fds_after}; the watcher got {frames} frames");
    assert_eq!(fds_before, fds_after, "fd leak");
    assert!(frames > 300, "the healthy subscriber got only {frames} frames");
}

#[test]
fn heartbeat_keeps_coming_when_the_source_produces_nothing_and_says_why() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[source]\nkind = \"v4l2\"\ndevice = \"/nonexistent/video7\"\nwidth = 640\nheight = 480\n\
             [output]\nkind = \"none\"\n[publish]\nsocket = \"{}\"\n",
            sock.display()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    let mut sub = Subscriber::connect(&sock, Format::Json).unwrap();
    let t0 = Instant::now();
    let mut at = Vec::new();
    while t0.elapsed() < Duration::from_millis(4500) {
        match sub.next(Duration::from_millis(1500)).unwrap() {
            Some(Message::Status(s)) => {
                assert_eq!(s.health, kestrel::client::Health::CameraLost, "{s:?}");
                assert!(s.reason.contains("waiting for the camera"), "{}", s.reason);
                assert_eq!(s.frames_published, 0);
                at.push(Instant::now());
            }
            Some(Message::Hello(h)) => assert_eq!(h.camera, "v4l2:/nonexistent/video7"),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("nothing for 1.5 s: the heartbeat stopped"),
        }
    }
    let (code, _) = stop(d);
    assert_eq!(code, Some(0));
    assert!(at.len() >= 4, "{} status messages in 4.5 s", at.len());
    let worst = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst <= Duration::from_millis(1200), "status gap {worst:?}");
}

#[test]
fn socket_file_mode_stale_replacement_refusals_and_cleanup() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let cfg = write_config(
        dir.path(),
        &format!("{FAST_SOURCE}[publish]\nsocket = \"{}\"\n", sock.display()),
    );
    // A stale socket (a crashed server's): bound, never unlinked, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    std::thread::sleep(Duration::from_millis(300));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    assert!(
        UnixStream::connect(&sock).is_ok(),
        "the stale socket was replaced by a live one"
    );
    // A second daemon on the same path refuses (a live server's socket is never taken over).
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another server is listening"), "{err}");
    let (code, log) = stop(d);
    assert_eq!(code, Some(0), "{log}");
    assert!(!sock.exists(), "socket left behind after SIGTERM");
    // A regular file at the path is refused and left alone.
    std::fs::write(&sock, b"precious").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket") && err.contains("d.sock"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
}

#[test]
fn subscribers_beyond_the_cap_are_refused_politely() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "{FAST_SOURCE}[publish]\nsocket = \"{}\"\nmax_subscribers = 2\n",
            sock.display()
        ),
    );
    let mut d = daemon(&cfg, &[]);
    wait_for_socket(&sock, &mut d);
    let mut a = Subscriber::connect(&sock, Format::Json).unwrap();
    let mut b = Subscriber::connect(&sock, Format::Json).unwrap();
    for s in [&mut a, &mut b] {
        assert!(matches!(
            s.next(Duration::from_secs(2)).unwrap(),
            Some(Message::Hello(_))
        ));
    }
    let mut c = Subscriber::connect(&sock, Format::Json).unwrap();
    match c.next(Duration::from_secs(2)).unwrap() {
        Some(Message::Error { error }) => assert!(error.contains("too many subscribers (2 max)"), "{error}"),
        other => panic!("expected an error message, got {other:?}"),
    }
    assert!(c.next(Duration::from_secs(2)).is_err(), "refused connection not closed");
    // The two still get frames.
    for s in [&mut a, &mut b] {
        let got = (0..20).any(|_| matches!(s.next(Duration::from_secs(2)), Ok(Some(Message::Detections(_)))));
        assert!(got);
    }
    let (code, _) = stop(d);
    assert_eq!(code, Some(0));
}
