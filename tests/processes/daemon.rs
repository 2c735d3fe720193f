//! `kestrel run` and `kestrel check-config` as a user runs them: real model, real files, real signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, kestrel};

// These tests run the real model, most of them as fast as the CPU allows (`--fps 0`). Those that only look
// at results share the CPU among themselves (`common::shared_lock()`); the one that times a stop against an
// inference time it measures runs alone (`common::timing_lock()`), so that the inference in flight when the
// signal comes is like the ones it measured.

/// `[pipeline] poll_ms` in examples/kestrel.toml: the timeout of every blocking call in the pipeline.
const POLL: Duration = Duration::from_millis(20);

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn labels(v: &serde_json::Value) -> Vec<String> {
    v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap().to_string())
        .collect()
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn images_source_streams_correct_detections_in_order() {
    let _cpu = common::shared_lock();
    common::photo("person.jpg");
    let out = kestrel()
        .args([
            "run",
            "--no-socket",
            "--config",
            "examples/images.toml",
            "--fps",
            "0",
            "--max-frames",
            "14",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    assert!(lines.len() >= 14, "{} lines", lines.len());
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[..14], (1..=14).collect::<Vec<_>>());
    // The directory is sorted: dog, eagle, giraffe, horses, kite, person, scream, then it loops.
    let dog = labels(&lines[0]);
    assert!(
        dog.contains(&"dog".into()) && dog.contains(&"bicycle".into()),
        "{dog:?}"
    );
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(768), Some(576))
    );
    let person = labels(&lines[5]);
    for want in ["person", "dog", "horse"] {
        assert!(person.contains(&want.into()), "{person:?}");
    }
    assert_eq!(
        labels(&lines[7]),
        dog,
        "the loop comes back to the same frame with the same result"
    );
    for l in &lines {
        let (cap, publ) = (l["capture_ns"].as_u64().unwrap(), l["publish_ns"].as_u64().unwrap());
        assert!(publ > cap && l["latency_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn mjpeg_source_streams_the_demo_clip() {
    let _cpu = common::shared_lock();
    let out = kestrel()
        .args([
            "run",
            "--no-socket",
            "--config",
            "examples/kestrel.toml",
            "--fps",
            "0",
            "--max-frames",
            "40",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    assert!(lines.len() >= 40);
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(960), Some(540))
    );
    // The clip opens on person.jpg: a person and a dog throughout the first seconds.
    let with_person = lines[..40]
        .iter()
        .filter(|l| labels(l).contains(&"person".into()))
        .count();
    let with_dog = lines[..40].iter().filter(|l| labels(l).contains(&"dog".into())).count();
    assert!(
        with_person >= 36 && with_dog >= 36,
        "person in {with_person}, dog in {with_dog} of 40 frames"
    );
}

#[test]
fn sigterm_and_sigint_exit_zero_promptly() {
    let _cpu = common::timing_lock();
    for sig in ["-TERM", "-INT"] {
        let mut child = kestrel()
            .args([
                "run",
                "--no-socket",
                "--config",
                "examples/kestrel.toml",
                "--format",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kept open until the exit: a closed pipe would fail the next write, and the run with it.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // A few frames, and the longest per-frame work among them: this host's speed, measured now.
        let mut work_ms = 0f64;
        for n in 0..3 {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            if n == 0 {
                assert!(line.contains("\"seq\":1"), "{line}");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let stages = &v["stages_ms"];
            let ms: f64 = ["decode", "letterbox", "infer", "postprocess"]
                .iter()
                .map(|k| {
                    stages[*k]
                        .as_f64()
                        .unwrap_or_else(|| panic!("no stages_ms.{k}: {line}"))
                })
                .sum();
            work_ms = work_ms.max(ms);
        }
        // Every stage sees the stop within a poll period or when its frame in flight is done; then the threads
        // are joined, ONNX Runtime is released and the process exits. Allowed: 1 s for that teardown, two poll
        // periods, and four times the longest frame just measured (the frames in flight, with slack).
        let limit = Duration::from_secs(1) + 2 * POLL + Duration::from_secs_f64(4.0 * work_ms / 1e3);
        let t0 = Instant::now();
        Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let status = wait_exit(&mut child, limit);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let status = status.unwrap_or_else(|| {
            panic!("{sig}: still running after {limit:?} (frames took up to {work_ms:.1} ms of work)")
        });
        assert_eq!(status.code(), Some(0), "{sig}");
        eprintln!(
            "{sig}: exited 0 after {:?} (limit {limit:?}; frames took up to {work_ms:.1} ms of work)",
            t0.elapsed()
        );
        drop(out);
    }
}

#[test]
fn a_failing_stage_ends_the_process_non_zero() {
    let _cpu = common::shared_lock();
    // The sink's stdout goes away mid-run: the write fails, the stage fails, the process exits 1.
    let mut child = kestrel()
        .args([
            "run",
            "--no-socket",
            "--config",
            "examples/kestrel.toml",
            "--fps",
            "0",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    drop(out);
    // A hang guard: the next write fails, then the pipeline stops as on a signal.
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("still running after its output closed");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write results"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_config_names_file_field_and_reason() {
    let _cpu = common::shared_lock();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nconf = 2.0\n").unwrap();
    let out = kestrel().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("`model.conf`") && err.contains("2 is not between 0 and 1"),
        "{err}"
    );

    std::fs::write(&bad, "[source]\nkind = \"mjpeg\"\nframe_rate = 3\n").unwrap();
    let out = kestrel().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("bad.toml") && err.contains("frame_rate"), "{err}");

    let out = kestrel()
        .args(["check-config", "--config", "/nonexistent/k.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/k.toml"));

    let out = kestrel().args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "run refuses a bad config the same way");

    let out = kestrel()
        .args(["check-config", "--config", "examples/kestrel.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
