//! The precision self-test. The model's FP32 reference ("golden") detections on a few images are made once by
//! `kestrel golden` on the CPU execution provider and stored beside the model (`<stem>.golden.json`, with a
//! checksum over its content and the sha256 of every image). At start the provider + precision in use runs the
//! same images and must match: same classes, IoU ≥ 0.9, scores within a tolerance. A corrupt golden file or a
//! changed golden image is an error, never a pass.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::detect::LabelledDetection;
use crate::engine_cache::sha256_hex;

/// Golden file format version.
pub const GOLDEN_FORMAT: u32 = 1;

/// Why a golden file (or a golden image) could not be used. Every variant names the file.
#[derive(Debug, Error)]
pub enum SelfTestError {
    /// The golden file or a golden image could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Not valid JSON, truncated, or not the golden-file schema (unknown or missing fields).
    #[error("golden file {path} is corrupt: {source} (regenerate it with `kestrel golden`)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A format version this build does not read.
    #[error("golden file {path}: format {found}, this kestrel reads format {GOLDEN_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    /// The stored checksum is not the one computed from the content: the file was altered.
    #[error(
        "golden file {path} is corrupt: checksum mismatch (stored {expected}, computed {computed}); regenerate \
         it with `kestrel golden`"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        computed: String,
    },
    /// Parsed and checksummed but unusable (no images, a bad detection, a bad image path or threshold).
    #[error("golden file {path}: {reason}")]
    Invalid { path: PathBuf, reason: Unusable },
    /// The detector for the self-test could not be set up.
    #[error("golden file {path}: {source}")]
    Detector {
        path: PathBuf,
        #[source]
        source: Box<crate::detect::DetectError>,
    },
    /// A golden image whose bytes changed, or that does not go through the detector.
    #[error("golden file {path}: golden image {image}: {source}")]
    Image {
        path: PathBuf,
        image: PathBuf,
        #[source]
        source: Box<GoldenImageError>,
    },
    /// The golden file could not be written.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What makes a parsed, checksummed golden file unusable.
#[derive(Debug, Error)]
pub enum Unusable {
    #[error("reference {name} {value} is not in 0..=1")]
    Threshold { name: &'static str, value: f32 },
    #[error("no images")]
    NoImages,
    #[error("image path {0:?} must be relative, below the file")]
    ImagePath(String),
    #[error("{file}: bad detection {detection}")]
    Detection { file: String, detection: LabelledDetection },
}

/// Why one golden image failed (not a mismatch: the test cannot run on it).
#[derive(Debug, Error)]
pub enum GoldenImageError {
    #[error(transparent)]
    Changed(#[from] ImageChanged),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
}

/// A golden image's bytes are not the ones the reference was made from.
#[derive(Debug, Error, PartialEq)]
#[error("sha256 {got}, the golden file says {expected} (image changed or replaced)")]
pub struct ImageChanged {
    pub got: String,
    pub expected: String,
}

impl std::fmt::Display for LabelledDetection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.bbox;
        write!(
            f,
            "{} {:.3} [{:.0}, {:.0}, {:.0}, {:.0}]",
            self.label, self.score, b[0], b[1], b[2], b[3]
        )
    }
}

/// One golden image and its reference detections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenImage {
    /// Relative to the golden file's directory, '/'-separated.
    pub file: String,
    /// Lowercase hex SHA-256 of the image file's bytes.
    pub sha256: String,
    /// Decoded width in pixels.
    pub width: u32,
    /// Decoded height in pixels.
    pub height: u32,
    /// The FP32 reference detections, highest score first.
    pub detections: Vec<LabelledDetection>,
}

/// How the reference was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// The reference model's file name (no directory).
    pub model_file: String,
    /// Lowercase hex SHA-256 of the reference model file.
    pub model_sha256: String,
    /// Precision the reference ran at (`"fp32"`).
    pub precision: String,
    /// Execution provider the reference ran on (`"cpu"`).
    pub execution_provider: String,
    /// Confidence threshold used (the self-test runs at the same one).
    pub conf: f32,
    /// NMS IoU threshold used (the self-test runs at the same one).
    pub iou: f32,
    /// `CARGO_PKG_VERSION` of the kestrel that made the file.
    pub kestrel_version: String,
    /// ONNX Runtime version that made the file.
    pub ort_version: String,
}

/// A golden file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFile {
    /// [`GOLDEN_FORMAT`].
    pub format: u32,
    /// How the reference was made.
    pub reference: Reference,
    /// The golden images, at least one.
    pub images: Vec<GoldenImage>,
    /// Lowercase hex SHA-256 of the canonical JSON of everything above.
    pub checksum: String,
}

/// [`GoldenFile`] without its checksum, borrowed: the checksummed view. Same field order, so `serde_json::to_vec`
/// of it is canonical.
#[derive(Serialize)]
struct Checked<'a> {
    format: u32,
    reference: &'a Reference,
    images: &'a [GoldenImage],
}

impl GoldenFile {
    /// A file of the current [`GOLDEN_FORMAT`] with its checksum computed.
    pub fn new(reference: Reference, images: Vec<GoldenImage>) -> Self {
        let mut g = Self {
            format: GOLDEN_FORMAT,
            reference,
            images,
            checksum: String::new(),
        };
        g.checksum = g.compute_checksum();
        g
    }

    /// Lowercase hex SHA-256 of the canonical (compact) JSON of everything but the checksum. Floats are written in
    /// their shortest round-tripping form, so a saved and reloaded file computes the same checksum. (Serialising
    /// these plain structs cannot fail; the empty fallback would only make the checksum mismatch, never pass.)
    pub fn compute_checksum(&self) -> String {
        let c = Checked {
            format: self.format,
            reference: &self.reference,
            images: &self.images,
        };
        sha256_hex(&serde_json::to_vec(&c).unwrap_or_default())
    }

    /// The file's bytes as saved: pretty JSON plus a trailing newline.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Write atomically: a temporary file in the same directory, `sync_all`, rename over `path`, then a
    /// best-effort fsync of the directory. On failure the temporary file is removed and `path` is untouched.
    pub fn save(&self, path: &Path) -> Result<(), SelfTestError> {
        use std::io::Write as _;
        let werr = |source| SelfTestError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_json_pretty())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            // The temporary file may not exist (create failed); nothing else to report.
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Read and check, in this order: parses (unknown fields refused), format is [`GOLDEN_FORMAT`], checksum
    /// matches, the reference thresholds are in `0..=1`, at least one image, every image path relative and below
    /// the file, every score finite in `0..=1` and every box finite with `x1 <= x2`, `y1 <= y2`.
    pub fn load(path: &Path) -> Result<Self, SelfTestError> {
        let text = std::fs::read(path).map_err(|source| SelfTestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let g: GoldenFile = serde_json::from_slice(&text).map_err(|source| SelfTestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if g.format != GOLDEN_FORMAT {
            return Err(SelfTestError::Format {
                path: path.to_path_buf(),
                found: g.format,
            });
        }
        let computed = g.compute_checksum();
        if computed != g.checksum {
            return Err(SelfTestError::Checksum {
                path: path.to_path_buf(),
                expected: g.checksum.clone(),
                computed,
            });
        }
        let invalid = |reason: Unusable| SelfTestError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        for (name, value) in [("conf", g.reference.conf), ("iou", g.reference.iou)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(Unusable::Threshold { name, value }));
            }
        }
        if g.images.is_empty() {
            return Err(invalid(Unusable::NoImages));
        }
        for img in &g.images {
            if img.file.is_empty() || img.file.starts_with('/') || img.file.split('/').any(|c| c == "..") {
                return Err(invalid(Unusable::ImagePath(img.file.clone())));
            }
            for d in &img.detections {
                let b = d.bbox;
                let finite = d.score.is_finite() && b.0.iter().all(|v| v.is_finite());
                if !(finite && (0.0..=1.0).contains(&d.score)) || b[0] > b[2] || b[1] > b[3] {
                    return Err(invalid(Unusable::Detection {
                        file: img.file.clone(),
                        detection: d.clone(),
                    }));
                }
            }
        }
        Ok(g)
    }

    /// Where `img` is: its `file` joined to the golden file's directory.
    pub fn image_path(&self, golden_path: &Path, img: &GoldenImage) -> PathBuf {
        golden_path.parent().unwrap_or(Path::new(".")).join(&img.file)
    }
}

/// The image's bytes must be the ones the reference was made from (SHA-256 equal to `img.sha256`); the error
/// says both hashes.
pub fn verify_image_bytes(img: &GoldenImage, bytes: &[u8]) -> Result<(), ImageChanged> {
    let got = sha256_hex(bytes);
    if got == img.sha256 {
        Ok(())
    } else {
        Err(ImageChanged {
            got,
            expected: img.sha256.clone(),
        })
    }
}

/// Golden files for `model`, in order: `<stem>.golden.json`, then for an FP16 variant (`-fp16`, `_fp16`,
/// `-f16`, `_f16`) its FP32 parent's. A package `<stem>.onnx.zst` has the golden file of `<stem>.onnx`.
pub fn default_golden_path(model: &Path) -> Vec<PathBuf> {
    let dir = model.parent().unwrap_or(Path::new(""));
    let unpacked;
    let model = if crate::package::is_package(model) {
        unpacked = model.with_extension("");
        unpacked.as_path()
    } else {
        model
    };
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![dir.join(format!("{stem}.golden.json"))];
    for suffix in ["-fp16", "_fp16", "-f16", "_f16"] {
        if let Some(parent) = stem.strip_suffix(suffix).filter(|p| !p.is_empty()) {
            out.push(dir.join(format!("{parent}.golden.json")));
            break;
        }
    }
    out
}

/// Matching rule (default: IoU ≥ 0.9, score ± 0.05, for detections scoring ≥ 0.3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Least IoU between a reference box and its same-class match.
    pub min_iou: f32,
    /// Largest absolute score difference between a detection and its match.
    pub score_abs: f32,
    /// Only detections scoring at least this, on either side, must be matched.
    pub min_score: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            min_iou: 0.9,
            score_abs: 0.05,
            min_score: 0.3,
        }
    }
}

/// One disagreement.
#[derive(Clone, Debug, PartialEq)]
pub enum Mismatch {
    /// A reference detection without a match; `closest` is the best same-class candidate and its IoU.
    Missing {
        expected: LabelledDetection,
        closest: Option<(LabelledDetection, f32)>,
    },
    /// A confident detection the reference does not have.
    Extra { got: LabelledDetection },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing {
                expected,
                closest: Some((c, iou)),
            } => write!(
                f,
                "missing {expected}: best same-class match IoU {iou:.2} score {:.3}",
                c.score
            ),
            Self::Missing {
                expected,
                closest: None,
            } => write!(f, "missing {expected}: no same-class detection"),
            Self::Extra { got } => write!(f, "unexpected {got}"),
        }
    }
}

/// Greedy one-to-one matching of `want` (score ≥ min_score, highest first) against `pool`.
fn unmatched<'a>(
    want: &'a [LabelledDetection],
    pool: &[LabelledDetection],
    tol: &Tolerance,
) -> Vec<(&'a LabelledDetection, Option<(LabelledDetection, f32)>)> {
    let mut used = vec![false; pool.len()];
    let mut order: Vec<&LabelledDetection> = want.iter().filter(|d| d.score >= tol.min_score).collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    for w in order {
        let mut best: Option<(usize, f32)> = None;
        let mut closest: Option<(usize, f32)> = None;
        for (i, p) in pool.iter().enumerate() {
            if p.class_id != w.class_id || used[i] {
                continue;
            }
            let iou = w.bbox.iou(&p.bbox);
            if closest.is_none_or(|(_, c)| iou > c) {
                closest = Some((i, iou));
            }
            if iou >= tol.min_iou && (p.score - w.score).abs() <= tol.score_abs && best.is_none_or(|(_, b)| iou > b) {
                best = Some((i, iou));
            }
        }
        match best {
            Some((i, _)) => used[i] = true,
            None => out.push((w, closest.map(|(i, iou)| (pool[i].clone(), iou)))),
        }
    }
    out
}

/// Compare one image's detections with its reference. Pure.
pub fn compare(golden: &[LabelledDetection], got: &[LabelledDetection], tol: &Tolerance) -> Vec<Mismatch> {
    let mut out: Vec<Mismatch> = unmatched(golden, got, tol)
        .into_iter()
        .map(|(e, closest)| Mismatch::Missing {
            expected: e.clone(),
            closest,
        })
        .collect();
    out.extend(
        unmatched(got, golden, tol)
            .into_iter()
            .map(|(g, _)| Mismatch::Extra { got: g.clone() }),
    );
    out
}

/// One image's outcome.
#[derive(Clone, Debug)]
pub struct ImageOutcome {
    /// The image's `file` as in the golden file.
    pub file: String,
    /// What did not match; empty when the image passed.
    pub mismatches: Vec<Mismatch>,
    /// Reference detections (all scores).
    pub expected: usize,
    /// Detections of the run under test (all scores).
    pub got: usize,
}

/// The whole self-test.
#[derive(Clone, Debug)]
pub struct SelfTestReport {
    /// One outcome per golden image, in the golden file's order.
    pub images: Vec<ImageOutcome>,
    /// The rule the images were compared with.
    pub tolerance: Tolerance,
}

impl SelfTestReport {
    /// No image has a mismatch.
    pub fn passed(&self) -> bool {
        self.images.iter().all(|i| i.mismatches.is_empty())
    }

    /// One line.
    pub fn summary(&self) -> String {
        let t = &self.tolerance;
        if self.passed() {
            let expected: usize = self.images.iter().map(|i| i.expected).sum();
            let got: usize = self.images.iter().map(|i| i.got).sum();
            return format!(
                "self-test passed: {} images, {expected} reference / {got} detections agree (IoU ≥ {:.2}, \
                 score ± {:.2} for scores ≥ {:.2})",
                self.images.len(),
                t.min_iou,
                t.score_abs,
                t.min_score
            );
        }
        let failed: Vec<String> = self
            .images
            .iter()
            .filter(|i| !i.mismatches.is_empty())
            .map(|i| {
                let m: Vec<String> = i.mismatches.iter().map(|m| m.to_string()).collect();
                format!("{}: {}", i.file, m.join("; "))
            })
            .collect();
        format!(
            "self-test FAILED on {} of {} images (IoU ≥ {:.2}, score ± {:.2}): {}",
            failed.len(),
            self.images.len(),
            t.min_iou,
            t.score_abs,
            failed.join(" | ")
        )
    }
}

/// Run every golden image through `detector` (at the golden file's thresholds) and compare. A golden image that
/// is missing or whose bytes changed is an error, not a mismatch.
pub fn run(
    detector: crate::model::Detector,
    golden: &GoldenFile,
    golden_path: &Path,
    tol: &Tolerance,
) -> Result<(crate::model::Detector, SelfTestReport), SelfTestError> {
    let thresholds = crate::detect::Thresholds {
        conf: golden.reference.conf,
        iou: golden.reference.iou,
        max_detections: 300,
    };
    let mut det =
        crate::detect::ImageDetector::new(detector, thresholds).map_err(|source| SelfTestError::Detector {
            path: golden_path.to_path_buf(),
            source: Box::new(source),
        })?;
    let mut images = Vec::new();
    for img in &golden.images {
        let path = golden.image_path(golden_path, img);
        let bytes = std::fs::read(&path).map_err(|source| SelfTestError::Read {
            path: path.clone(),
            source,
        })?;
        let image_err = |e: GoldenImageError| SelfTestError::Image {
            path: golden_path.to_path_buf(),
            image: path.clone(),
            source: Box::new(e),
        };
        verify_image_bytes(img, &bytes).map_err(|e| image_err(e.into()))?;
        let report = det
            .detect_bytes(&path.display().to_string(), &bytes)
            .map_err(|e| image_err(e.into()))?;
        let got = &report.detections;
        images.push(ImageOutcome {
            file: img.file.clone(),
            mismatches: compare(&img.detections, got, tol),
            expected: img.detections.len(),
            got: got.len(),
        });
    }
    Ok((
        det.into_detector(),
        SelfTestReport {
            images,
            tolerance: *tol,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(class_id: u32, score: f32, b: [f32; 4]) -> LabelledDetection {
        LabelledDetection {
            class_id,
            label: format!("c{class_id}"),
            score,
            bbox: kestrel_core::geometry::ImageBox::new(b),
        }
    }

    fn file() -> GoldenFile {
        GoldenFile::new(
            Reference {
                model_file: "m.onnx".into(),
                model_sha256: "00".repeat(32),
                precision: "fp32".into(),
                execution_provider: "cpu".into(),
                conf: 0.1,
                iou: 0.45,
                kestrel_version: "0.1.0".into(),
                ort_version: "1.31.1".into(),
            },
            vec![GoldenImage {
                file: "golden/a.jpg".into(),
                sha256: sha256_hex(b"image"),
                width: 640,
                height: 480,
                detections: vec![
                    d(0, 0.8765, [10.0, 20.0, 110.0, 220.0]),
                    d(16, 0.5, [0.0, 0.0, 50.0, 50.0]),
                ],
            }],
        )
    }

    #[test]
    fn round_trip_and_corruption_is_loud() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.golden.json");
        let g = file();
        g.save(&p).unwrap();
        assert_eq!(GoldenFile::load(&p).unwrap(), g);

        let text = std::fs::read_to_string(&p).unwrap();
        let flipped = text.replacen("0.8765", "0.8766", 1);
        assert_ne!(flipped, text);
        std::fs::write(&p, &flipped).unwrap();
        let e = GoldenFile::load(&p).unwrap_err();
        assert!(matches!(e, SelfTestError::Checksum { .. }));
        assert!(
            e.to_string().contains("corrupt") && e.to_string().contains("m.golden.json"),
            "{e}"
        );

        std::fs::write(&p, &text[..text.len() / 2]).unwrap();
        let e = GoldenFile::load(&p).unwrap_err();
        assert!(
            matches!(e, SelfTestError::Parse { .. }) && e.to_string().contains("m.golden.json"),
            "{e}"
        );

        std::fs::write(&p, text.replacen("\"format\": 1", "\"format\": 1, \"extra\": 2", 1)).unwrap();
        assert!(matches!(GoldenFile::load(&p).unwrap_err(), SelfTestError::Parse { .. }));

        let mut g2 = file();
        g2.format = 2;
        g2.checksum = g2.compute_checksum();
        g2.save(&p).unwrap();
        assert!(matches!(
            GoldenFile::load(&p).unwrap_err(),
            SelfTestError::Format { found: 2, .. }
        ));

        let mut g3 = file();
        g3.images[0].file = "../x.jpg".into();
        g3.checksum = g3.compute_checksum();
        g3.save(&p).unwrap();
        assert!(matches!(
            GoldenFile::load(&p).unwrap_err(),
            SelfTestError::Invalid { .. }
        ));

        let img = &file().images[0];
        assert!(verify_image_bytes(img, b"image").is_ok());
        assert!(verify_image_bytes(img, b"imagf")
            .unwrap_err()
            .to_string()
            .contains("changed"));
        assert_eq!(file().image_path(&p, img), t.path().join("golden/a.jpg"));
    }

    #[test]
    fn matching_rules() {
        let tol = Tolerance::default();
        let golden = vec![
            d(0, 0.9, [0.0, 0.0, 100.0, 100.0]),
            d(1, 0.6, [200.0, 200.0, 300.0, 300.0]),
        ];
        assert!(compare(&golden, &golden, &tol).is_empty());

        // Box shifted: IoU 0.85 (< 0.9) -> missing + extra.
        let mut moved = golden.clone();
        moved[0].bbox = kestrel_core::geometry::ImageBox::new([0.0, 0.0, 100.0, 85.0]);
        let m = compare(&golden, &moved, &tol);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(matches!(&m[0], Mismatch::Missing { closest: Some((_, iou)), .. } if (*iou - 0.85).abs() < 1e-4));
        assert!(m[0].to_string().contains("IoU 0.85"), "{}", m[0]);
        assert!(matches!(m[1], Mismatch::Extra { .. }));

        let mut score = golden.clone();
        score[1].score = 0.68;
        assert_eq!(compare(&golden, &score, &tol).len(), 2);

        let mut class = golden.clone();
        class[1].class_id = 2;
        class[1].label = "c2".into();
        let m = compare(&golden, &class, &tol);
        assert!(m[0].to_string().contains("no same-class detection"), "{}", m[0]);
        assert!(m[1].to_string().starts_with("unexpected c2"), "{}", m[1]);

        // Borderline: 0.28 reference vs 0.31 run, same box: within tolerance.
        let a = vec![d(0, 0.28, [0.0, 0.0, 10.0, 10.0])];
        let b = vec![d(0, 0.31, [0.0, 0.0, 10.0, 10.0])];
        assert!(compare(&a, &b, &tol).is_empty());
        assert!(compare(&b, &a, &tol).is_empty());

        let mut extra = golden.clone();
        extra.push(d(3, 0.9, [500.0, 500.0, 600.0, 600.0]));
        assert!(matches!(compare(&golden, &extra, &tol)[..], [Mismatch::Extra { .. }]));
        let mut weak = golden.clone();
        weak.push(d(3, 0.2, [500.0, 500.0, 600.0, 600.0]));
        assert!(compare(&golden, &weak, &tol).is_empty());

        let report = SelfTestReport {
            images: vec![ImageOutcome {
                file: "a.jpg".into(),
                mismatches: compare(&golden, &moved, &tol),
                expected: 2,
                got: 2,
            }],
            tolerance: tol,
        };
        assert!(!report.passed());
        assert!(
            report.summary().starts_with("self-test FAILED on 1 of 1 images"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn awkward_floats_round_trip_through_the_checksum() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f.golden.json");
        let mut g = file();
        g.reference.conf = 0.1 + 0.2;
        g.images[0].detections[0].score = 1.0 / 3.0;
        g.images[0].detections[0].bbox = kestrel_core::geometry::ImageBox::new([1e-7, 0.1 + 0.7, 123_456.79, f32::MAX]);
        let g = GoldenFile::new(g.reference, g.images);
        g.save(&p).unwrap();
        let back = GoldenFile::load(&p).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.compute_checksum(), g.checksum);
        assert_eq!(g.checksum.len(), 64);
        assert!(g
            .checksum
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }

    #[test]
    fn unusable_contents_are_invalid_and_name_the_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bad.golden.json");
        type Break = fn(&mut GoldenFile);
        let cases: [(&str, Break); 5] = [
            ("score above 1", |g| g.images[0].detections[0].score = 1.5),
            ("negative score", |g| g.images[0].detections[1].score = -0.1),
            ("x1 > x2", |g| {
                g.images[0].detections[0].bbox = kestrel_core::geometry::ImageBox::new([120.0, 20.0, 110.0, 220.0])
            }),
            ("no images", |g| g.images.clear()),
            ("conf above 1", |g| g.reference.conf = 1.5),
        ];
        for (what, change) in cases {
            let mut g = file();
            change(&mut g);
            g.checksum = g.compute_checksum();
            g.save(&p).unwrap();
            let e = GoldenFile::load(&p).unwrap_err();
            assert!(matches!(e, SelfTestError::Invalid { .. }), "{what}: {e:?}");
            assert!(e.to_string().contains("bad.golden.json"), "{what}: {e}");
        }
        let e = GoldenFile::load(&t.path().join("absent.golden.json")).unwrap_err();
        assert!(
            matches!(e, SelfTestError::Read { .. }) && e.to_string().contains("absent.golden.json"),
            "{e}"
        );
    }

    #[test]
    fn failed_save_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the temporary file was written.
        let p = t.path().join("x.golden.json");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), b"k").unwrap();
        let e = file().save(&p).unwrap_err();
        assert!(
            matches!(e, SelfTestError::Write { .. }) && e.to_string().contains("x.golden.json"),
            "{e}"
        );
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("x.golden.json")]);
    }

    #[test]
    fn mismatch_kinds_and_messages() {
        let tol = Tolerance::default();
        let golden = vec![d(0, 0.9, [0.0, 0.0, 100.0, 100.0])];

        // Score off by 0.08 on the same box: the reference is missing and the run's detection is unexpected.
        let got = vec![d(0, 0.82, [0.0, 0.0, 100.0, 100.0])];
        let m = compare(&golden, &got, &tol);
        assert!(
            matches!(&m[..], [Mismatch::Missing { closest: Some((c, iou)), .. }, Mismatch::Extra { got: x }]
                if *iou == 1.0 && c.score == 0.82 && x.score == 0.82),
            "{m:?}"
        );
        assert_eq!(
            m[0].to_string(),
            "missing c0 0.900 [0, 0, 100, 100]: best same-class match IoU 1.00 score 0.820"
        );
        assert_eq!(m[1].to_string(), "unexpected c0 0.820 [0, 0, 100, 100]");
        // Within the tolerance the same pair passes.
        assert!(compare(&golden, &[d(0, 0.86, [0.0, 0.0, 100.0, 100.0])], &tol).is_empty());

        // One-to-one: two reference boxes cannot both be matched by one detection.
        let twins = vec![
            d(0, 0.9, [0.0, 0.0, 100.0, 100.0]),
            d(0, 0.88, [0.0, 0.0, 100.0, 100.0]),
        ];
        let m = compare(&twins, &golden, &tol);
        assert!(
            matches!(&m[..], [Mismatch::Missing { expected, closest: None }] if expected.score == 0.88),
            "{m:?}"
        );

        // Below min_score on both sides: never required.
        let weak = vec![d(0, 0.2, [0.0, 0.0, 10.0, 10.0])];
        assert!(compare(&weak, &[], &tol).is_empty() && compare(&[], &weak, &tol).is_empty());
        assert_eq!(compare(&golden, &[], &tol).len(), 1);

        let ok = SelfTestReport {
            images: vec![ImageOutcome {
                file: "a.jpg".into(),
                mismatches: vec![],
                expected: 1,
                got: 1,
            }],
            tolerance: tol,
        };
        assert!(ok.passed());
        let s = ok.summary();
        assert!(
            s.starts_with("self-test passed: 1 images") && s.contains("IoU ≥ 0.90, score ± 0.05"),
            "{s}"
        );
    }

    #[test]
    fn fp16_models_use_their_fp32_parents_golden_file() {
        assert_eq!(
            default_golden_path(Path::new("m/yolov3-tiny-416-fp16.onnx")),
            [
                PathBuf::from("m/yolov3-tiny-416-fp16.golden.json"),
                PathBuf::from("m/yolov3-tiny-416.golden.json")
            ]
        );
        assert_eq!(
            default_golden_path(Path::new("m/x.onnx")),
            [PathBuf::from("m/x.golden.json")]
        );
        assert_eq!(
            default_golden_path(Path::new("m/x_f16.onnx")),
            [PathBuf::from("m/x_f16.golden.json"), PathBuf::from("m/x.golden.json")]
        );
        assert_eq!(
            default_golden_path(Path::new("m/x.onnx.zst")),
            [PathBuf::from("m/x.golden.json")]
        );
        // A stem that is only the suffix has no parent.
        assert_eq!(
            default_golden_path(Path::new("-fp16.onnx")),
            [PathBuf::from("-fp16.golden.json")]
        );
    }
}
