//! MavlinkSink against an independent decoder: pymavlink (tests/reference/mavlink_listen.py) listens on a UDP
//! port, the sink sends there, and every frame pymavlink accepted (CRC and length checked) is compared with
//! what the frames published should have produced. Needs the project's venv with pymavlink (scripts/setup.sh);
//! fails, never skips, without it.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_core::detection::Detection;
use kestrel_core::geometry::ImageBox;
use kestrel_core::published::{FrameTimes, Published};
use kestrel_daemon::mavlink::{MavlinkConfig, MavlinkSink};
use kestrel_daemon::sink::Sink;
use kestrel_vision::angles::{Intrinsics, IntrinsicsConfig};
use serde_json::Value;

use crate::common::{self, monotonic_ns, root};

// The tests are timed (publish calls, the drop, heartbeat gaps) and look at this process's threads (the one
// named `mavlink`): each runs under `common::timing_lock()`, with no other test of the binary beside it.

const HEARTBEAT_HZ: f64 = 2.0;
const SYSID: u8 = 42;
const COMPID: u8 = 191;
const TARGET_NUM: u8 = 3;
const PAD: u32 = 2;

fn python() -> PathBuf {
    let py = root().join(".cache/venv/bin/python");
    assert!(
        py.exists(),
        "the project's Python venv is missing ({}): run scripts/setup.sh first",
        py.display()
    );
    let ok = Command::new(&py)
        .args(["-c", "import pymavlink.dialects.v20.common"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "pymavlink is not installed in {}: run scripts/setup.sh first",
        py.display()
    );
    py
}

/// The listener process and its output lines, read by a thread.
struct Listener {
    child: Child,
    port: u16,
    lines: crossbeam_channel::Receiver<String>,
}

impl Listener {
    /// Start mavlink_listen.py on a free port and wait for its READY line (retrying on another port if the
    /// one picked was taken meanwhile).
    fn start(seconds: f64) -> Self {
        let py = python();
        let script = root().join("tests/reference/mavlink_listen.py");
        for _ in 0..3 {
            let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&py)
                .arg(&script)
                .args(["--port", &port.to_string(), "--seconds", &seconds.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start mavlink_listen.py");
            let out = child.stdout.take().unwrap();
            let (tx, lines) = crossbeam_channel::bounded(1 << 16);
            common::spawn("listener-lines", move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            match lines.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l == format!("READY {port}") => return Self { child, port, lines },
                other => {
                    eprintln!("listener on {port} did not start ({other:?}); retrying");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("mavlink_listen.py never became ready");
    }

    /// Wait for the listener to finish (bounded) and return its JSON lines: messages and the summary.
    fn finish(mut self) -> (Vec<Value>, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "mavlink_listen.py failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("mavlink_listen.py did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut msgs = Vec::new();
        let mut summary = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v["summary"] == true {
                summary = Some(v);
            } else {
                msgs.push(v);
            }
        }
        (msgs, summary.expect("the listener's summary line"))
    }
}

fn intrinsics() -> Intrinsics {
    // Calibrated at 640x480, frames are 1280x960; a wide-angle lens with real distortion.
    Intrinsics::new(&IntrinsicsConfig {
        fx: 500.0,
        fy: 480.0,
        cx: 321.0,
        cy: 238.0,
        width: 640,
        height: 480,
        distortion: vec![-0.28, 0.07, 0.001, -0.0005, -0.008],
    })
    .unwrap()
}

fn labels() -> Vec<String> {
    ["person", "car", "pad"].iter().map(|s| s.to_string()).collect()
}

fn config(port: u16, version: u8) -> MavlinkConfig {
    MavlinkConfig {
        enabled: true,
        endpoint: format!("udpout:127.0.0.1:{port}"),
        target_class: "pad".into(),
        target_num: TARGET_NUM,
        system_id: SYSID,
        component_id: COMPID,
        heartbeat_hz: HEARTBEAT_HZ,
        mavlink_version: version,
    }
}

fn det(class_id: u32, score: f32, bbox: [f32; 4]) -> Detection {
    Detection {
        class_id,
        score,
        bbox: ImageBox::new(bbox),
    }
}

/// Frame `i`'s detections (best first): some frames have no pad, some several, some other classes first.
fn detections(i: usize) -> Vec<Detection> {
    let x = 40.0 + 50.0 * i as f32;
    let y = 900.0 - 40.0 * i as f32;
    match i % 4 {
        0 => vec![det(PAD, 0.9, [x, y - 60.0, x + 80.0, y])],
        1 => vec![
            det(0, 0.8, [10.0, 10.0, 60.0, 120.0]),
            det(1, 0.6, [100.0, 100.0, 300.0, 200.0]),
        ],
        2 => vec![
            det(0, 0.95, [500.0, 400.0, 560.0, 520.0]),
            det(PAD, 0.7, [x, y - 100.0, x + 120.0, y]),
            det(PAD, 0.5, [1200.0, 10.0, 1270.0, 70.0]),
            det(1, 0.4, [0.0, 0.0, 5.0, 5.0]),
        ],
        _ => vec![],
    }
}

/// What the receiver must see for one frame's best pad: computed here from the intrinsics' public API.
struct Expected {
    time_usec: u64,
    angles: [f32; 2],
    size: [f32; 2],
}

fn expected(dets: &[Detection], capture_ns: u64, w: u32, h: u32) -> Option<Expected> {
    let cam = intrinsics();
    let b = dets.iter().find(|d| d.class_id == PAD)?.bbox;
    let (cu, cv) = (
        (f64::from(b[0]) + f64::from(b[2])) / 2.0,
        (f64::from(b[1]) + f64::from(b[3])) / 2.0,
    );
    let left = cam.angles(f64::from(b[0]), cv, w, h);
    let right = cam.angles(f64::from(b[2]), cv, w, h);
    let top = cam.angles(cu, f64::from(b[1]), w, h);
    let bottom = cam.angles(cu, f64::from(b[3]), w, h);
    Some(Expected {
        time_usec: capture_ns / 1000,
        angles: cam.angles(cu, cv, w, h),
        size: [right[0] - left[0], bottom[1] - top[1]],
    })
}

/// A float field as the f32 it was on the wire. (pymavlink prints the f32 widened to f64 exactly, but
/// serde_json's default parser may be 1 ulp off in f64, so the comparison is made in f32, where it is exact.)
fn f(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

struct Run {
    msgs: Vec<Value>,
    expected: Vec<Expected>,
    counters: kestrel_daemon::mavlink::MavlinkCounters,
    alive: (u64, u64),
}

/// Publish 20 frames through a sink sending to the listener, keep it alive ≥ 2.5 s, drop it, and return
/// what pymavlink decoded.
fn run(version: u8) -> Run {
    let listener = Listener::start(4.5);
    let (w, h) = (1280, 960);
    let labels = labels();
    let cam = intrinsics();
    let born = monotonic_ns();
    let mut sink = MavlinkSink::new(&config(listener.port, version), cam, &labels).unwrap();
    // The thread names itself once it runs.
    let t = Instant::now();
    while !thread_names().iter().any(|n| n == "mavlink") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no thread named mavlink: {:?}",
            thread_names()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = sink.stats();
    let (mut want, mut took) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let dets = detections(i);
        // The pipeline computes the angles when intrinsics are set; odd frames leave it to the sink.
        let angles: Vec<[f32; 2]> = if i % 2 == 0 {
            dets.iter().map(|d| cam.box_angles(&d.bbox, w, h)).collect()
        } else {
            Vec::new()
        };
        let capture_ns = monotonic_ns();
        let frame = Published {
            seq: i as u64,
            capture_ns,
            capture_realtime_ns: 1_700_000_000_000_000_000,
            publish_ns: capture_ns + 1_000_000,
            times: FrameTimes::default(),
            width: w,
            height: h,
            detections: &dets,
            angles: &angles,
            labels: &labels,
            fps: 25.0,
        };
        let t = Instant::now();
        sink.publish(&frame).unwrap();
        took.push(t.elapsed());
        want.extend(expected(&dets, capture_ns, w, h));
        std::thread::sleep(Duration::from_millis(40));
    }
    // `publish` only hands the frame to the mavlink thread (a non-blocking queue offer, the angle maths): it
    // never waits for the link, whose thread polls every 20 ms; a publish that waited would take a good part of
    // that. Judged on all but the slowest call, which one preemption on a busy host can stretch.
    took.sort();
    assert!(
        took[took.len() - 2] < Duration::from_millis(5),
        "publish took {:?} (all 20, sorted)",
        took
    );
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(Duration::from_nanos(monotonic_ns() - born)));
    let t = Instant::now();
    drop(sink);
    let took = t.elapsed();
    let died = monotonic_ns();
    assert!(took < Duration::from_millis(150), "dropping the sink took {took:?}");
    assert!(
        !thread_names().iter().any(|n| n == "mavlink"),
        "the mavlink thread outlived the sink: {:?}",
        thread_names()
    );
    let counters = stats.get();
    let (msgs, summary) = listener.finish();
    // Nothing pymavlink could not decode: no bad CRC, no garbage, no partial frame.
    assert_eq!(summary["bad_messages"], 0, "{summary}");
    assert_eq!(summary["receive_errors"], 0, "{summary}");
    assert_eq!(summary["leftover_bytes"], 0, "{summary}");
    assert_eq!(summary["messages"], msgs.len(), "{summary}");
    Run {
        msgs,
        expected: want,
        counters,
        alive: (born, died),
    }
}

fn check(r: &Run, wire: u64) {
    let mut seq = None;
    for m in &r.msgs {
        assert_eq!(m["crc_ok"], true, "{m}");
        assert_eq!(m["wire"], wire, "{m}");
        assert_eq!(
            (m["sysid"].as_u64(), m["compid"].as_u64()),
            (Some(SYSID.into()), Some(COMPID.into())),
            "{m}"
        );
        // Sequence numbers count up by one: nothing lost or sent twice.
        let s = m["seq"].as_u64().unwrap();
        if let Some(prev) = seq {
            assert_eq!(s, (prev + 1) % 256, "{m}");
        }
        seq = Some(s);
        // Nothing before the sink was made.
        let t = m["t_ns"].as_u64().unwrap();
        assert!(t >= r.alive.0, "message at {t}, sink alive {:?}", r.alive);
    }
    // Nothing after the sink was dropped: what arrived is exactly what the sink had sent when its drop returned
    // (its thread joined, its counters final), numbered from 0. (By the message numbers, not by when the
    // listener, a Python process, got round to reading them.)
    assert_eq!(
        r.msgs.len() as u64,
        r.counters.landing_targets + r.counters.heartbeats,
        "{:?}",
        r.counters
    );
    assert_eq!(
        r.msgs.first().map(|m| m["seq"].as_u64()),
        Some(Some(0)),
        "the first message"
    );

    // LANDING_TARGET: one per frame with a pad, in order, with exactly the expected fields.
    let lts: Vec<&Value> = r.msgs.iter().filter(|m| m["name"] == "LANDING_TARGET").collect();
    assert_eq!(lts.len(), r.expected.len(), "{lts:?}");
    assert_eq!(r.expected.len(), 10);
    for (m, e) in lts.iter().zip(&r.expected) {
        let v = &m["fields"];
        assert_eq!(m["id"], 149);
        assert_eq!(v["time_usec"].as_u64(), Some(e.time_usec), "{m}");
        assert_eq!(v["target_num"], TARGET_NUM, "{m}");
        assert_eq!(v["frame"], 12, "MAV_FRAME_BODY_FRD: {m}");
        assert_eq!(f(&v["angle_x"]), e.angles[0], "{m}");
        assert_eq!(f(&v["angle_y"]), e.angles[1], "{m}");
        assert_eq!(f(&v["size_x"]), e.size[0], "{m}");
        assert_eq!(f(&v["size_y"]), e.size[1], "{m}");
        assert!(e.size[0] > 0.0 && e.size[1] > 0.0);
        assert_eq!(f(&v["distance"]), 0.0, "{m}");
        for k in ["x", "y", "z"] {
            assert_eq!(f(&v[k]), 0.0, "{m}");
        }
        assert_eq!(v["q"], serde_json::json!([0.0, 0.0, 0.0, 0.0]), "{m}");
        assert_eq!(v["position_valid"], 0, "{m}");
        if wire == 2 {
            assert_eq!(v["type"], 3, "LANDING_TARGET_TYPE_VISION_OTHER: {m}");
        } else {
            // MAVLink 1 has no extension fields: the 30-byte base payload, type left at pymavlink's 0.
            assert_eq!(m["payload_len"], 30, "{m}");
            assert_eq!(v["type"], 0, "{m}");
        }
    }

    // HEARTBEAT: an onboard controller, at heartbeat_hz for as long as the sink lived.
    let hbs: Vec<&Value> = r.msgs.iter().filter(|m| m["name"] == "HEARTBEAT").collect();
    for m in &hbs {
        let v = &m["fields"];
        assert_eq!(m["id"], 0);
        assert_eq!(v["type"], 18, "MAV_TYPE_ONBOARD_CONTROLLER: {m}");
        assert_eq!(v["autopilot"], 8, "MAV_AUTOPILOT_INVALID: {m}");
        assert_eq!(v["base_mode"], 0, "{m}");
        assert_eq!(v["custom_mode"], 0, "{m}");
        assert_eq!(v["system_status"], 4, "MAV_STATE_ACTIVE: {m}");
        assert_eq!(v["mavlink_version"], 3, "{m}");
    }
    let times: Vec<f64> = hbs.iter().map(|m| m["t_ns"].as_u64().unwrap() as f64 / 1e9).collect();
    let life = (r.alive.1 - r.alive.0) as f64 / 1e9;
    assert!(life >= 2.5, "{life}");
    let n = hbs.len() as f64;
    // The first at start, then one per period.
    let want = (life * HEARTBEAT_HZ).floor() + 1.0;
    assert!(
        (n - want).abs() <= 1.0,
        "{n} heartbeats in {life:.2} s at {HEARTBEAT_HZ} Hz (want {want})"
    );
    assert!(
        n >= 2.0 * life.floor(),
        "fewer than one heartbeat per second: {n} in {life:.2} s"
    );
    assert!(times[0] - r.alive.0 as f64 / 1e9 < 0.2, "first heartbeat late");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((gap - 1.0 / HEARTBEAT_HZ).abs() < 0.15, "heartbeat gap {gap:.3} s");
    }

    // The sink's own counters agree with what arrived.
    assert_eq!(r.counters.landing_targets, lts.len() as u64, "{:?}", r.counters);
    assert_eq!(r.counters.heartbeats, hbs.len() as u64, "{:?}", r.counters);
    assert_eq!((r.counters.dropped, r.counters.send_errors), (0, 0), "{:?}", r.counters);
    assert_eq!(
        r.msgs.len(),
        lts.len() + hbs.len(),
        "only LANDING_TARGET and HEARTBEAT are sent"
    );
}

#[test]
fn pymavlink_decodes_landing_targets_and_heartbeats() {
    let _one = common::timing_lock();
    check(&run(2), 2);
}

#[test]
fn mavlink1_frames_carry_no_extensions() {
    let _one = common::timing_lock();
    check(&run(1), 1);
}
