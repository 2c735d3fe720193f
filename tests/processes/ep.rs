//! Execution providers on this CPU-only ONNX Runtime (the PyPI `onnxruntime` build): a required GPU provider
//! is refused with the reason, an optional one is skipped with a WARN and the fallback shows in the daemon's
//! hello and status; the IoBinding path gives the plain path's detections exactly; `build-engine` says why it
//! cannot build here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_infer::detect::{ImageDetector, Thresholds};
use kestrel_infer::ep::{EpError, EpKind, EpOptions};
use kestrel_infer::model::{Detector, ModelError, SessionOptions};
use kestrel_protocol::client::Subscriber;
use kestrel_protocol::{Format, Message};

use crate::common;

fn opts(providers: &[EpKind], require: Option<EpKind>, io_binding: bool) -> SessionOptions {
    SessionOptions {
        intra_threads: 2,
        ep: EpOptions {
            providers: providers.to_vec(),
            require,
            ..EpOptions::default()
        },
        io_binding,
        ..SessionOptions::default()
    }
}

#[test]
fn required_cuda_is_refused_with_the_reason() {
    let _g = common::shared_lock();
    for (required, list) in [
        (EpKind::Cuda, vec![EpKind::Cuda, EpKind::Cpu]),
        (EpKind::Tensorrt, vec![EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu]),
    ] {
        let err = Detector::load(
            common::runtime(),
            &common::model("yolov3-tiny-416.onnx"),
            None,
            &opts(&list, Some(required), false),
        )
        .err()
        .expect("a required GPU provider must not load on the CPU-only runtime");
        let ModelError::Ep(EpError::Required { kind, .. }) = &err else {
            panic!("expected a refusal, got {err}");
        };
        assert_eq!(*kind, required);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("require_ep = \"{required}\"")) && msg.contains("Refusing to start"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("built without the {required} execution provider"))
                && msg.contains("CPUExecutionProvider"),
            "the reason names what is missing: {msg}"
        );
    }
}

#[test]
fn optional_gpu_providers_fall_back_to_the_cpu_with_reasons() {
    let _g = common::shared_lock();
    let det = Detector::load(
        common::runtime(),
        &common::model("yolov3-tiny-416.onnx"),
        None,
        &opts(&[EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu], None, true),
    )
    .unwrap();
    let s = &det.selection;
    assert_eq!(s.active, EpKind::Cpu);
    assert_eq!(s.registered, [EpKind::Cpu]);
    assert_eq!(
        s.skipped.iter().map(|k| k.kind).collect::<Vec<_>>(),
        [EpKind::Tensorrt, EpKind::Cuda]
    );
    let note = s.fallback_note().unwrap();
    assert!(note.starts_with("running on cpu because tensorrt: "), "{note}");
    assert!(note.contains("cuda: the ONNX Runtime loaded from"), "{note}");
    assert_eq!(s.precision, "fp32");
    assert!(det.io_binding());
}

/// Every photo, FP32 and FP16: the IoBinding path (inputs allocated by ONNX Runtime, outputs bound to its
/// CPU memory) gives bit-identical detections to the plain `session.run` path.
#[test]
fn io_binding_gives_identical_detections() {
    let _g = common::shared_lock();
    for model in ["yolov3-tiny-416.onnx", "yolov3-tiny-416-fp16.onnx"] {
        let load = |io_binding| {
            let det = Detector::load(
                common::runtime(),
                &common::model(model),
                None,
                &opts(&[EpKind::Cpu], None, io_binding),
            )
            .unwrap();
            assert_eq!(det.io_binding(), io_binding);
            ImageDetector::new(det, Thresholds::default()).unwrap()
        };
        let (mut plain, mut bound) = (load(false), load(true));
        let mut total = 0;
        for photo in ["person.jpg", "dog.jpg", "horses.jpg", "eagle.jpg"] {
            let p = common::photo(photo);
            let a = plain.detect_file(&p).unwrap();
            // Twice on the bound side: the second run reuses the binding with the same buffers.
            let _ = bound.detect_file(&p).unwrap();
            let b = bound.detect_file(&p).unwrap();
            assert!(!a.detections.is_empty(), "{model} {photo}: nothing detected");
            assert_eq!(a.detections, b.detections, "{model} {photo}");
            total += a.detections.len();
        }
        assert!(total >= 8, "{model}: {total} detections");
        assert!(matches!(
            bound.last_input(),
            kestrel_infer::model::InputTensor::BoundF32(_) | kestrel_infer::model::InputTensor::BoundF16(_)
        ));
    }
}

fn write_config(dir: &Path, runtime: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = \"{model}\"\n[runtime]\nintra_threads = 1\nwarmup_runs = 0\n{runtime}\n\
         [source]\nkind = \"synthetic\"\nformat = \"rgb\"\nwidth = 320\nheight = 240\nfps_hz = 20.0\n\
         [output]\nkind = \"none\"\n[metrics]\nlog_interval_ms = 0\n\
         [publish]\nsocket = \"{sock}\"\nstatus_interval_ms = 200\n",
        model = common::root().join("tests/fixtures/generated/v5_const.onnx").display(),
        sock = dir.join("d.sock").display(),
    );
    let p = dir.join("k.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `kestrel run --config <config>`, logging kestrel's INFO lines.
fn kestrel_run(config: &Path) -> Command {
    let mut c = common::kestrel();
    c.env("RUST_LOG", "warn,kestrel=info")
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn daemon_refuses_a_required_gpu_and_reports_a_fallback_in_hello_and_status() {
    let _g = common::shared_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "execution_providers = [\"cuda\", \"cpu\"]\nrequire_ep = \"cuda\"",
    );
    let out = kestrel_run(&cfg).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("require_ep = \"cuda\"") && log.contains("built without the cuda execution provider"),
        "{log}"
    );

    let cfg = write_config(dir.path(), "execution_providers = [\"cuda\", \"cpu\"]");
    let mut child = kestrel_run(&cfg).spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let log = common::spawn("log-reader", move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let sock = dir.path().join("d.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(t0.elapsed() < Duration::from_secs(30), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut sub = Subscriber::connect(&sock, Format::Json).unwrap();
    let (mut hello, mut status) = (None, None);
    while hello.is_none() || status.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no hello/status");
        match sub.next(Duration::from_secs(5)).unwrap() {
            Some(Message::Hello(h)) => hello = Some(h),
            Some(Message::Status(s)) => status = Some(s),
            _ => {}
        }
    }
    let (hello, status) = (hello.unwrap(), status.unwrap());
    assert_eq!(hello.execution_provider, "cpu");
    assert_eq!(hello.execution_precision.as_deref(), Some("fp32"));
    assert_eq!(status.execution_provider, "cpu");
    let note = hello.execution_provider_fallback.clone().unwrap();
    assert!(note.starts_with("running on cpu because cuda: "), "{note}");
    assert_eq!(status.execution_provider_fallback.as_deref(), Some(note.as_str()));
    drop(sub);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let code = child.wait().unwrap().code();
    let log = log.join().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let warn = log
        .lines()
        .find(|l| l.contains("execution provider cuda skipped"))
        .unwrap_or_else(|| panic!("no skip line in {log}"));
    assert!(warn.contains("WARN"), "the fallback is a WARN: {warn}");
    assert!(
        log.contains("execution provider cpu (fp32; IoBinding, inputs in CPU memory)"),
        "{log}"
    );
}

#[test]
fn build_engine_explains_why_it_cannot_build_here() {
    let _g = common::shared_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .args(["build-engine", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("loading ONNX Runtime") && err.contains("GPU: "),
        "progress lines: {err}"
    );
    assert!(
        err.contains("build-engine needs the TensorRT execution provider")
            && err.contains("built without the tensorrt execution provider"),
        "{err}"
    );
}
