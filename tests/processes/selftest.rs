//! The precision self-test with the trained YOLOv3-tiny on real photos: golden detections made by
//! `kestrel golden` (FP32 model, CPU provider); the FP16 model and the IoBinding path pass against them; a
//! corrupted golden file, a tampered reference and a replaced golden image all fail loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use kestrel_infer::model::{Detector, SessionOptions};
use kestrel_infer::selftest::{self, GoldenFile, Tolerance};

use crate::common;

const PHOTOS: [&str; 3] = ["person.jpg", "dog.jpg", "horses.jpg"];

/// A model directory in `dir` with golden images in `golden/` and `yolov3-tiny-416.golden.json` made by the binary.
fn golden_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    for p in PHOTOS {
        std::fs::copy(common::photo(p), dir.join("golden").join(p)).unwrap();
    }
    let out = dir.join("yolov3-tiny-416.golden.json");
    let st = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .args(["golden", "--model"])
        .arg(common::model("yolov3-tiny-416.onnx"))
        .arg("--out")
        .arg(&out)
        .args(PHOTOS.map(|p| dir.join("golden").join(p)))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    out
}

fn detector(model: &str, io_binding: bool) -> Detector {
    let opts = SessionOptions {
        intra_threads: 2,
        io_binding,
        ..SessionOptions::default()
    };
    Detector::load(common::runtime(), &common::model(model), None, &opts).unwrap()
}

#[test]
fn fp16_and_io_binding_pass_against_fp32_golden_and_corruption_fails_loudly() {
    let _g = common::shared_lock();
    let t = tempfile::tempdir().unwrap();
    let path = golden_dir(t.path());
    let golden = GoldenFile::load(&path).unwrap();
    assert_eq!(golden.images.len(), 3);
    assert_eq!(golden.reference.execution_provider, "cpu");
    assert_eq!(golden.reference.precision, "fp32");
    let labels: Vec<&str> = golden.images[0].detections.iter().map(|d| d.label.as_str()).collect();
    assert!(labels.contains(&"person") && labels.contains(&"dog"), "{labels:?}");
    let tol = Tolerance::default();
    assert_eq!((tol.min_iou, tol.score_abs), (0.9, 0.05));

    for (model, io_binding) in [
        ("yolov3-tiny-416-fp16.onnx", false),
        ("yolov3-tiny-416-fp16.onnx", true),
        ("yolov3-tiny-416.onnx", true),
    ] {
        let (_, report) = selftest::run(detector(model, io_binding), &golden, &path, &tol).unwrap();
        assert!(report.passed(), "{model} io_binding={io_binding}: {}", report.summary());
        assert!(report.summary().contains("passed"), "{}", report.summary());
    }

    // Bytes flipped inside the file (still valid JSON): the checksum catches it.
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"score\": 0.").expect("a score") + "\"score\": 0.".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    let corrupt = t.path().join("corrupt.golden.json");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = GoldenFile::load(&corrupt).unwrap_err().to_string();
    assert!(e.contains("corrupt") && e.contains("corrupt.golden.json"), "{e}");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let e = GoldenFile::load(&corrupt).unwrap_err().to_string();
    assert!(e.contains("corrupt.golden.json"), "{e}");

    // A consistent file (checksum recomputed) whose reference box moved: a mismatch, reported.
    let mut tampered = golden.clone();
    tampered.images[0].detections[0].bbox.0[0] += 40.0;
    tampered.images[0].detections[0].bbox.0[2] += 40.0;
    tampered.checksum = tampered.compute_checksum();
    let tampered_path = t.path().join("tampered.golden.json");
    tampered.save(&tampered_path).unwrap();
    let tampered = GoldenFile::load(&tampered_path).unwrap();
    let (_, report) = selftest::run(
        detector("yolov3-tiny-416-fp16.onnx", true),
        &tampered,
        &tampered_path,
        &tol,
    )
    .unwrap();
    assert!(!report.passed());
    let s = report.summary();
    assert!(
        s.contains("FAILED") && s.contains("person.jpg") && s.contains("missing"),
        "{s}"
    );

    // A golden image replaced: an error, not a pass.
    let img = t.path().join("golden/dog.jpg");
    let mut b = std::fs::read(&img).unwrap();
    let n = b.len();
    b[n - 100] ^= 0x55;
    std::fs::write(&img, b).unwrap();
    let e = selftest::run(detector("yolov3-tiny-416.onnx", false), &golden, &path, &tol)
        .err()
        .expect("a changed golden image must fail")
        .to_string();
    assert!(e.contains("dog.jpg"), "{e}");
}

fn daemon_config(dir: &Path, model: &str, selftest: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = \"{}\"\n[runtime]\nintra_threads = 2\nwarmup_runs = 0\n\
         [source]\nkind = \"synthetic\"\nformat = \"rgb\"\nwidth = 320\nheight = 240\nfps_hz = 10.0\nframes = 3\n\
         [output]\nkind = \"none\"\n[metrics]\nlog_interval_ms = 0\n[publish]\nenabled = false\n[selftest]\n{selftest}\n",
        common::model(model).display()
    );
    let p = dir.join("k.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_daemon(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn,kestrel=info")
        .args(["run", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn daemon_runs_the_self_test_at_start_and_refuses_a_corrupt_golden_file() {
    let _g = common::shared_lock();
    let t = tempfile::tempdir().unwrap();
    let path = golden_dir(t.path());
    let cfg = daemon_config(
        t.path(),
        "yolov3-tiny-416-fp16.onnx",
        &format!("golden = \"{}\"", path.display()),
    );
    let (code, log) = run_daemon(&cfg);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("self-test passed: 3 images") && log.contains("on cpu fp16"),
        "{log}"
    );

    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, &bytes).unwrap();
    let (code, log) = run_daemon(&cfg);
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("yolov3-tiny-416.golden.json"), "{log}");

    // Missing explicitly configured golden file: an error naming it.
    let cfg = daemon_config(
        t.path(),
        "yolov3-tiny-416.onnx",
        "golden = \"/nonexistent/x.golden.json\"",
    );
    let (code, log) = run_daemon(&cfg);
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("/nonexistent/x.golden.json"), "{log}");
}

#[test]
fn golden_command_refuses_fp16_models_and_images_outside_its_directory() {
    let _g = common::shared_lock();
    let t = tempfile::tempdir().unwrap();
    let run = |model: &str, image: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kestrel"))
            .current_dir(common::root())
            .env_remove("ORT_DYLIB_PATH")
            .args(["golden", "--model"])
            .arg(common::model(model))
            .arg("--out")
            .arg(t.path().join("x.golden.json"))
            .arg(image)
            .output()
            .unwrap()
    };
    let out = run("yolov3-tiny-416.onnx", &common::photo("dog.jpg"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("is not under"), "{err}");
    let img = t.path().join("dog.jpg");
    std::fs::copy(common::photo("dog.jpg"), &img).unwrap();
    let out = run("yolov3-tiny-416-fp16.onnx", &img);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("FP16 model"), "{err}");
    assert!(!t.path().join("x.golden.json").exists());
}
