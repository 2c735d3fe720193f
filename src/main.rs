//! `kestrel`: command-line entry point.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kestrel::detect::{ImageDetector, Thresholds};
use kestrel::model::{Detector, SessionOptions};
use kestrel::runtime;

/// Exit code when some inputs failed but the command ran.
const EXIT_INPUT_ERRORS: u8 = 1;
/// Exit code when the command could not start (runtime, model, labels).
const EXIT_SETUP: u8 = 3;

const DEFAULT_MODEL: &str = "models/yolov3-tiny-416.onnx";

#[derive(Parser)]
#[command(
    name = "kestrel",
    version,
    about = "On-device YOLO object detection for drones"
)]
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
        ..Default::default()
    };
    let detector = Detector::load(rt, &model, m.labels.as_deref(), &opts)?;
    let i = &detector.info;
    log::info!(
        "model {}: input {}x{} {:?}, output {:?}, {} labels ({})",
        i.path.display(),
        i.input_width,
        i.input_height,
        i.input_precision,
        i.layout,
        i.labels.len(),
        i.labels_source
    );
    Ok(detector)
}

fn run_detect(cli_ort: Option<&Path>, a: &DetectArgs) -> ExitCode {
    let detector = match load_detector(cli_ort, &a.model) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kestrel: error: {e:#}");
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
            eprintln!("kestrel: error: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if let Err(e) = det.warm_up(a.warmup) {
        eprintln!("kestrel: error: warm-up failed: {e}");
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
                    if let Err(e) =
                        det.last_input()
                            .write_npy(&file, info.input_width, info.input_height)
                    {
                        eprintln!("kestrel: error: cannot write {}: {e}", file.display());
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
                eprintln!("kestrel: error: {e}");
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
            eprintln!("kestrel: error: {e:#}");
            return ExitCode::from(EXIT_INPUT_ERRORS);
        }
    }
    if failed > 0 {
        eprintln!("kestrel: {failed} of {} images failed", a.images.len());
        return ExitCode::from(EXIT_INPUT_ERRORS);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn,kestrel=info".into());
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format_timestamp_millis()
        .init();
    match &cli.command {
        Command::Detect(a) => run_detect(cli.ort_lib.as_deref(), a),
    }
}
