//! `kestrel detect`: detect objects in image files, one JSON object per image.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use kestrel_infer::detect::{ImageDetector, Thresholds};
use kestrel_infer::model::{Detector, SessionOptions};
use kestrel_infer::runtime;

use super::{resolve_model_path, unit_interval, DEFAULT_MODEL};
use crate::exit::{Exit, Failure, OrExit as _};

#[derive(Args)]
pub struct ModelArgs {
    /// ONNX detection model (YOLOv5-style [1,N,5+nc] or YOLOv8-style [1,4+nc,N] output), or a .onnx.zst package
    /// (`kestrel compress --package`; its .sha256 beside it is checked).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Class names file, one per line (default: the model's own `names` metadata).
    #[arg(long, value_name = "PATH")]
    pub labels: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution providers in order of preference, comma-separated.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "cpu")]
    pub ep: Vec<super::Ep>,
    /// Refuse to run unless this provider is registered.
    #[arg(long, value_name = "EP", value_enum)]
    pub require_ep: Option<super::Ep>,
    /// Feed the model through an IoBinding (inputs in ONNX Runtime-allocated memory).
    #[arg(long)]
    pub io_binding: bool,
}

#[derive(Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Minimum score.
    #[arg(long, default_value_t = 0.25, value_parser = unit_interval)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45, value_parser = unit_interval)]
    pub iou: f32,
    /// Maximum detections per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Blank inferences before the first image, so per-image times are steady-state.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Save each image's model input tensor as DIR/<image stem>.npy (what the model saw).
    #[arg(long, value_name = "DIR")]
    pub save_input: Option<PathBuf>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

pub fn load_detector(ort_lib: Option<&Path>, m: &ModelArgs) -> anyhow::Result<Detector> {
    let rt = runtime::init(ort_lib)?;
    let model = resolve_model_path(&m.model);
    let opts = SessionOptions {
        intra_threads: m.threads,
        ep: kestrel_infer::ep::EpOptions {
            providers: m.ep.iter().map(|&e| e.into()).collect(),
            require: m.require_ep.map(Into::into),
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

pub fn run(cli_ort: Option<&Path>, a: &DetectArgs) -> Result<Exit, Failure> {
    let detector = load_detector(cli_ort, &a.model).or_exit(Exit::Setup)?;
    let thresholds = Thresholds {
        conf: a.conf,
        iou: a.iou,
        max_detections: a.max_det,
    };
    let mut det = ImageDetector::new(detector, thresholds).or_exit(Exit::Setup)?;
    det.warm_up(a.warmup).context("warm-up failed").or_exit(Exit::Setup)?;
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
                    det.last_input()
                        .write_npy(&file, info.input_width, info.input_height)
                        .with_context(|| format!("cannot write {}", file.display()))
                        .or_exit(Exit::Failed)?;
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
        written.or_exit(Exit::Failed)?;
    }
    if failed > 0 {
        report!("kestrel: {failed} of {} images failed", a.images.len());
        return Ok(Exit::Failed);
    }
    Ok(Exit::Success)
}
