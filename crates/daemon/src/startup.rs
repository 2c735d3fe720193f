//! The start-up precision self-test policy: which golden file, and what a mismatch does.

use std::path::PathBuf;

use kestrel_infer::ep::{EpKind, Skipped};
use kestrel_infer::model::{Detector, ModelError, SessionOptions};
use kestrel_infer::runtime::Runtime;
use kestrel_infer::selftest::{default_golden_path, run, GoldenFile, SelfTestError, Tolerance};
use thiserror::Error;

use crate::config::{Config, OnMismatch};

/// Why the start-up self-test stopped the daemon.
#[derive(Debug, Error)]
pub enum StartupTestError {
    /// The golden file or one of its images could not be used.
    #[error(transparent)]
    Golden(#[from] SelfTestError),
    #[error("precision self-test failed on {ep} {precision} ({why}): {summary}")]
    Failed {
        ep: EpKind,
        precision: String,
        why: &'static str,
        summary: String,
    },
    /// Loading the model again on the next provider failed.
    #[error(transparent)]
    Reload(#[from] ModelError),
}

/// The golden file a config's self-test uses: `selftest.golden`, else the first default candidate that exists.
pub fn golden_path_for(cfg: &Config) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(p) = &cfg.selftest.golden {
        return Ok(p.clone());
    }
    let candidates = default_golden_path(&cfg.model.path);
    candidates.iter().find(|p| p.is_file()).cloned().ok_or(candidates)
}

/// The daemon's start-up self-test: run the golden images on the provider + precision `detector` uses. Passing
/// is logged; a mismatch is an error (`selftest.on_mismatch = "fail"`) or drops that provider and tries the next
/// (`"fallback"`), always reported. A golden file that cannot be read or fails its checksum is an error.
pub fn at_start(
    rt: &Runtime,
    cfg: &Config,
    opts: &SessionOptions,
    mut detector: Detector,
    progress: &mut dyn FnMut(&str),
) -> Result<Detector, StartupTestError> {
    let golden_path = match golden_path_for(cfg) {
        Ok(p) => p,
        Err(looked) => {
            let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            log::warn!(
                "precision self-test not run: no golden detections for {} (looked for {}); make them with \
                 `kestrel golden --model <the FP32 model> <images>`, or set selftest.enabled = false",
                cfg.model.path.display(),
                looked.join(", ")
            );
            return Ok(detector);
        }
    };
    let golden = GoldenFile::load(&golden_path)?;
    let st = &cfg.selftest;
    let tol = Tolerance {
        min_iou: st.min_iou,
        score_abs: st.score_tolerance,
        min_score: st.min_score,
    };
    let mut opts = opts.clone();
    let mut earlier: Vec<Skipped> = Vec::new();
    loop {
        let (ep, precision) = (detector.selection.active, detector.selection.precision.clone());
        progress(&format!(
            "self-test: {} golden images on {ep} {precision}",
            golden.images.len()
        ));
        let (back, report) = run(detector, &golden, &golden_path, &tol)?;
        detector = back;
        if !earlier.is_empty() {
            let mut all = earlier.clone();
            all.append(&mut detector.selection.skipped);
            detector.selection.skipped = all;
        }
        if report.passed() {
            log::info!(
                "{} on {ep} {precision} against {}",
                report.summary(),
                golden_path.display()
            );
            return Ok(detector);
        }
        log::error!(
            "{} on {ep} {precision} against {}",
            report.summary(),
            golden_path.display()
        );
        if st.on_mismatch == OnMismatch::Fail {
            return Err(StartupTestError::Failed {
                ep,
                precision,
                why: "selftest.on_mismatch = \"fail\"",
                summary: report.summary(),
            });
        }
        if opts.ep.require == Some(ep) {
            return Err(StartupTestError::Failed {
                ep,
                precision,
                why: "runtime.require_ep requires it",
                summary: report.summary(),
            });
        }
        opts.ep.providers.retain(|k| *k != ep);
        let Some(next) = opts.ep.providers.first().copied() else {
            return Err(StartupTestError::Failed {
                ep,
                precision,
                why: "no other execution provider is listed",
                summary: report.summary(),
            });
        };
        log::warn!("self-test failed on {ep}: falling back to {next}");
        earlier = detector.selection.skipped.clone();
        earlier.push(Skipped {
            kind: ep,
            reason: format!("failed the precision self-test ({precision}): {}", report.summary()),
        });
        drop(detector);
        detector = Detector::load_with(rt, &cfg.model.path, cfg.model.labels.as_deref(), &opts, progress)?;
    }
}
