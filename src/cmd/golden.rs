//! `kestrel golden`: make the FP32 reference ("golden") detections of a model for the start-up self-test.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use kestrel_infer::engine_cache::sha256_hex;
use kestrel_infer::selftest::{GoldenFile, GoldenImage, Reference};

use super::{resolve_model_path, unit_interval, DEFAULT_MODEL};
use crate::exit::{Exit, Failure, OrExit as _};

#[derive(Args)]
pub struct GoldenArgs {
    /// The FP32 model.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Output (default: <model dir>/<model stem>.golden.json). The images must lie in its directory or below.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Minimum score stored (below the self-test's matching threshold, so borderline boxes have a partner).
    #[arg(long, default_value_t = 0.1, value_parser = unit_interval)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45, value_parser = unit_interval)]
    pub iou: f32,
    /// Golden images (JPEG/PNG).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

pub fn run(cli_ort: Option<&Path>, a: &GoldenArgs) -> Result<Exit, Failure> {
    let model = resolve_model_path(&a.model);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| kestrel_infer::selftest::default_golden_path(&model).remove(0));
    let g = make_golden(cli_ort, &model, &out, &a.images, a.conf, a.iou).or_exit(Exit::Setup)?;
    {
        let n: usize = g.images.iter().map(|i| i.detections.len()).sum();
        report!(
            "kestrel: wrote {} ({} images, {n} reference detections, FP32 on the CPU)",
            out.display(),
            g.images.len()
        );
    }
    Ok(Exit::Success)
}

/// `kestrel golden`: the FP32 model on the CPU provider (plain run) over `images`, saved as `out`. Images must
/// lie in `out`'s directory or below (the file refers to them relatively, so they ship together).
fn make_golden(
    cli_ort: Option<&Path>,
    model: &Path,
    out: &Path,
    images: &[PathBuf],
    conf: f32,
    iou: f32,
) -> anyhow::Result<GoldenFile> {
    let rt = kestrel_infer::runtime::init(cli_ort)?;
    let detector =
        kestrel_infer::model::Detector::load(rt, model, None, &kestrel_infer::model::SessionOptions::default())?;
    anyhow::ensure!(
        detector.info.input_precision == kestrel_infer::model::Precision::F32,
        "{} is an FP16 model: the golden reference comes from the FP32 model",
        model.display()
    );
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out_dir = out_dir
        .canonicalize()
        .with_context(|| format!("output directory {}", out_dir.display()))?;
    let mut det = kestrel_infer::detect::ImageDetector::new(
        detector,
        kestrel_infer::detect::Thresholds {
            conf,
            iou,
            max_detections: 300,
        },
    )?;
    let mut out_images = Vec::new();
    for img in images {
        let abs = img
            .canonicalize()
            .with_context(|| format!("golden image {}", img.display()))?;
        let rel = abs.strip_prefix(&out_dir).map_err(|_| {
            anyhow::anyhow!(
                "golden image {} is not under {} (the golden file refers to its images relative to itself, so \
                 they must ship together: copy it there)",
                img.display(),
                out_dir.display()
            )
        })?;
        let file = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let bytes = std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?;
        let report = det.detect_bytes(&file, &bytes)?;
        out_images.push(GoldenImage {
            file,
            sha256: sha256_hex(&bytes),
            width: report.width,
            height: report.height,
            detections: report.detections.clone(),
        });
    }
    let model_file = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reference = Reference {
        model_file,
        model_sha256: kestrel_infer::engine_cache::sha256_file(model)
            .with_context(|| format!("hashing {}", model.display()))?,
        precision: "fp32".into(),
        execution_provider: "cpu".into(),
        conf,
        iou,
        kestrel_version: env!("CARGO_PKG_VERSION").into(),
        ort_version: rt.version.clone(),
    };
    let g = GoldenFile::new(reference, out_images);
    g.save(out)?;
    Ok(g)
}
