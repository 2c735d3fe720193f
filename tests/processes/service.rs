//! The daemon as a systemd service, with the real binary: the sd_notify sequence on a test datagram socket
//! (STATUS, READY after warm-up, WATCHDOG while frames flow and not while the source is stalled, STOPPING on
//! SIGTERM, exit 0; WATCHDOG_USEC and WATCHDOG_PID honoured), and SIGHUP reloads (thresholds and output
//! change without reloading the model; an invalid file is rejected and the daemon keeps running).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, Daemon, Lines};

// The tests here each start a daemon and look at timing; each runs under `common::timing_lock()`.

/// Collect sd_notify datagrams (split into their `KEY=VALUE` lines) until the socket is dropped.
fn notify_listener(path: &Path) -> Lines {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let lines: Lines = Arc::default();
    let out = lines.clone();
    common::spawn("notify-reader", move || {
        let mut buf = vec![0u8; 4096];
        // Ends when the test process does; the test reads what arrived so far.
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let now = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let mut v = out.lock().unwrap();
                    v.extend(text.lines().map(|l| (now, l.to_string())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    lines
}

/// Start `kestrel run` as systemd does: with `own_watchdog_pid`, `WATCHDOG_PID` is the daemon's own PID (a
/// shell sets it to `$$` and execs the binary, which keeps the PID).
fn spawn(config: &Path, env: &[(&str, String)], own_watchdog_pid: bool) -> Daemon {
    let mut cmd = Command::new("sh");
    let exec = if own_watchdog_pid {
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\""
    } else {
        "exec \"$0\" \"$@\""
    };
    cmd.arg("-c").arg(exec).arg(env!("CARGO_BIN_EXE_kestrel"));
    cmd.current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn,kestrel=info")
        .args(["run", "--no-socket", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(&mut cmd)
}

/// How long a daemon may take to exit on SIGTERM (`Daemon::terminate`): a hang guard.
const STOP_LIMIT: Duration = Duration::from_secs(10);

fn write(path: &Path, text: &str) {
    // Replace atomically, as an editor or config management would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn synthetic_config(dir: &Path, extra: &str) -> PathBuf {
    let model = common::fixture("v5_const.onnx");
    let p = dir.join("kestrel.toml");
    write(
        &p,
        &format!(
            "[model]\npath = \"{}\"\n[runtime]\nintra_threads = 1\nwarmup_runs = 3\n[metrics]\nlog_interval_ms = 0\n\
             [source]\nkind = \"synthetic\"\nformat = \"rgb\"\nwidth = 160\nheight = 120\nfps_hz = 20.0\n{extra}",
            model.display()
        ),
    );
    p
}

/// From the final log line, "stopped after … (frames in N, out M) … | drops: stale 1, …": (N, M, the drops).
fn final_counts(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped after"))
        .unwrap_or_else(|| panic!("no final metrics line:\n{log}"));
    let n = |s: &str| -> u64 { s.trim().parse().unwrap_or_else(|e| panic!("{e}: {s:?} in {line}")) };
    let counts = line.split("(frames in ").nth(1).unwrap();
    let (captured, rest) = counts.split_once(", out ").unwrap();
    let published = rest.split(')').next().unwrap();
    let drops = line
        .split(" | drops: ")
        .nth(1)
        .map_or(0, |d| d.split(", ").map(|kv| n(kv.rsplit_once(' ').unwrap().1)).sum());
    (n(captured), n(published), drops)
}

fn times_of(lines: &[(Instant, String)], what: &str) -> Vec<Instant> {
    lines.iter().filter(|(_, l)| l == what).map(|(t, _)| *t).collect()
}

fn max_gap(t: &[Instant]) -> Duration {
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// A daemon on `config` under systemd's notify protocol: its notifications land in `dir/name`, with
/// `WATCHDOG_USEC = watchdog` and `WATCHDOG_PID` its own PID.
fn spawn_notified(dir: &Path, name: &str, config: &Path, watchdog: Duration) -> (Daemon, Lines) {
    let sock = dir.join(name);
    let notes = notify_listener(&sock);
    let env = [
        ("NOTIFY_SOCKET", sock.display().to_string()),
        ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
    ];
    (spawn(config, &env, true), notes)
}

#[test]
fn notify_sequence_ready_after_warm_up_watchdog_only_while_frames_flow_stopping_on_sigterm() {
    let _g = common::timing_lock();
    let dir = tempfile::tempdir().unwrap();
    // 60 frames at 20 fps (3 s), then the source hangs without ending.
    let cfg = synthetic_config(dir.path(), "stall_after_frames = 60\n");
    let watchdog = Duration::from_secs(1);
    let (mut d, notes) = spawn_notified(dir.path(), "notify.sock", &cfg, watchdog);
    d.wait_log("the stall", Duration::from_secs(60), |l| {
        l.contains("stalling after 60 frames")
    });
    // Two watchdog intervals of silence (after the half interval the last frame still covers), counted from
    // the last frame's arrival.
    std::thread::sleep(3 * watchdog);
    let last_frame = d
        .stdout
        .lock()
        .unwrap()
        .last()
        .map(|(t, _)| *t)
        .expect("frames before the stall");
    let silent_until = last_frame + watchdog / 2 + Duration::from_millis(150) + 2 * watchdog;
    std::thread::sleep(silent_until.saturating_duration_since(Instant::now()));
    let stop_sent = Instant::now();
    let code = d.terminate(STOP_LIMIT);
    std::thread::sleep(Duration::from_millis(200));
    let notes = notes.lock().unwrap().clone();
    let frames = d.stdout.lock().unwrap().clone();
    let log = d.log();
    let dump = notes.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
    assert_eq!(code, Some(0), "exit code; log:\n{log}");
    // 60 captured, each of them published (to stdout) or counted as dropped.
    let (captured, published, dropped) = final_counts(&log);
    assert_eq!((captured, published), (60, frames.len() as u64), "{log}");
    assert_eq!(published + dropped, captured, "{log}");
    // A source paced at 20 fps loses a frame only when the pipeline falls behind: a frame whose work took
    // longer than the 50 ms interval (measured here, in the frames' stage times) can make the next ones stale.
    // Allowed: what those frames explain, and 5 more for scheduling hiccups.
    let interval_ms = 50.0;
    let explained: u64 = frames
        .iter()
        .map(|(_, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let work: f64 = ["decode", "letterbox", "infer", "postprocess"]
                .iter()
                .map(|k| {
                    v["stages_ms"][*k]
                        .as_f64()
                        .unwrap_or_else(|| panic!("no stages_ms.{k}: {l}"))
                })
                .sum();
            (work / interval_ms).floor() as u64
        })
        .sum();
    assert!(
        dropped <= explained + 5,
        "{dropped} of 60 frames dropped before the stall; frames slower than the frame interval explain \
         {explained}:\n{log}"
    );

    // STATUS lines from the start, READY=1 only after the warm-up.
    let pos = |pred: &dyn Fn(&str) -> bool| notes.iter().position(|(_, l)| pred(l));
    let first_status = pos(&|l| l.starts_with("STATUS=")).expect("STATUS lines");
    let warming = pos(&|l| l.starts_with("STATUS=warming up the model (3 runs)")).expect("warm-up status");
    let ready = pos(&|l| l == "READY=1").expect("READY=1");
    assert!(first_status < warming && warming < ready, "{dump}");
    assert!(
        pos(&|l| l.starts_with("STATUS=loading model")).unwrap() < warming,
        "{dump}"
    );
    assert!(log.contains("warm-up: 3 runs"), "{log}");
    assert_eq!(times_of(&notes, "READY=1").len(), 1, "{dump}");
    let ready_at = notes[ready].0;
    let pings = times_of(&notes, "WATCHDOG=1");
    assert!(
        pings.iter().all(|t| *t >= ready_at),
        "WATCHDOG=1 before READY=1:\n{dump}"
    );

    // While frames flow: pings at least every WATCHDOG_USEC/2, but not spammed (≈ every WATCHDOG_USEC/4).
    assert_eq!(frames.last().unwrap().0, last_frame, "a frame after the stall");
    let flowing: Vec<Instant> = pings.iter().copied().filter(|t| *t <= last_frame).collect();
    assert!(flowing.len() >= 6, "{} pings in ~3 s of frames:\n{dump}", flowing.len());
    assert!(max_gap(&flowing) <= watchdog / 2, "ping gap {:?}", max_gap(&flowing));
    let min_gap = flowing.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        min_gap >= watchdog / 5,
        "pings {min_gap:?} apart: not derived from WATCHDOG_USEC"
    );

    // Stalled: no ping later than half the interval after the last frame (+ tick and scheduling slack), for
    // the two intervals that follow — systemd would have fired.
    let silent_from = last_frame + watchdog / 2 + Duration::from_millis(150);
    let late: Vec<_> = pings.iter().filter(|t| **t > silent_from).collect();
    assert!(late.is_empty(), "{} WATCHDOG=1 during the stall:\n{dump}", late.len());
    assert!(stop_sent - silent_from >= 2 * watchdog);
    assert!(
        notes
            .iter()
            .any(|(t, l)| *t > last_frame && l.starts_with("STATUS=stalled: no frame published")),
        "{dump}"
    );
    assert!(log.contains("pipeline stalled"), "{log}");

    // SIGTERM: STOPPING=1 (after the stop was sent), then exit 0 (above).
    let stopping = times_of(&notes, "STOPPING=1");
    assert_eq!(stopping.len(), 1, "{dump}");
    assert!(stopping[0] >= stop_sent, "{dump}");
}

#[test]
fn watchdog_interval_follows_watchdog_usec_and_ignores_another_pids_watchdog() {
    let _g = common::timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = synthetic_config(dir.path(), "");
    let watchdog = Duration::from_secs(3);
    let (mut d, notes) = spawn_notified(dir.path(), "notify.sock", &cfg, watchdog);
    d.wait_log("readiness", Duration::from_secs(30), |l| l.contains("ready:"));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.terminate(STOP_LIMIT), Some(0));
    let pings = times_of(&notes.lock().unwrap(), "WATCHDOG=1");
    assert!(pings.len() >= 4, "{} pings in 4 s", pings.len());
    let min_gap = pings.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        min_gap >= Duration::from_millis(700) && max_gap(&pings) <= watchdog / 2,
        "gaps {min_gap:?}..{:?} for WATCHDOG_USEC 3 s",
        max_gap(&pings)
    );
    drop(d);

    // WATCHDOG_PID names another process: the watchdog is not ours (sd_watchdog_enabled(3)).
    let sock2 = dir.path().join("notify2.sock");
    let notes2 = notify_listener(&sock2);
    let mut d = spawn(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock2.display().to_string()),
            ("WATCHDOG_USEC", "1000000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
        false,
    );
    d.wait_log("readiness", Duration::from_secs(30), |l| l.contains("ready:"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.terminate(STOP_LIMIT), Some(0));
    let notes2 = notes2.lock().unwrap();
    assert!(times_of(&notes2, "READY=1").len() == 1);
    assert!(times_of(&notes2, "WATCHDOG=1").is_empty());
}

/// Detections per frame from the JSON lines after `from`.
fn detections_after(lines: &Lines, from: usize) -> Vec<Vec<(String, f64)>> {
    lines.lock().unwrap()[from..]
        .iter()
        .map(|(_, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["detections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d["label"].as_str().unwrap().to_string(), d["score"].as_f64().unwrap()))
                .collect()
        })
        .collect()
}

/// Wait until `n` frames arrived after index `from`.
fn wait_frames(d: &mut Daemon, lines: &Lines, from: usize, n: usize) {
    let t0 = Instant::now();
    while lines.lock().unwrap().len() < from + n {
        assert!(d.child.try_wait().unwrap().is_none(), "daemon exited:\n{}", d.log());
        assert!(t0.elapsed() < Duration::from_secs(30), "no frames:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_thresholds_and_output_without_reloading_the_model_and_rejects_an_invalid_file() {
    let _g = common::timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let model = common::model("yolov3-tiny-416.onnx");
    let photo = common::photo("person.jpg");
    let base = format!(
        "[source]\nkind = \"images\"\npath = \"{}\"\nfps_hz = 4.0\n[runtime]\nwarmup_runs = 1\n\
         [metrics]\nlog_interval_ms = 0\n",
        photo.display()
    );
    let cfg = dir.path().join("kestrel.toml");
    let with =
        |conf: f64, output: &str| format!("{base}[model]\npath = \"{}\"\nconf = {conf}\n{output}", model.display());
    write(&cfg, &with(0.5, ""));
    let mut d = spawn(&cfg, &[], false);
    let out = d.stdout.clone();
    wait_frames(&mut d, &out, 0, 2);
    // person.jpg at conf 0.5: person 0.95, dog 0.945, dog 0.92, horse 0.92 (tests/inprocess/photos.rs).
    let before = detections_after(&out, 0);
    assert!(before.iter().all(|f| f.len() == 4), "{before:?}");

    // conf 0.93: only the person and the first dog.
    write(&cfg, &with(0.93, ""));
    d.signal("HUP");
    d.wait_log("the reload", Duration::from_secs(10), |l| {
        l.contains("model.conf 0.5 -> 0.93")
    });
    let mark = out.lock().unwrap().len();
    wait_frames(&mut d, &out, mark, 4);
    // A frame already past inference may still carry the old threshold; the ones after it have the new one.
    let after = detections_after(&out, mark + 1);
    assert!(
        after.iter().all(|f| f.len() == 2 && f.iter().all(|(_, s)| *s > 0.93)),
        "{after:?}"
    );

    // An invalid file: rejected, logged, the daemon keeps running with conf 0.93.
    write(&cfg, &with(0.1, "[camera]\nexposure = 3\n"));
    d.signal("HUP");
    d.wait_log("the rejection", Duration::from_secs(10), |l| {
        l.contains("reload rejected")
    });
    let mark = out.lock().unwrap().len();
    wait_frames(&mut d, &out, mark, 3);
    let after = detections_after(&out, mark);
    assert!(after.iter().all(|f| f.len() == 2), "{after:?}");
    assert!(
        d.log().contains("camera"),
        "the rejection names the field:\n{}",
        d.log()
    );

    // Output to a file and back to conf 0.5: frames move to the file with 4 detections again.
    let file = dir.path().join("out.jsonl");
    write(
        &cfg,
        &with(
            0.5,
            &format!("[output]\nkind = \"file\"\npath = \"{}\"\n", file.display()),
        ),
    );
    d.signal("HUP");
    d.wait_log("the output change", Duration::from_secs(10), |l| {
        l.contains("output stdout (json) -> file")
    });
    let t0 = Instant::now();
    let file_lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let n: Vec<String> = text.lines().map(str::to_string).collect();
        if n.len() >= 3 {
            break n;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "nothing in {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout_frames = out.lock().unwrap().len();
    for l in &file_lines[1..] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["detections"].as_array().unwrap().len(), 4, "{l}");
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(out.lock().unwrap().len(), stdout_frames, "stdout still gets frames");

    assert_eq!(d.terminate(STOP_LIMIT), Some(0));
    let log = d.log();
    // The model was loaded (and warmed up) once: reloads never touch it.
    assert_eq!(log.matches("warm-up: 1 runs").count(), 1, "{log}");
    assert_eq!(log.matches("yolov3-tiny-416.onnx: input 416x416").count(), 1, "{log}");
}
