//! The `kestrel` binary on bad input: every failure is a clear message and a non-zero exit, never a panic;
//! good images in the same run are still processed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{self, kestrel};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_images_are_reported_and_good_ones_still_processed() {
    let _g = common::shared_lock();
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(common::photo("person.jpg")).unwrap();
    let mut corrupt = jpeg.clone();
    corrupt[5000..50_000].fill(0);
    let files = [
        write(dir.path(), "truncated.jpg", &jpeg[..jpeg.len() / 2]),
        write(dir.path(), "corrupt.jpg", &corrupt),
        write(dir.path(), "notes.txt", b"this is not an image\n"),
        write(dir.path(), "empty.jpg", b""),
        common::photo("eagle.jpg"),
        dir.path().join("does-not-exist.jpg"),
    ];
    let out = kestrel().arg("detect").args(&files).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_no_panic(&stderr);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), files.len(), "one JSON object per image: {stdout}");
    let err = |i: usize| lines[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(err(0).contains("truncated JPEG"), "{}", err(0));
    assert!(err(1).contains("corrupt JPEG"), "{}", err(1));
    assert!(err(2).contains("not a JPEG or PNG"), "{}", err(2));
    assert!(err(3).contains("empty input"), "{}", err(3));
    assert_eq!(lines[4]["detections"][0]["label"], "bird");
    assert!(
        err(5).contains("cannot read") && err(5).contains("does-not-exist.jpg"),
        "{}",
        err(5)
    );
    assert!(stderr.contains("5 of 6 images failed"), "{stderr}");
}

#[test]
fn missing_model_is_a_setup_error() {
    let _g = common::shared_lock();
    let out = kestrel()
        .args(["detect", "--model", "/nonexistent/model.onnx"])
        .arg(common::photo("dog.jpg"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("/nonexistent/model.onnx") && stderr.contains("not found"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
}

#[test]
fn model_with_wrong_output_shape_is_refused_naming_the_shapes() {
    let _g = common::shared_lock();
    let model = common::fixture("bad_output_rank.onnx");
    let out = kestrel()
        .arg("detect")
        .arg("--model")
        .arg(&model)
        .arg(common::photo("dog.jpg"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("[1, 10]") && stderr.contains("[1, N, 5+nc]") && stderr.contains("[1, 4+nc, N]"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
}

#[test]
fn missing_runtime_path_is_a_clear_error() {
    let _g = common::shared_lock();
    let photo = common::photo("dog.jpg");
    let out = kestrel()
        .args(["--ort-lib", "/nonexistent/libonnxruntime.so", "detect"])
        .arg(&photo)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so [--ort-lib]: not found"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/fetch-onnxruntime.sh"), "{stderr}");
    assert_no_panic(&stderr);

    // A file that exists but is not a shared library.
    let dir = tempfile::tempdir().unwrap();
    let fake = write(dir.path(), "libonnxruntime.so", b"not an ELF file");
    let out = kestrel()
        .env("ORT_DYLIB_PATH", &fake)
        .arg("detect")
        .arg(&photo)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("[ORT_DYLIB_PATH]") && stderr.contains("failed to load"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
}

#[test]
fn runtime_search_lists_every_place_tried() {
    let _g = common::shared_lock();
    // A copy of the binary outside the project, run from an empty directory with an empty HOME: none of the
    // search locations has the library (unless the machine has a system-wide Python onnxruntime).
    for prefix in ["/usr/lib", "/usr/local/lib"] {
        for entry in std::fs::read_dir(prefix).into_iter().flatten().flatten() {
            for pkgs in ["site-packages", "dist-packages"] {
                let capi = entry.path().join(pkgs).join("onnxruntime/capi");
                assert!(
                    !capi.exists(),
                    "this machine has a system-wide {}: the isolation this test needs is impossible",
                    capi.display()
                );
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("kestrel");
    std::fs::copy(env!("CARGO_BIN_EXE_kestrel"), &exe).unwrap();
    // Another test thread forking while the copy's write descriptor was open gives its child that descriptor
    // for a moment: exec then fails with ETXTBSY (26) until the child has exec'ed. Retry briefly.
    let out = (0..50)
        .find_map(|_| {
            match Command::new(&exe)
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .env_remove("ORT_DYLIB_PATH")
                .env_remove("VIRTUAL_ENV")
                .args(["detect", "x.jpg"])
                .output()
            {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                other => Some(other.unwrap()),
            }
        })
        .expect("the copied binary stayed busy (ETXTBSY) for 1 s");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    for place in [
        "[beside the executable]",
        "[project cache]",
        "[Python onnxruntime package]",
        ".cache/onnxruntime/1.31.1",
    ] {
        assert!(stderr.contains(place), "{place} missing from: {stderr}");
    }
    assert_no_panic(&stderr);
}

#[test]
fn thresholds_are_validated() {
    let _g = common::shared_lock();
    let out = kestrel().args(["detect", "--conf", "1.5", "x.jpg"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("not a number from 0 to 1"), "{stderr}");
}

/// Under systemd (JOURNAL_STREAM naming our stderr) log lines carry sd-daemon priority prefixes and no
/// timestamps; ONNX Runtime's own messages come through the same logger. Otherwise: timestamps.
#[test]
fn journald_format_when_stderr_is_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    let _g = common::shared_lock();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal.txt");
    let run = |journal: bool| {
        let f = std::fs::File::create(&log).unwrap();
        let meta = f.metadata().unwrap();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kestrel"));
        c.current_dir(common::root())
            .args(["--log", "info", "detect", ".cache/darknet/dog.jpg"])
            .stdout(std::process::Stdio::null())
            .stderr(f);
        // A stream systemd would name, or one that is not ours (stderr redirected under systemd).
        let v = if journal {
            format!("{}:{}", meta.dev(), meta.ino())
        } else {
            format!("{}:{}", meta.dev(), meta.ino() + 1)
        };
        assert!(c.env("JOURNAL_STREAM", v).status().unwrap().success());
        std::fs::read_to_string(&log).unwrap()
    };
    let j = run(true);
    assert!(
        j.lines()
            .any(|l| l.starts_with("<6>kestrel_infer::runtime: ONNX Runtime")),
        "{j}"
    );
    assert!(j.lines().any(|l| l.starts_with("<6>ort::")), "ORT's own log lines: {j}");
    assert!(j.lines().all(|l| l.starts_with('<')), "{j}");
    let plain = run(false);
    assert!(plain.lines().all(|l| l.starts_with("[20")), "{plain}");
}

/// systemd's `MemoryDenyWriteExecute=yes` (kestrel.service) is `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`
/// on Linux >= 6.3 with systemd >= 253 (a seccomp filter with the same effect before). A wrapper sets it,
/// proves it is enforced (a writable+executable mapping is refused), then execs `kestrel detect`: ONNX
/// Runtime's CPU provider must still detect the person.
#[test]
fn detection_works_with_write_xor_execute_enforced_like_memory_deny_write_execute() {
    let _g = common::shared_lock();
    let wrapper = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed (errno %d): this test needs Linux >= 6.3" % ctypes.get_errno())
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
rwx = libc.mmap(None, 4096, 7, 0x22, -1, 0)  # PROT_READ|WRITE|EXEC, MAP_PRIVATE|MAP_ANONYMOUS
if rwx not in (None, ctypes.c_void_p(-1).value):
    sys.exit("a writable+executable mapping was allowed: W^X is not enforced")
os.execv(sys.argv[1], sys.argv[1:])
"#;
    let out = Command::new("python3")
        .current_dir(common::root())
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .args(["-c", wrapper, env!("CARGO_BIN_EXE_kestrel"), "detect"])
        .arg(common::photo("person.jpg"))
        .output()
        .expect("python3");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_no_panic(&stderr);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let labels: Vec<&str> = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.first(), Some(&"person"), "{stdout}");
}

/// ONNX Runtime's own log messages reach our logger (target `ort`), so `--log`/`RUST_LOG`/`[log] filter`
/// and the journald format apply to them too.
#[test]
fn onnx_runtime_messages_reach_the_logger() {
    let _g = common::shared_lock();
    let out = kestrel()
        .args(["--log", "warn,ort=info", "detect"])
        .arg(common::photo("person.jpg"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("INFO  ort::logging]") && l.contains("Session Options")),
        "no ONNX Runtime message:\n{stderr}"
    );
    let quiet = kestrel()
        .args(["--log", "warn", "detect"])
        .arg(common::photo("person.jpg"))
        .output()
        .unwrap();
    assert!(!text(&quiet).1.contains("ort::logging] Session Options"));
}
