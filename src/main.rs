//! `kestrel`: command-line entry point.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kestrel::detect::{ImageDetector, Thresholds};
use kestrel::model::{Detector, SessionOptions};
use kestrel::runtime;

/// `eprintln!` that never panics (stderr may be a closed pipe).
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Exit code when some inputs failed but the command ran.
const EXIT_INPUT_ERRORS: u8 = 1;
/// Exit code when the command could not start (runtime, model, labels, source).
const EXIT_SETUP: u8 = 3;
/// Exit code for an invalid configuration (sysexits EX_CONFIG; systemd should not restart on it).
const EXIT_CONFIG: u8 = 78;

const DEFAULT_MODEL: &str = "models/yolov3-tiny-416.onnx";

#[derive(Parser)]
#[command(name = "kestrel", version, about = "On-device YOLO object detection for drones")]
struct Cli {
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, beside the executable, the project cache, Python onnxruntime).
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `warn,kestrel=debug` (also RUST_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect objects in image files (JPEG, PNG); prints one JSON object per image.
    Detect(DetectArgs),
    /// Run the streaming detector (the daemon) as configured.
    Run(RunArgs),
    /// Validate a configuration file without running.
    CheckConfig(ConfigArgs),
    /// Measure bare inference, preprocessing and the full pipeline, interleaved.
    Bench(kestrel::bench::BenchArgs),
    /// List V4L2 cameras with their pixel formats, sizes and frame rates.
    Devices(DevicesArgs),
    /// Connect to a running daemon's detection socket and print its messages (one JSON object per line).
    Subscribe(SubscribeArgs),
    /// Make the FP32 reference ("golden") detections of a model on a few images, for the start-up self-test:
    /// CPU execution provider, FP32 model; written beside the model as <stem>.golden.json.
    Golden(GoldenArgs),
    /// Build and cache the TensorRT engine for a config's model ahead of flight, with progress and a summary.
    BuildEngine(BuildEngineArgs),
}

#[derive(Args)]
struct GoldenArgs {
    /// The FP32 model.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Output (default: <model dir>/<model stem>.golden.json). The images must lie in its directory or below.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Minimum score stored (below the self-test's matching threshold, so borderline boxes have a partner).
    #[arg(long, default_value_t = 0.1, value_parser = unit_interval)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45, value_parser = unit_interval)]
    iou: f32,
    /// Golden images (JPEG/PNG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

#[derive(Args)]
struct BuildEngineArgs {
    /// Configuration file: model, [runtime.tensorrt] options and the engine-cache directory.
    #[arg(long, short, value_name = "PATH", default_value = kestrel::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Build even when a valid engine is cached (replaces it).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct SubscribeArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = "/run/kestrel/detections.sock")]
    socket: PathBuf,
    /// Wire format to ask for (printed as JSON either way).
    #[arg(long, value_name = "json|binary", default_value = "json")]
    format: String,
    /// Only detections of this class (label); frames without one are not printed. Repeatable.
    #[arg(long, value_name = "NAME")]
    class: Vec<String>,
    /// Exit after this many detections messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print only detections messages (no hello/status).
    #[arg(long)]
    detections_only: bool,
    /// One human-readable line per message instead of JSON.
    #[arg(long)]
    text: bool,
    /// Give up when nothing (not even a status) arrives for this long.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
}

fn run_subscribe(a: &SubscribeArgs) -> ExitCode {
    use kestrel::client::{ClientError, Format, Message, Subscriber};
    let format = match a.format.as_str() {
        "json" => Format::Json,
        "binary" => Format::Binary,
        other => {
            report!("kestrel: error: --format {other}: expected json or binary");
            return ExitCode::from(2);
        }
    };
    let mut sub = match Subscriber::connect(&a.socket, format) {
        Ok(s) => s,
        Err(e) => {
            report!("kestrel: error: {e}");
            return ExitCode::from(3);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let timeout = std::time::Duration::from_millis(a.timeout_ms);
    let mut idle = std::time::Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let msg = match sub.next(std::time::Duration::from_millis(200)) {
            Ok(Some(m)) => {
                idle = std::time::Duration::ZERO;
                m
            }
            Ok(None) => {
                idle += std::time::Duration::from_millis(200);
                if idle >= timeout {
                    report!(
                        "kestrel: error: nothing from {} for {} ms",
                        a.socket.display(),
                        a.timeout_ms
                    );
                    return ExitCode::from(1);
                }
                continue;
            }
            Err(ClientError::Closed) => {
                report!("kestrel: the daemon closed the connection");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                report!("kestrel: error: {e}");
                return ExitCode::from(1);
            }
        };
        let line = match msg {
            Message::Detections(mut d) => {
                if !a.class.is_empty() {
                    d.detections.retain(|x| a.class.contains(&x.label));
                    if d.detections.is_empty() {
                        continue;
                    }
                }
                seen += 1;
                if a.text {
                    let dets: Vec<String> = d
                        .detections
                        .iter()
                        .take(8)
                        .map(|x| match (x.angle_x, x.angle_y) {
                            (Some(ax), Some(ay)) => format!("{} {:.2} ({:+.3},{:+.3} rad)", x.label, x.score, ax, ay),
                            _ => format!("{} {:.2}", x.label, x.score),
                        })
                        .collect();
                    let dets = if dets.is_empty() {
                        "-".to_string()
                    } else {
                        dets.join(" ")
                    };
                    serde_json::Value::String(format!("frame {:>6} | {:6.1} ms | {dets}", d.seq, d.latency_ms))
                } else {
                    let mut v = serde_json::to_value(&d).unwrap_or_default();
                    v["type"] = "detections".into();
                    v
                }
            }
            Message::Status(st) if a.text => serde_json::Value::String(format!(
                "status {:?} {} | in {:.1} fps, out {:.1} fps, p50 {:.1} ms",
                st.health, st.reason, st.fps_in, st.fps_out, st.latency_ms.p50
            )),
            _ if a.detections_only => continue,
            Message::Hello(h) => with_type("hello", &*h),
            Message::Status(s) => with_type("status", &*s),
            Message::Missed { count } => serde_json::json!({"type": "missed", "count": count}),
            Message::Error { error } => {
                report!("kestrel: the daemon refused: {error}");
                return ExitCode::from(1);
            }
            Message::FormatSwitch { format } => serde_json::json!({"type": "format", "format": format}),
            Message::Unknown { kind } => serde_json::json!({"type": kind}),
        };
        let written = match &line {
            serde_json::Value::String(t) => writeln!(out, "{t}"),
            v => writeln!(out, "{v}"),
        };
        if written.and_then(|_| out.flush()).is_err() {
            return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
        }
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn with_type<T: serde::Serialize>(kind: &str, v: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    v["type"] = kind.into();
    v
}

#[derive(Args)]
struct DevicesArgs {
    /// Only these nodes (default: every /dev/video*).
    #[arg(value_name = "DEVICE")]
    devices: Vec<PathBuf>,
    /// One JSON array instead of text.
    #[arg(long)]
    json: bool,
}

fn run_devices(a: &DevicesArgs) -> ExitCode {
    use kestrel::source::v4l2::devices;
    let list: Vec<_> = if a.devices.is_empty() {
        devices::list()
    } else {
        a.devices.iter().map(|d| devices::describe(d)).collect()
    };
    let out = if a.json {
        match serde_json::to_string_pretty(&list) {
            Ok(s) => s + "\n",
            Err(e) => {
                report!("kestrel: error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        devices::render(&list)
    };
    if std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).is_err() {
        return ExitCode::from(1);
    }
    // Named devices that could not be queried are an error; an empty machine is not.
    if !a.devices.is_empty() && list.iter().any(|d| d.error.is_some()) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file.
    #[arg(long, short, value_name = "PATH", default_value = kestrel::config::DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Override source.path (an .mjpeg file, an image file or a directory of images; the kind follows).
    #[arg(long, value_name = "PATH")]
    source: Option<PathBuf>,
    /// Serve detections on this socket (sets publish.enabled and publish.socket).
    #[arg(long, value_name = "PATH", conflicts_with = "no_socket")]
    socket: Option<PathBuf>,
    /// No detection socket (publish.enabled = false).
    #[arg(long)]
    no_socket: bool,
    /// Use this V4L2 camera (sets source.kind = "v4l2" and source.device).
    #[arg(long, value_name = "PATH", conflicts_with = "source")]
    device: Option<PathBuf>,
    /// Override source.fps_hz (0: as fast as possible).
    #[arg(long)]
    fps: Option<f64>,
    /// Override model.path.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Override model.conf.
    #[arg(long, value_parser = unit_interval)]
    conf: Option<f32>,
    /// Override output.format.
    #[arg(long, value_parser = ["json", "text"])]
    format: Option<String>,
    /// Stop after this many published frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
}

fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

#[derive(Args)]
struct ModelArgs {
    /// ONNX detection model (YOLOv5-style [1,N,5+nc] or YOLOv8-style [1,4+nc,N] output).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Class names file, one per line (default: the model's own `names` metadata).
    #[arg(long, value_name = "PATH")]
    labels: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Execution providers in order of preference, comma-separated.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "cpu")]
    ep: Vec<kestrel::ep::EpKind>,
    /// Refuse to run unless this provider is registered.
    #[arg(long, value_name = "EP", value_enum)]
    require_ep: Option<kestrel::ep::EpKind>,
    /// Feed the model through an IoBinding (inputs in ONNX Runtime-allocated memory).
    #[arg(long)]
    io_binding: bool,
}

#[derive(Args)]
struct DetectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Minimum score.
    #[arg(long, default_value_t = 0.25, value_parser = unit_interval)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45, value_parser = unit_interval)]
    iou: f32,
    /// Maximum detections per image.
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// Blank inferences before the first image, so per-image times are steady-state.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Save each image's model input tensor as DIR/<image stem>.npy (what the model saw).
    #[arg(long, value_name = "DIR")]
    save_input: Option<PathBuf>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// The default model path is relative to the project; also look beside the executable's ancestors so
/// `target/release/kestrel` works from any directory.
fn resolve_model_path(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() || p != Path::new(DEFAULT_MODEL) {
        return p.to_path_buf();
    }
    let exe = std::env::current_exe().ok();
    exe.as_deref()
        .and_then(Path::parent)
        .into_iter()
        .flat_map(|d| d.ancestors().take(4))
        .map(|d| d.join(p))
        .find(|c| c.exists())
        .unwrap_or_else(|| p.to_path_buf())
}

fn load_detector(ort_lib: Option<&Path>, m: &ModelArgs) -> anyhow::Result<Detector> {
    let rt = runtime::init(ort_lib)?;
    let model = resolve_model_path(&m.model);
    let opts = SessionOptions {
        intra_threads: m.threads,
        ep: kestrel::ep::EpOptions {
            providers: m.ep.clone(),
            require: m.require_ep,
            ..Default::default()
        },
        io_binding: m.io_binding,
        ..Default::default()
    };
    if let Err((field, reason)) = opts.ep.validate() {
        anyhow::bail!(
            "--{}: {reason}",
            if field == "runtime.require_ep" {
                "require-ep"
            } else {
                "ep"
            }
        );
    }
    let detector = Detector::load(rt, &model, m.labels.as_deref(), &opts)?;
    log::info!("model {}", detector.info);
    Ok(detector)
}

fn run_detect(cli_ort: Option<&Path>, a: &DetectArgs) -> ExitCode {
    let detector = match load_detector(cli_ort, &a.model) {
        Ok(d) => d,
        Err(e) => {
            report!("kestrel: error: {e:#}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let thresholds = Thresholds {
        conf: a.conf,
        iou: a.iou,
        max_detections: a.max_det,
    };
    let mut det = match ImageDetector::new(detector, thresholds) {
        Ok(d) => d,
        Err(e) => {
            report!("kestrel: error: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if let Err(e) = det.warm_up(a.warmup) {
        report!("kestrel: error: warm-up failed: {e}");
        return ExitCode::from(EXIT_SETUP);
    }
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    for path in &a.images {
        let line = match det.detect_file(path) {
            Ok(report) => {
                if let Some(dir) = &a.save_input {
                    let stem = path
                        .file_stem()
                        .map_or_else(|| "input".into(), |s| s.to_string_lossy().into_owned());
                    let file = dir.join(format!("{stem}.npy"));
                    let info = &det.detector.info;
                    if let Err(e) = det.last_input().write_npy(&file, info.input_width, info.input_height) {
                        report!("kestrel: error: cannot write {}: {e}", file.display());
                        return ExitCode::from(EXIT_INPUT_ERRORS);
                    }
                }
                if a.pretty {
                    serde_json::to_string_pretty(&report)
                } else {
                    serde_json::to_string(&report)
                }
            }
            Err(e) => {
                failed += 1;
                report!("kestrel: error: {e}");
                serde_json::to_string(
                    &serde_json::json!({ "image": path.display().to_string(), "error": e.to_string() }),
                )
            }
        };
        let written = line.context("serialising the report").and_then(|l| {
            let mut out = stdout.lock();
            writeln!(out, "{l}")
                .and_then(|()| out.flush())
                .context("writing to stdout")
        });
        if let Err(e) = written {
            report!("kestrel: error: {e:#}");
            return ExitCode::from(EXIT_INPUT_ERRORS);
        }
    }
    if failed > 0 {
        report!("kestrel: {failed} of {} images failed", a.images.len());
        return ExitCode::from(EXIT_INPUT_ERRORS);
    }
    ExitCode::SUCCESS
}

fn load_config(a: &ConfigArgs) -> Result<kestrel::config::Config, ExitCode> {
    kestrel::config::Config::load(&a.config).map_err(|e| {
        report!("kestrel: error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run_check_config(a: &ConfigArgs) -> ExitCode {
    let cfg = match load_config(a) {
        Ok(c) => c,
        Err(code) => return code,
    };
    use kestrel::config::SourceKind;
    let mut problems = Vec::new();
    if !cfg.model.path.is_file() {
        problems.push(("model.path", format!("{} does not exist", cfg.model.path.display())));
    }
    match cfg.source.kind {
        SourceKind::Images | SourceKind::Mjpeg if !cfg.source.path.exists() => {
            problems.push(("source.path", format!("{} does not exist", cfg.source.path.display())));
        }
        SourceKind::V4l2 if !cfg.source.device.exists() => {
            // Not an error: the daemon waits for the camera. Worth saying, though.
            report!(
                "kestrel: note: config {}: source.device {} is not present now (the daemon waits for it)",
                a.config.display(),
                cfg.source.device.display()
            );
        }
        _ => {}
    }
    if problems.is_empty() {
        let _ = writeln!(std::io::stdout(), "{}: OK", a.config.display());
        ExitCode::SUCCESS
    } else {
        for (field, why) in problems {
            report!("kestrel: error: config {}: field `{field}`: {why}", a.config.display());
        }
        ExitCode::from(EXIT_CONFIG)
    }
}

/// The run configuration: the file, then the command-line overrides (which also win on every reload).
fn run_config(a: &RunArgs) -> Result<kestrel::config::Config, kestrel::config::ConfigError> {
    use kestrel::config::{OutputFormat, SourceKind};
    let mut cfg = kestrel::config::Config::load(&a.config.config)?;
    if let Some(p) = &a.source {
        cfg.source.kind = if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mjpeg") || e.eq_ignore_ascii_case("mjpg"))
        {
            SourceKind::Mjpeg
        } else {
            SourceKind::Images
        };
        cfg.source.path = p.clone();
    }
    if let Some(p) = &a.socket {
        cfg.publish.enabled = true;
        cfg.publish.socket = p.clone();
    }
    if a.no_socket {
        cfg.publish.enabled = false;
    }
    if let Some(d) = &a.device {
        cfg.source.kind = SourceKind::V4l2;
        cfg.source.device = d.clone();
    }
    if let Some(f) = a.fps {
        cfg.source.fps_hz = f;
    }
    if let Some(m) = &a.model {
        cfg.model.path = m.clone();
    }
    if let Some(c) = a.conf {
        cfg.model.conf = c;
    }
    match a.format.as_deref() {
        Some("text") => cfg.output.format = OutputFormat::Text,
        Some(_) => cfg.output.format = OutputFormat::Json,
        None => {}
    }
    cfg.validate(&a.config.config)?;
    Ok(cfg)
}

fn run_daemon(cli: &Cli, a: &RunArgs) -> ExitCode {
    let cli_ort = cli.ort_lib.as_deref();
    let cfg = match run_config(a) {
        Ok(c) => c,
        Err(e) => {
            init_logging(cli.log.as_deref(), None);
            report!("kestrel: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(cli.log.as_deref(), cfg.log.filter.as_deref());
    let stop = Arc::new(AtomicBool::new(false));
    let reload_requested = Arc::new(AtomicBool::new(false));
    let handlers = [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &reload_requested),
    ];
    for (sig, flag) in handlers {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            report!("kestrel: error: cannot install signal handler: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    }
    let mut notifier = kestrel::service::Notifier::from_env(&cfg.service);
    let daemon = match kestrel::daemon::start(&cfg, cli_ort, stop.clone(), &mut |s| notifier.status(s)) {
        Ok(d) => d,
        Err(e) => {
            report!("kestrel: error: {e:#}");
            notifier.status(&format!("failed: {e:#}"));
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let kestrel::daemon::Daemon {
        pipeline: started,
        publisher,
        mut reload,
        source_name,
    } = daemon;
    notifier.set_source_name(&source_name);
    if let Some(n) = a.max_frames {
        let (m, stop) = (started.metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && m.published_total() < n {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let every =
        (cfg.metrics.log_interval_ms > 0).then(|| std::time::Duration::from_millis(cfg.metrics.log_interval_ms));
    let metrics = started.metrics.clone();
    let mut stopping = false;
    let result = started.wait_with(every, &mut || {
        if stop.load(Ordering::Relaxed) {
            if !stopping {
                stopping = true;
                notifier.stopping("stopping");
            }
            return;
        }
        if reload_requested.swap(false, Ordering::SeqCst) {
            reload_config(a, &mut reload, &mut notifier);
        }
        notifier.tick(&metrics);
    });
    if !stopping {
        notifier.stopping("stopping: the pipeline ended");
    }
    drop(publisher); // after the pipeline: subscribers see every published frame; removes the socket
    match result {
        Ok(s) => {
            log::info!(
                "stopped after {:.1} s ({}): {}",
                s.elapsed.as_secs_f64(),
                if s.stopped { "stop requested" } else { "source ended" },
                metrics.snapshot()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report!("kestrel: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP: read the file again; apply the thresholds and output settings, or reject the file and keep
/// running as before. Never fatal.
fn reload_config(a: &RunArgs, reload: &mut kestrel::daemon::Reload, notifier: &mut kestrel::service::Notifier) {
    notifier.reloading();
    let outcome = run_config(a)
        .map_err(anyhow::Error::from)
        .and_then(|new| reload.apply(new));
    let text = match outcome {
        Ok(changes) if changes.is_empty() => {
            log::info!(
                "reload of {}: nothing that can change at run time changed",
                a.config.config.display()
            );
            "running; reloaded (no change)".to_string()
        }
        Ok(changes) => {
            log::info!("reload of {}: {}", a.config.config.display(), changes.join("; "));
            format!("running; reloaded: {}", changes.join("; "))
        }
        Err(e) => {
            log::error!("reload rejected, keeping the running configuration: {e:#}");
            "running; last reload rejected (see the log)".to_string()
        }
    };
    notifier.reloaded(&text);
}

/// True when stderr is connected to the journal: systemd sets JOURNAL_STREAM to "<device>:<inode>" of the
/// stream it gave us (a redirected stderr under systemd does not match and gets the normal format).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Set up the logger: `--log`, else `RUST_LOG`, else the config's `log.filter`, else `warn,kestrel=info`.
/// Under systemd (stderr is the journal) lines carry `<priority>` prefixes and no timestamps.
fn init_logging(cli_filter: Option<&str>, config_filter: Option<&str>) {
    let filter = cli_filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
        .or_else(|| config_filter.map(str::to_string))
        .unwrap_or_else(|| "warn,kestrel=info".into());
    let mut logger = env_logger::Builder::new();
    logger.parse_filters(&filter);
    if stderr_is_journal() {
        // journald stamps and ranks lines itself: "<priority>" prefixes (sd-daemon(3)), no timestamps.
        logger.format(|buf, r| {
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            // One journal entry per line: every line of a multi-line message keeps the priority.
            let text = r.args().to_string();
            for line in text.lines() {
                writeln!(buf, "<{prio}>{}: {line}", r.target())?;
            }
            Ok(())
        });
    } else {
        logger.format_timestamp_millis();
    }
    let _ = logger.try_init();
}

fn run_golden(cli_ort: Option<&Path>, a: &GoldenArgs) -> ExitCode {
    let model = resolve_model_path(&a.model);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| kestrel::selftest::default_golden_path(&model).remove(0));
    match kestrel::selftest::make_golden(cli_ort, &model, &out, &a.images, a.conf, a.iou) {
        Ok(g) => {
            let n: usize = g.images.iter().map(|i| i.detections.len()).sum();
            report!(
                "kestrel: wrote {} ({} images, {n} reference detections, FP32 on the CPU)",
                out.display(),
                g.images.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report!("kestrel: error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run_build_engine(cli_ort: Option<&Path>, a: &BuildEngineArgs) -> ExitCode {
    let cfg = match kestrel::config::Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            report!("kestrel: error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match kestrel::ep::build_engine(cli_ort, &cfg, a.force) {
        Ok(summary) => {
            let _ = writeln!(std::io::stdout(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            report!("kestrel: error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        init_logging(cli.log.as_deref(), None);
    }
    match &cli.command {
        Command::Detect(a) => run_detect(cli.ort_lib.as_deref(), a),
        Command::Run(a) => run_daemon(&cli, a),
        Command::CheckConfig(a) => run_check_config(a),
        Command::Bench(a) => kestrel::bench::run(cli.ort_lib.as_deref(), a),
        Command::Devices(a) => run_devices(a),
        Command::Subscribe(a) => run_subscribe(a),
        Command::Golden(a) => run_golden(cli.ort_lib.as_deref(), a),
        Command::BuildEngine(a) => run_build_engine(cli.ort_lib.as_deref(), a),
    }
}
