//! `kestrel evaluate`: the detection fidelity of a model against a reference model's detections or against
//! labels (COCO mAP@0.5 and mAP@0.5:0.95, matched IoU, score drift), with optional side-by-side drawings.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use kestrel_compress::annotate::{self, Mark};
use kestrel_compress::evaluate::{
    evaluate, load_yolo_labels, truth_from_reference, yolo_label_path, CocoLabels, Evaluation, Truth,
};
use kestrel_infer::detect::{ImageDetector, LabelledDetection, Thresholds};

use super::detect::{load_detector, ModelArgs};
use super::unit_interval;
use crate::exit::{Exit, Failure, OrExit as _};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("truth").required(true).args(["reference", "labels"])))]
pub struct EvaluateArgs {
    /// The ONNX detection model to evaluate (or a .onnx.zst package).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Reference model: its detections scoring at least --truth-score are the ground truth.
    #[arg(long, value_name = "PATH")]
    pub reference: Option<PathBuf>,
    /// Ground-truth labels: a directory of YOLO `<image stem>.txt` files (`class cx cy w h`, normalised), or
    /// a COCO instances JSON file (categories matched to the model's class names, else by their order).
    #[arg(long, value_name = "DIR|FILE.json")]
    pub labels: Option<PathBuf>,
    /// Class names file, one per line, for both models (default: each model's own `names` metadata).
    #[arg(long, value_name = "PATH")]
    pub names: Option<PathBuf>,
    /// Minimum score of the evaluated model's detections (COCO evaluates at 0.001).
    #[arg(long, default_value_t = 0.001, value_parser = unit_interval)]
    pub conf: f32,
    /// NMS IoU threshold, both models.
    #[arg(long, default_value_t = 0.45, value_parser = unit_interval)]
    pub iou: f32,
    /// Maximum detections per image, both models (the mAP counts at most 100 per image and class).
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Reference detections scoring at least this are ground truth; also the least score drawn by --annotate.
    #[arg(long, default_value_t = 0.25, value_parser = unit_interval)]
    pub truth_score: f32,
    /// Print the evaluation as one JSON object, with every image's truths and detections.
    #[arg(long)]
    pub json: bool,
    /// Write DIR/<image stem>.png per image: the truth's boxes and the model's (those scoring at least
    /// --truth-score), in two colours with a legend.
    #[arg(long, value_name = "DIR")]
    pub annotate: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution providers in order of preference, comma-separated, both models.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "cpu")]
    pub ep: Vec<super::Ep>,
    /// Refuse to run unless this provider is registered.
    #[arg(long, value_name = "EP", value_enum)]
    pub require_ep: Option<super::Ep>,
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

impl EvaluateArgs {
    fn model_args(&self, model: &Path) -> ModelArgs {
        ModelArgs {
            model: model.to_path_buf(),
            labels: self.names.clone(),
            threads: self.threads,
            ep: self.ep.clone(),
            require_ep: self.require_ep,
            io_binding: false,
        }
    }
}

/// Where the ground truth comes from.
enum TruthSource {
    Reference(Box<ImageDetector>),
    Yolo(PathBuf),
    Coco(CocoLabels),
}

/// What `--json` prints about the truth.
#[derive(serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum TruthKind {
    Reference { model: String, min_score: f32 },
    YoloLabels { dir: String },
    CocoLabels { file: String },
}

/// One image's truths and detections, exactly as evaluated.
#[derive(serde::Serialize)]
struct ImageResult {
    image: String,
    width: u32,
    height: u32,
    truths: Vec<Truth>,
    detections: Vec<LabelledDetection>,
}

/// The `--json` object.
#[derive(serde::Serialize)]
struct Report<'a> {
    model: String,
    truth: TruthKind,
    conf: f32,
    iou: f32,
    max_det: usize,
    #[serde(flatten)]
    evaluation: &'a Evaluation,
    per_image: Vec<ImageResult>,
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
}

pub fn run(cli_ort: Option<&Path>, a: &EvaluateArgs) -> Result<Exit, Failure> {
    let thresholds = Thresholds {
        conf: a.conf,
        iou: a.iou,
        max_detections: a.max_det,
    };
    let detector = load_detector(cli_ort, &a.model_args(&a.model)).or_exit(Exit::Setup)?;
    let mut model = ImageDetector::new(detector, thresholds).or_exit(Exit::Setup)?;
    let labels = model.detector.info.labels.clone();
    // The reference runs at the same thresholds: NMS keeps a box or not by the higher-scoring boxes only,
    // so its detections above --truth-score do not depend on --conf.
    let (mut source, truth_kind, legend_truth) = match (&a.reference, &a.labels) {
        (Some(r), _) => {
            let d = load_detector(cli_ort, &a.model_args(r)).or_exit(Exit::Setup)?;
            let kind = TruthKind::Reference {
                model: r.display().to_string(),
                min_score: a.truth_score,
            };
            let det = ImageDetector::new(d, thresholds).or_exit(Exit::Setup)?;
            (TruthSource::Reference(Box::new(det)), kind, stem(r))
        }
        (None, Some(l)) if l.is_dir() => (
            TruthSource::Yolo(l.clone()),
            TruthKind::YoloLabels {
                dir: l.display().to_string(),
            },
            "labels".to_string(),
        ),
        (None, Some(l)) => {
            let coco = CocoLabels::load(l, &labels).or_exit(Exit::Setup)?;
            let kind = TruthKind::CocoLabels {
                file: l.display().to_string(),
            };
            (TruthSource::Coco(coco), kind, "labels".to_string())
        }
        // clap requires one of the two.
        (None, None) => {
            return Err(Failure::new(
                Exit::Usage,
                anyhow::anyhow!("--reference or --labels is required"),
            ))
        }
    };
    if let Some(dir) = &a.annotate {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .or_exit(Exit::Setup)?;
    }
    let legend = (legend_truth.as_str(), &*stem(&a.model));
    let mut pairs = Vec::with_capacity(a.images.len());
    let mut per_image = Vec::with_capacity(a.images.len());
    for path in &a.images {
        let report = model.detect_file(path).or_exit(Exit::Failed)?;
        let truths = match &mut source {
            TruthSource::Reference(r) => {
                truth_from_reference(&r.detect_file(path).or_exit(Exit::Failed)?.detections, a.truth_score)
            }
            TruthSource::Yolo(dir) => {
                load_yolo_labels(&yolo_label_path(dir, path), report.width, report.height).or_exit(Exit::Failed)?
            }
            TruthSource::Coco(coco) => coco.truths_for(path).or_exit(Exit::Failed)?.to_vec(),
        };
        if let Some(dir) = &a.annotate {
            let out = dir.join(format!("{}.png", stem(path)));
            let rgb = annotate::load_rgb(path).or_exit(Exit::Failed)?;
            let t: Vec<Mark> = truths.iter().map(|t| Mark::truth(t, &labels)).collect();
            let m: Vec<Mark> = report
                .detections
                .iter()
                .filter(|d| d.score >= a.truth_score)
                .map(Mark::detection)
                .collect();
            annotate::save(&annotate::annotate(&rgb, &t, &m, legend), &out).or_exit(Exit::Failed)?;
        }
        per_image.push(ImageResult {
            image: report.image,
            width: report.width,
            height: report.height,
            truths: truths.clone(),
            detections: report.detections.clone(),
        });
        pairs.push((truths, report.detections));
    }
    let evaluation = evaluate(&pairs, &labels);
    let text = if a.json {
        let report = Report {
            model: a.model.display().to_string(),
            truth: truth_kind,
            conf: a.conf,
            iou: a.iou,
            max_det: a.max_det,
            evaluation: &evaluation,
            per_image,
        };
        serde_json::to_string(&report)
            .context("serialising the report")
            .or_exit(Exit::Failed)?
    } else {
        table(&a.model, &truth_kind, &evaluation)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
        .or_exit(Exit::Failed)?;
    Ok(Exit::Success)
}

/// The human-readable summary and per-class table.
fn table(model: &Path, truth: &TruthKind, e: &Evaluation) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let truth = match truth {
        TruthKind::Reference { model, min_score } => format!("{model}'s detections scoring at least {min_score}"),
        TruthKind::YoloLabels { dir } => format!("YOLO labels in {dir}"),
        TruthKind::CocoLabels { file } => format!("COCO labels {file}"),
    };
    let _ = writeln!(s, "model               {}", model.display());
    let _ = writeln!(s, "truth               {truth}");
    let _ = writeln!(
        s,
        "images {}, truths {}, detections {}, matched at IoU 0.5: {}",
        e.images, e.truths, e.detections, e.matched
    );
    let _ = writeln!(s, "mAP@0.5             {:.4}", e.map50);
    let _ = writeln!(s, "mAP@0.5:0.95        {:.4}", e.map50_95);
    let _ = writeln!(s, "matched mean IoU    {:.4}", e.matched_mean_iou);
    let _ = writeln!(s, "mean |Δscore|       {:.4}", e.mean_abs_delta_score);
    if !e.per_class.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>5}  {:<16} {:>7} {:>10} {:>8} {:>13}",
            "class", "label", "truths", "detections", "AP@0.5", "AP@0.5:0.95"
        );
        for c in &e.per_class {
            let _ = writeln!(
                s,
                "{:>5}  {:<16} {:>7} {:>10} {:>8.4} {:>13.4}",
                c.class_id, c.label, c.truths, c.detections, c.ap50, c.ap50_95
            );
        }
    }
    s.truncate(s.trim_end().len());
    s
}
