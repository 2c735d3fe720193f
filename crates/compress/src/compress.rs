//! `kestrel compress --method tucker`: the whole procedure, from the model file to the report.
//!
//! 1. Read the model, fold BatchNormalization, list the convolutions (and why some stay as they are).
//! 2. Capture each convolution's real inputs on the calibration frames (and their mirror images).
//! 3. Per layer, search the smallest ranks whose output error meets `--max-layer-error` on the probe
//!    (captured inputs or random tensors), with data-aware or HOSVD factors; keep a layer only if it saves
//!    parameters, meets the bound and (with `--require-faster`) is faster as a one-layer model on the device.
//! 4. Check the whole model's detection fidelity on held-out frames; below `--min-fidelity`, tighten the
//!    bound by bisection, reporting every try.
//! 5. Compare (data-aware against HOSVD at the same ranks; calibration against random probe), measure bare
//!    fps before and after interleaved, and write the model atomically with what was done in its metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use faer::Mat;
use thiserror::Error;

use crate::capture::{mirror, Capture, CaptureError};
use crate::evaluate::{self, Evaluation, Truth};
use crate::graph::{self, Conv, ConvStep, Folded, GraphError, Unsupported};
use crate::model::{check_output, floats, write_atomic, ModelFileError, OnnxModel, TensorError};
use crate::search::{ladder, smallest_meeting, Trial};
use crate::stats::PatchStats;
use crate::timing::{compare_models, time_layer, FpsComparison, LayerTiming, TimingError, TimingPlan};
use crate::tucker::{tucker_params, Factorisation, Factors, Kernel, Prepared, TuckerError};
use kestrel_infer::detect::{DetectError, ImageDetector, Thresholds};
use kestrel_infer::model::{Detector, ModelError, Precision, SessionOptions};
use kestrel_infer::runtime::Runtime;
use kestrel_vision::tensor::TensorData;

/// The metadata key of what was done (a JSON object).
pub const METADATA_KEY: &str = "kestrel_compress";

#[derive(Debug, Error)]
pub enum CompressError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{path}: {source}")]
    Graph { path: PathBuf, source: GraphError },
    #[error("{path}: {source}")]
    Tensor { path: PathBuf, source: TensorError },
    #[error("layer `{layer}`: {source}")]
    Tucker { layer: String, source: TuckerError },
    #[error("capturing layer inputs of {path}: {source}")]
    Capture { path: PathBuf, source: CaptureError },
    #[error("timing on the device: {0}")]
    Timing(#[from] TimingError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Detect(DetectError),
    #[error("{what} directory {dir}: {source}")]
    ListFrames {
        what: &'static str,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} directory {dir} has no images (*.jpg, *.jpeg, *.png)")]
    NoFrames { what: &'static str, dir: PathBuf },
    #[error("none of the {count} {what} images could be read (first: {first})")]
    NoneReadable {
        what: &'static str,
        count: usize,
        first: String,
    },
    #[error("{a} and {b} are the same image: calibration and evaluation frames must be disjoint")]
    NotDisjoint { a: PathBuf, b: PathBuf },
    #[error("{path} is a {precision} model: compress a float32 model (and make the FP16 copy afterwards)")]
    NotFloat32 { path: PathBuf, precision: &'static str },
    #[error("a temporary directory: {0}")]
    Temp(#[source] std::io::Error),
    #[error("{path}: {source}")]
    PruneGraph {
        path: PathBuf,
        source: crate::prune::groups::PruneGraphError,
    },
    #[error("pruning the group of {group}: {source}")]
    Select {
        group: String,
        source: crate::prune::select::SelectError,
    },
}

/// Where each layer's error is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// The layer's real inputs, captured on the calibration frames.
    Calibration,
    /// Random N(0, 1) tensors of the layer's input shape (the talk's method).
    Random,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct Options {
    pub max_layer_error: f64,
    pub probe: Probe,
    pub factorisation: Factorisation,
    pub rank_multiple: usize,
    pub min_fidelity: f64,
    pub require_faster: bool,
    pub session: SessionOptions,
    pub timing: TimingPlan,
    /// Interleaved rounds (and runs per round) of the whole-model fps comparison; 0 rounds skips it.
    pub fps_rounds: usize,
    pub fps_runs: usize,
    /// Bisection steps of the bound when fidelity is short.
    pub tighten_steps: usize,
    /// Also run the comparisons (HOSVD at the same ranks, the random-probe search).
    pub compare: bool,
    /// Layers (by node name) given fixed ranks (R_in, R_out) instead of a search.
    pub fixed_ranks: HashMap<String, (usize, usize)>,
    /// Layers (by node name) left as they are.
    pub exclude: Vec<String>,
    /// Shrinkage of the data-aware covariances towards the identity, 0..=1.
    pub shrinkage: f64,
    /// Also decompose the detection head's output convolutions ([`graph::head_convolutions`]).
    pub include_head: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_layer_error: 0.1,
            probe: Probe::Calibration,
            factorisation: Factorisation::DataAware,
            rank_multiple: 8,
            min_fidelity: 0.95,
            require_faster: true,
            session: SessionOptions::default(),
            timing: TimingPlan::default(),
            fps_rounds: 6,
            fps_runs: 10,
            tighten_steps: 5,
            compare: true,
            fixed_ranks: HashMap::new(),
            exclude: Vec::new(),
            shrinkage: 0.9,
            include_head: false,
        }
    }
}

/// Files of one run.
#[derive(Clone, Debug)]
pub struct Job {
    pub model: PathBuf,
    pub out: PathBuf,
    pub calibration: Vec<PathBuf>,
    pub evaluation: Vec<PathBuf>,
    /// The model whose detections are the truth for fidelity (`None`: the input model itself). A stage of a
    /// combined method sets the original here, so fidelity is always against the original.
    pub reference: Option<PathBuf>,
}

/// Progress, for a terminal line or log lines.
pub enum Event<'a> {
    Stage(&'a str),
    Layer {
        index: usize,
        total: usize,
        name: &'a str,
        what: &'a str,
    },
}

/// The images of a directory, sorted.
pub fn images_in(dir: &Path, what: &'static str) -> Result<Vec<PathBuf>, CompressError> {
    let rd = std::fs::read_dir(dir).map_err(|source| CompressError::ListFrames {
        what,
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(CompressError::NoFrames {
            what,
            dir: dir.to_path_buf(),
        });
    }
    Ok(v)
}

/// Errors of one candidate decomposition.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Errors {
    /// ‖y − y′‖/‖y‖ on the captured inputs.
    pub calibration: f64,
    /// The same on random tensors of the input's shape.
    pub random: f64,
    /// ‖W − W′‖_F / ‖W‖_F.
    pub weight: f64,
}

/// What happened to one convolution.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    pub name: String,
    /// K, C, kh, kw.
    pub kernel: Option<[usize; 4]>,
    /// 1, C, H, W.
    pub input: Option<[usize; 4]>,
    pub decomposed: bool,
    pub reason: String,
    /// (R_in, R_out).
    pub ranks: Option<(usize, usize)>,
    pub params_before: usize,
    pub params_after: usize,
    pub macs_before: u64,
    pub macs_after: u64,
    /// Of the chosen factorisation at the chosen ranks.
    pub errors: Option<Errors>,
    /// Of the other factorisation (HOSVD when data-aware was chosen, and the other way) at the same ranks.
    pub other_factorisation: Option<Errors>,
    /// The ranks the other probe's search would pick (at the final bound, with its own factorisation).
    pub other_probe_ranks: Option<(usize, usize)>,
    /// The rungs tried at the final bound.
    pub search: Vec<Trial>,
    pub timing: Option<LayerTiming>,
}

/// One whole-model check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Try {
    pub max_layer_error: f64,
    pub decomposed_layers: usize,
    pub params: usize,
    pub map50: f64,
    pub meets: bool,
}

/// Frames used.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Frames {
    pub files: usize,
    pub used: usize,
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// A variant's fidelity, for the comparisons.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Variant {
    pub what: String,
    pub params: usize,
    pub macs: u64,
    pub map50: f64,
    pub map50_95: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub params: usize,
    pub conv_macs: u64,
    pub sha256: String,
    pub path: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Stage {
    pub stage: String,
    pub seconds: f64,
}

/// The report (`--report`), also the source of the printed summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub kestrel_compress_report: u32,
    pub method: &'static str,
    pub probe: Probe,
    pub factorisation: Factorisation,
    pub shrinkage: f64,
    pub rank_multiple: usize,
    pub max_layer_error: f64,
    /// The bound finally used (tighter than asked when fidelity was short).
    pub bound_used: f64,
    pub min_fidelity: f64,
    pub require_faster: bool,
    pub execution_provider: String,
    pub source: Summary,
    pub output: Option<Summary>,
    pub folded_batch_norms: Vec<Folded>,
    pub calibration: Frames,
    pub evaluation: Frames,
    pub layers: Vec<LayerReport>,
    pub tries: Vec<Try>,
    /// The written model against the original on the held-out frames.
    pub fidelity: Option<Evaluation>,
    pub comparisons: Vec<Variant>,
    pub fps: Option<FpsComparison>,
    pub stages: Vec<Stage>,
    pub peak_rss_mib: Option<f64>,
    /// Set when nothing could be done (no convolution to decompose, none kept): the model is not written.
    pub nothing_to_do: Option<String>,
}

/// Peak resident memory of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A convolution with everything its search needs.
struct Layer {
    conv: Conv,
    size: (usize, usize),
    out_size: (usize, usize),
    prepared: Prepared,
    bias_f32: Option<Vec<f32>>,
    calib: PatchStats,
    random: PatchStats,
    energy: (f64, f64),
    rungs: Vec<(usize, usize)>,
    memo: HashMap<(Factorisation, (usize, usize)), (Factors, Errors)>,
    timing: HashMap<(usize, usize), LayerTiming>,
}

impl Layer {
    fn evaluate(&mut self, how: Factorisation, r: (usize, usize)) -> Result<&(Factors, Errors), TuckerError> {
        use std::collections::hash_map::Entry;
        match self.memo.entry((how, r)) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let f = self.prepared.factors(how, r.0, r.1, Some(&self.calib))?;
                let w2 = f.reconstruct();
                let w = self.prepared.kernel.w.as_ref();
                let shift = f.bias_shift.as_deref();
                let e = Errors {
                    calibration: self.calib.relative_error(w, w2.as_ref(), self.energy.0, shift),
                    random: self.random.relative_error(w, w2.as_ref(), self.energy.1, shift),
                    weight: self.prepared.kernel.relative_error(&w2),
                };
                Ok(v.insert((f, e)))
            }
        }
    }

    fn error(&mut self, how: Factorisation, probe: Probe, r: (usize, usize)) -> Result<f64, TuckerError> {
        let (_, e) = self.evaluate(how, r)?;
        Ok(match probe {
            Probe::Calibration => e.calibration,
            Probe::Random => e.random,
        })
    }

    fn params(&self, r: (usize, usize)) -> usize {
        let [k, c, _, _] = self.conv.kernel;
        tucker_params(c, k, self.conv.taps(), r.0, r.1)
    }

    fn macs_before(&self) -> u64 {
        (self.conv.weight_params() * self.out_size.0 * self.out_size.1) as u64
    }

    fn macs_after(&self, r: (usize, usize)) -> u64 {
        let [k, c, _, _] = self.conv.kernel;
        let (hw, ohw) = (self.size.0 * self.size.1, self.out_size.0 * self.out_size.1);
        let t = self.conv.taps();
        if t == 1 {
            // The first 1×1 carries the stride: both run at the output size.
            ((c * r.0 + r.0 * k) * ohw) as u64
        } else {
            (c * r.0 * hw + r.0 * r.1 * t * ohw + r.1 * k * ohw) as u64
        }
    }

    /// The replacement chain of factors `f`.
    fn steps(&self, f: &Factors) -> Vec<ConvStep> {
        replacement(&self.conv, f, self.bias_f32.clone())
    }
}

/// The convolutions that replace `conv` with factors `f`: for a kh×kw kernel 1×1 (C → R_in), kh×kw (R_in →
/// R_out, the original stride, padding and dilation), 1×1 (R_out → K, the bias); for a 1×1 kernel two 1×1
/// convolutions of rank R (the first carries the stride), the core merged into the second.
pub fn replacement(conv: &Conv, f: &Factors, bias: Option<Vec<f32>>) -> Vec<ConvStep> {
    let [k, c, kh, kw] = conv.kernel;
    let bias = match (&f.bias_shift, bias) {
        (Some(shift), b) => Some(
            (0..k)
                .map(|o| b.as_ref().map_or(0.0, |b| f64::from(b[o])) + shift[o])
                .map(|v| v as f32)
                .collect(),
        ),
        (None, b) => b,
    };
    let to32 = |m: &Mat<f64>| -> Vec<f32> {
        let mut v = Vec::with_capacity(m.nrows() * m.ncols());
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                v.push(m[(i, j)] as f32);
            }
        }
        v
    };
    let (ri, ro) = (f.r_in(), f.r_out());
    if conv.taps() == 1 {
        let last = &f.u * &f.core;
        vec![
            ConvStep {
                suffix: "lowrank_in",
                kernel: [ri, c, 1, 1],
                weight: to32(&f.a),
                bias: None,
                spatial: true,
            },
            ConvStep {
                suffix: "lowrank_out",
                kernel: [k, ri, 1, 1],
                weight: to32(&last),
                bias,
                spatial: false,
            },
        ]
    } else {
        vec![
            ConvStep {
                suffix: "tucker_in",
                kernel: [ri, c, 1, 1],
                weight: to32(&f.a),
                bias: None,
                spatial: false,
            },
            ConvStep {
                suffix: "tucker_core",
                kernel: [ro, ri, kh, kw],
                weight: to32(&f.core),
                bias: None,
                spatial: true,
            },
            ConvStep {
                suffix: "tucker_out",
                kernel: [k, ro, 1, 1],
                weight: to32(&f.u),
                bias,
                spatial: false,
            },
        ]
    }
}

/// A layer's decision at one bound.
#[derive(Clone, Debug)]
struct Decision {
    ranks: Option<(usize, usize)>,
    reason: String,
    trials: Vec<Trial>,
}

fn other(how: Factorisation) -> Factorisation {
    match how {
        Factorisation::DataAware => Factorisation::Hosvd { hooi_iterations: 0 },
        Factorisation::Hosvd { .. } => Factorisation::DataAware,
    }
}

struct Run<'a> {
    rt: &'a Runtime,
    opts: &'a Options,
    job: &'a Job,
    source: OnnxModel,
    layers: Vec<Layer>,
    labels: Vec<String>,
    /// Per evaluation frame: the original's truths (score ≥ 0.25) and the path.
    truths: Vec<(PathBuf, Vec<Truth>)>,
    tmp: tempfile::TempDir,
    ep: String,
}

impl Run<'_> {
    fn decide(
        &mut self,
        i: usize,
        bound: f64,
        how: Factorisation,
        probe: Probe,
        time: bool,
    ) -> Result<Decision, CompressError> {
        let l = &mut self.layers[i];
        if let Some(&r) = self.opts.fixed_ranks.get(&l.conv.name) {
            let name = l.conv.name.clone();
            let e = l
                .error(how, probe, r)
                .map_err(|source| CompressError::Tucker { layer: name, source })?;
            let trial = Trial {
                ranks: r,
                params: l.params(r),
                error: e,
                meets: e <= bound,
            };
            return Ok(Decision {
                ranks: Some(r),
                reason: "ranks fixed (--ranks)".into(),
                trials: vec![trial],
            });
        }
        if l.rungs.is_empty() {
            return Ok(Decision {
                ranks: None,
                reason: format!(
                    "a decomposition cannot save parameters at any rank ({}×{}×{}×{} kernel)",
                    l.conv.kernel[0], l.conv.kernel[1], l.conv.kernel[2], l.conv.kernel[3]
                ),
                trials: Vec::new(),
            });
        }
        let rungs = l.rungs.clone();
        let name = l.conv.name.clone();
        let [k, c, _, _] = l.conv.kernel;
        let taps = l.conv.taps();
        let (found, trials) = smallest_meeting(
            &rungs,
            bound,
            |r| l.error(how, probe, r),
            |r| tucker_params(c, k, taps, r.0, r.1),
        )
        .map_err(|source| CompressError::Tucker {
            layer: name.clone(),
            source,
        })?;
        let Some(at) = found else {
            let last = trials.first();
            return Ok(Decision {
                ranks: None,
                reason: match last {
                    Some(t) => format!(
                        "no rank that saves parameters meets the bound: at ranks ({}, {}) ({} of {} parameters) the error is {:.4} > {bound:.4}",
                        t.ranks.0,
                        t.ranks.1,
                        t.params,
                        l.conv.weight_params(),
                        t.error
                    ),
                    None => "no candidate ranks".into(),
                },
                trials,
            });
        };
        let r = rungs[at];
        if time && self.opts.require_faster {
            let timing = self.timing(i, how, r)?;
            if timing.speedup.median <= 1.0 {
                return Ok(Decision {
                    ranks: None,
                    reason: format!(
                        "at ranks ({}, {}) it meets the bound but is not faster on {}: {:.3} ms → {:.3} ms, speed-up {}",
                        r.0, r.1, self.ep, timing.original_ms, timing.decomposed_ms, timing.speedup
                    ),
                    trials,
                });
            }
        }
        Ok(Decision {
            ranks: Some(r),
            reason: "meets the bound and saves parameters".into(),
            trials,
        })
    }

    fn timing(&mut self, i: usize, how: Factorisation, r: (usize, usize)) -> Result<LayerTiming, CompressError> {
        if let Some(t) = self.layers[i].timing.get(&r) {
            return Ok(*t);
        }
        let opset = graph::opset(&self.source.proto);
        let l = &mut self.layers[i];
        let g = self.source.proto.graph.as_ref().ok_or_else(|| CompressError::Graph {
            path: self.job.model.clone(),
            source: GraphError::Node {
                node: l.conv.name.clone(),
                reason: "no graph".into(),
            },
        })?;
        let orig = graph::original_step(g, &l.conv).map_err(|source| CompressError::Graph {
            path: self.job.model.clone(),
            source,
        })?;
        let name = l.conv.name.clone();
        let f = l
            .evaluate(how, r)
            .map_err(|source| CompressError::Tucker { layer: name, source })?
            .0
            .clone();
        let steps = l.steps(&f);
        let (h, w) = l.size;
        let graph_err = |source| CompressError::Graph {
            path: self.job.model.clone(),
            source,
        };
        let a = graph::layer_model(&l.conv, &[orig], h, w, opset).map_err(graph_err)?;
        let b = graph::layer_model(&l.conv, &steps, h, w, opset).map_err(graph_err)?;
        let t = time_layer(
            self.rt,
            &self.opts.session,
            self.tmp.path(),
            &a,
            &b,
            [1, l.conv.in_channels(), h, w],
            self.opts.timing,
        )?;
        l.timing.insert(r, t);
        Ok(t)
    }

    /// The model with `choice[i]` applied to each layer.
    fn build(&mut self, choice: &[Option<(usize, usize)>], how: Factorisation) -> Result<OnnxModel, CompressError> {
        let mut m = OnnxModel {
            path: self.job.out.clone(),
            sha256: String::new(),
            proto: self.source.proto.clone(),
        };
        let path = self.job.model.clone();
        for (i, r) in choice.iter().enumerate() {
            let Some(r) = r else { continue };
            let l = &mut self.layers[i];
            let name = l.conv.name.clone();
            let f = l
                .evaluate(how, *r)
                .map_err(|source| CompressError::Tucker { layer: name, source })?
                .0
                .clone();
            let steps = l.steps(&f);
            let conv = l.conv.clone();
            if let Some(g) = m.proto.graph.as_mut() {
                graph::replace_conv(g, &conv, &steps).map_err(|source| CompressError::Graph {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(m)
    }

    /// Fidelity of `m` against the original on the evaluation frames.
    fn fidelity(&self, m: &OnnxModel, file: &str) -> Result<Evaluation, CompressError> {
        fidelity_of(
            self.rt,
            &self.opts.session,
            &self.truths,
            &self.labels,
            m,
            &self.tmp.path().join(file),
        )
    }

    fn params_of(&self, choice: &[Option<(usize, usize)>]) -> (usize, u64) {
        let g = self.source.proto.graph.as_ref();
        let total = g.map(graph::parameter_count).unwrap_or(0);
        let mut params = total;
        let mut macs = 0u64;
        for (l, r) in self.layers.iter().zip(choice) {
            macs += l.macs_before();
            if let Some(r) = r {
                params = params - l.conv.weight_params() + l.params(*r);
                macs = macs - l.macs_before() + l.macs_after(*r);
            }
        }
        (params, macs)
    }
}

/// Fidelity of `m` (written to `path`) against `truths` on their frames.
pub(crate) fn fidelity_of(
    rt: &Runtime,
    session: &SessionOptions,
    truths: &[(PathBuf, Vec<Truth>)],
    labels: &[String],
    m: &OnnxModel,
    path: &Path,
) -> Result<Evaluation, CompressError> {
    write_atomic(path, &m.encode())?;
    let d = Detector::load(rt, path, None, session)?;
    let mut det = ImageDetector::new(
        d,
        Thresholds {
            conf: 0.001,
            ..Thresholds::default()
        },
    )
    .map_err(detect_model)?;
    let mut images = Vec::with_capacity(truths.len());
    for (p, truth) in truths {
        let r = det.detect_file(p).map_err(detect_model)?;
        images.push((truth.clone(), r.detections));
    }
    Ok(evaluate::evaluate(&images, labels))
}

fn detect_model(e: DetectError) -> CompressError {
    CompressError::Detect(e)
}

/// What the frames give a run: the model's labels and input size, the provider, each layer's captured
/// input statistics, and the reference's truths on the evaluation frames.
pub(crate) struct FrameData {
    pub labels: Vec<String>,
    pub ep: String,
    pub layers: Vec<Option<crate::capture::Captured>>,
    pub truths: Vec<(PathBuf, Vec<Truth>)>,
    pub calibration: Frames,
    pub evaluation: Frames,
}

/// Check the frames are disjoint, capture `convs`' inputs of `proto` (the model at `job.model`) on the
/// calibration frames and their mirror images, and take the truths of `job.reference` (or the model) on
/// the evaluation frames.
pub(crate) fn frame_data(
    rt: &Runtime,
    job: &Job,
    session: &SessionOptions,
    proto: &crate::onnx::ModelProto,
    convs: &[Conv],
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<FrameData, CompressError> {
    let mut calibration = Frames::default();
    let mut evaluation = Frames::default();
    // Frames: disjoint by content.
    let digest = |p: &Path| std::fs::read(p).ok().map(|b| crate::model::sha256_hex(&b));
    let eval_digests: HashMap<String, &PathBuf> = job
        .evaluation
        .iter()
        .filter_map(|p| digest(p).map(|d| (d, p)))
        .collect();
    for c in &job.calibration {
        if let Some(e) = digest(c).and_then(|d| eval_digests.get(&d).copied()) {
            return Err(CompressError::NotDisjoint {
                a: c.clone(),
                b: e.clone(),
            });
        }
    }
    // The original, as the detector loads it: its input size, labels, and the reference detections.
    let reference = Detector::load(rt, &job.model, None, session)?;
    if reference.info.input_precision != Precision::F32 {
        return Err(CompressError::NotFloat32 {
            path: job.model.clone(),
            precision: reference.info.input_precision.name(),
        });
    }
    let ep = reference.selection.active.name().to_string();
    let labels = reference.info.labels.clone();
    let (ih, iw) = (
        reference.info.input_height as usize,
        reference.info.input_width as usize,
    );
    let mut det = ImageDetector::new(
        reference,
        Thresholds {
            conf: 0.001,
            ..Thresholds::default()
        },
    )
    .map_err(detect_model)?;

    progress(Event::Stage("capturing the layers' inputs on the calibration frames"));
    let mut cap = Capture::new(rt, proto, convs).map_err(|e| CompressError::Capture {
        path: job.model.clone(),
        source: e,
    })?;
    calibration.files = job.calibration.len();
    for (n, p) in job.calibration.iter().enumerate() {
        let name = p.display().to_string();
        progress(Event::Layer {
            index: n,
            total: job.calibration.len(),
            name: &name,
            what: "calibration frame",
        });
        if let Err(e) = det.detect_file(p) {
            log::warn!("calibration image skipped: {e}");
            calibration.skipped.push(Skipped {
                file: name,
                reason: e.to_string(),
            });
            continue;
        }
        let TensorData::F32(x) = det.last_input().data() else {
            continue;
        };
        for t in [x, &mirror(x, 3, ih, iw)] {
            cap.add_frame(t, ih, iw).map_err(|e| CompressError::Capture {
                path: job.model.clone(),
                source: e,
            })?;
        }
        calibration.used += 1;
    }
    if calibration.used == 0 {
        return Err(CompressError::NoneReadable {
            what: "calibration",
            count: job.calibration.len(),
            first: calibration
                .skipped
                .first()
                .map(|s| s.reason.clone())
                .unwrap_or_default(),
        });
    }
    // The evaluation frames' truths: the reference's detections (the model's own, unless a reference is set).
    if let Some(r) = &job.reference {
        det = ImageDetector::new(
            Detector::load(rt, r, None, session)?,
            Thresholds {
                conf: 0.001,
                ..Thresholds::default()
            },
        )
        .map_err(detect_model)?;
    }
    evaluation.files = job.evaluation.len();
    let mut truths = Vec::new();
    for p in &job.evaluation {
        match det.detect_file(p) {
            Ok(r) => {
                truths.push((p.clone(), evaluate::truth_from_reference(&r.detections, 0.25)));
                evaluation.used += 1;
            }
            Err(e) => {
                log::warn!("evaluation image skipped: {e}");
                evaluation.skipped.push(Skipped {
                    file: p.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if truths.is_empty() {
        return Err(CompressError::NoneReadable {
            what: "evaluation",
            count: job.evaluation.len(),
            first: evaluation.skipped.first().map(|s| s.reason.clone()).unwrap_or_default(),
        });
    }
    drop(det);
    Ok(FrameData {
        labels,
        ep,
        layers: cap.layers,
        truths,
        calibration,
        evaluation,
    })
}

/// Run `kestrel compress`. Writes `job.out` unless there was nothing to do (said in the report).
pub fn compress(
    rt: &Runtime,
    job: &Job,
    opts: &Options,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Report, CompressError> {
    let mut stages = Vec::new();
    let mut stage_t = Instant::now();
    let stage = |name: &str, stages: &mut Vec<Stage>, t: &mut Instant| {
        stages.push(Stage {
            stage: name.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
        *t = Instant::now();
    };
    check_output(&job.model, &job.out)?;
    progress(Event::Stage("reading the model"));
    let mut source = OnnxModel::load(&job.model)?;
    let folded = graph::fold_batch_norms(&mut source.proto).map_err(|e| CompressError::Graph {
        path: job.model.clone(),
        source: e,
    })?;
    let g = source.proto.graph.clone().unwrap_or_default();
    let found = graph::convolutions(&g);
    let head = graph::head_convolutions(&g);
    let convs: Vec<Conv> = found.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
    let mut unsupported: Vec<Unsupported> = found.iter().filter_map(|c| c.as_ref().err().cloned()).collect();
    // Left as they are without any work: the detection head's outputs (unless asked), and --exclude.
    let (convs, left): (Vec<Conv>, Vec<Conv>) = convs
        .into_iter()
        .partition(|c| !opts.exclude.contains(&c.name) && (opts.include_head || !head.contains(&c.name)));
    let nothing_supported = convs.is_empty() && left.is_empty();
    for c in &left {
        unsupported.push(Unsupported {
            name: c.name.clone(),
            reason: if opts.exclude.contains(&c.name) {
                "excluded (--exclude)".into()
            } else {
                "a detection-head output convolution (its outputs are the detections' logits, and it holds few \
                 parameters): left as it is (--include-head decomposes it too)"
                    .into()
            },
        });
    }
    let params = graph::parameter_count(&g);
    let mut report = Report {
        kestrel_compress_report: 1,
        method: "tucker",
        probe: opts.probe,
        factorisation: opts.factorisation,
        shrinkage: opts.shrinkage,
        rank_multiple: opts.rank_multiple,
        max_layer_error: opts.max_layer_error,
        bound_used: opts.max_layer_error,
        min_fidelity: opts.min_fidelity,
        require_faster: opts.require_faster,
        execution_provider: String::new(),
        source: Summary {
            params,
            conv_macs: 0,
            sha256: source.sha256.clone(),
            path: job.model.display().to_string(),
        },
        output: None,
        folded_batch_norms: folded,
        calibration: Frames::default(),
        evaluation: Frames::default(),
        layers: unsupported
            .iter()
            .map(|u| LayerReport {
                name: u.name.clone(),
                kernel: None,
                input: None,
                decomposed: false,
                reason: u.reason.clone(),
                ranks: None,
                params_before: 0,
                params_after: 0,
                macs_before: 0,
                macs_after: 0,
                errors: None,
                other_factorisation: None,
                other_probe_ranks: None,
                search: Vec::new(),
                timing: None,
            })
            .collect(),
        tries: Vec::new(),
        fidelity: None,
        comparisons: Vec::new(),
        fps: None,
        stages: Vec::new(),
        peak_rss_mib: None,
        nothing_to_do: None,
    };
    if convs.is_empty() {
        report.nothing_to_do = Some(if unsupported.is_empty() {
            "the model has no convolutions".into()
        } else if nothing_supported {
            format!("none of its {} convolutions can be decomposed", unsupported.len())
        } else {
            format!(
                "all {} of its decomposable convolutions are left out",
                unsupported.len()
            )
        });
        return Ok(report);
    }
    stage("read the model", &mut stages, &mut stage_t);
    let fd = frame_data(rt, job, &opts.session, &source.proto, &convs, progress)?;
    report.execution_provider = fd.ep.clone();
    let ep = fd.ep;
    report.calibration = fd.calibration;
    report.evaluation = fd.evaluation;
    let (labels, truths, mut captured_layers) = (fd.labels, fd.truths, fd.layers);
    stage("capture", &mut stages, &mut stage_t);

    // Per-layer preparation.
    let inits = graph::initializers(&g);
    let mut layers = Vec::new();
    for (i, (conv, captured)) in convs.iter().zip(captured_layers.drain(..)).enumerate() {
        progress(Event::Layer {
            index: i,
            total: convs.len(),
            name: &conv.name,
            what: "factorising",
        });
        let Some(captured) = captured else { continue };
        let tensor_err = |source| CompressError::Tensor {
            path: job.model.clone(),
            source,
        };
        let w = inits
            .get(conv.weight.as_str())
            .map(|t| floats(t))
            .transpose()
            .map_err(tensor_err)?
            .unwrap_or_default();
        let bias_f32 = match &conv.bias {
            Some(b) => inits
                .get(b.as_str())
                .map(|t| floats(t))
                .transpose()
                .map_err(tensor_err)?,
            None => None,
        };
        let bias: Vec<f64> = bias_f32.iter().flatten().map(|&v| f64::from(v)).collect();
        let [k, c, _, _] = conv.kernel;
        let kernel = Kernel::from_f32(k, c, conv.taps(), &w);
        let (h, wd) = captured.size;
        let d = c * conv.taps();
        let positions = conv.output_size(h, wd).0 * conv.output_size(h, wd).1;
        let samples = (2 * d).div_ceil(positions.max(1)).clamp(1, 32);
        let random = PatchStats::random(conv, h, wd, samples, 0x6b65_7374 + i as u64);
        let prepared =
            Prepared::new(kernel, Some(&captured.stats), opts.shrinkage).map_err(|source| CompressError::Tucker {
                layer: conv.name.clone(),
                source,
            })?;
        let wref = prepared.kernel.w.as_ref();
        let energy = (
            captured.stats.output_energy(wref, &bias),
            random.output_energy(wref, &bias),
        );
        layers.push(Layer {
            conv: conv.clone(),
            size: (h, wd),
            out_size: conv.output_size(h, wd),
            rungs: ladder(c, k, conv.taps(), opts.rank_multiple),
            prepared,
            bias_f32,
            calib: captured.stats,
            random,
            energy,
            memo: HashMap::new(),
            timing: HashMap::new(),
        });
    }
    drop(captured_layers);
    stage("factorise", &mut stages, &mut stage_t);
    let tmp = tempfile::tempdir().map_err(CompressError::Temp)?;
    let mut run = Run {
        rt,
        opts,
        job,
        source,
        layers,
        labels,
        truths,
        tmp,
        ep,
    };
    let n = run.layers.len();
    let how = opts.factorisation;

    // Search at a bound, then the whole-model check; tighten by bisection while fidelity is short.
    let at_bound = |run: &mut Run<'_>, bound: f64, progress: &mut dyn FnMut(Event<'_>)| {
        let mut ds = Vec::with_capacity(n);
        for i in 0..n {
            let name = run.layers[i].conv.name.clone();
            progress(Event::Layer {
                index: i,
                total: n,
                name: &name,
                what: "searching ranks",
            });
            ds.push(run.decide(i, bound, how, opts.probe, true)?);
        }
        Ok::<_, CompressError>(ds)
    };
    let check =
        |run: &mut Run<'_>, ds: &[Decision], bound: f64, tries: &mut Vec<Try>, progress: &mut dyn FnMut(Event<'_>)| {
            progress(Event::Stage("checking the whole model on the held-out frames"));
            let choice: Vec<_> = ds.iter().map(|d| d.ranks).collect();
            let m = run.build(&choice, how)?;
            let ev = run.fidelity(&m, "try.onnx")?;
            let (params, _) = run.params_of(&choice);
            let meets = ev.map50 >= opts.min_fidelity;
            tries.push(Try {
                max_layer_error: bound,
                decomposed_layers: choice.iter().flatten().count(),
                params,
                map50: ev.map50,
                meets,
            });
            Ok::<_, CompressError>((meets, ev))
        };
    let mut bound = opts.max_layer_error;
    let mut decisions = at_bound(&mut run, bound, progress)?;
    stage("search", &mut stages, &mut stage_t);
    let (meets, mut fidelity) = check(&mut run, &decisions, bound, &mut report.tries, progress)?;
    if !meets {
        let (mut lo, mut hi) = (0.0f64, bound);
        // Of the tries that meet the fidelity, keep the one with the fewest parameters (the bisection steers
        // by the bound, but which layers the device finds faster need not change monotonically with it).
        let mut best: Option<(f64, Vec<Decision>, Evaluation, usize)> = None;
        for _ in 0..opts.tighten_steps {
            let mid = (lo + hi) / 2.0;
            let ds = at_bound(&mut run, mid, progress)?;
            let (ok, ev) = check(&mut run, &ds, mid, &mut report.tries, progress)?;
            if ok {
                lo = mid;
                let params = report.tries.last().map_or(usize::MAX, |t| t.params);
                if best.as_ref().is_none_or(|b| params < b.3) {
                    best = Some((mid, ds, ev, params));
                }
            } else {
                hi = mid;
            }
        }
        match best {
            Some((b, ds, ev, _)) => {
                bound = b;
                decisions = ds;
                fidelity = ev;
            }
            None => {
                bound = 0.0;
                let why = format!(
                    "no bound tried kept the whole model at mAP@0.5 ≥ {} (tightest tried: {hi:.4})",
                    opts.min_fidelity
                );
                for d in &mut decisions {
                    d.ranks = None;
                    d.reason.clone_from(&why);
                }
            }
        }
        stage("tighten", &mut stages, &mut stage_t);
    }
    report.bound_used = bound;
    let choice: Vec<_> = decisions.iter().map(|d| d.ranks).collect();

    // Comparisons at the final choice.
    let mut other_ranks = vec![None; n];
    if opts.compare && choice.iter().any(Option::is_some) {
        progress(Event::Stage("comparing factorisations and probes"));
        let (params, macs) = run.params_of(&choice);
        let alt = other(how);
        let m = run.build(&choice, alt)?;
        let ev = run.fidelity(&m, "other-factorisation.onnx")?;
        report.comparisons.push(Variant {
            what: format!("{} factors at the same ranks", factor_name(alt)),
            params,
            macs,
            map50: ev.map50,
            map50_95: ev.map50_95,
        });
        report.comparisons.push(Variant {
            what: format!("{} factors (the chosen model)", factor_name(how)),
            params,
            macs,
            map50: fidelity.map50,
            map50_95: fidelity.map50_95,
        });
        // The other probe's own search at the same bound (random probe → HOSVD factors, which is what a
        // random probe can justify; calibration probe → data-aware), without the timing filter.
        let (oprobe, ohow) = match opts.probe {
            Probe::Calibration => (Probe::Random, Factorisation::Hosvd { hooi_iterations: 0 }),
            Probe::Random => (Probe::Calibration, Factorisation::DataAware),
        };
        let mut ochoice = Vec::with_capacity(n);
        for (i, chosen) in choice.iter().enumerate() {
            let name = run.layers[i].conv.name.clone();
            progress(Event::Layer {
                index: i,
                total: n,
                name: &name,
                what: "searching with the other probe",
            });
            let d = run.decide(i, bound, ohow, oprobe, false)?;
            // Keep the same set of layers as the chosen model, so the comparison is of the probe only.
            ochoice.push(if chosen.is_some() { d.ranks } else { None });
        }
        let (oparams, omacs) = run.params_of(&ochoice);
        let m = run.build(&ochoice, ohow)?;
        let ev = run.fidelity(&m, "other-probe.onnx")?;
        report.comparisons.push(Variant {
            what: format!(
                "{} probe's own search ({} factors) on the same layers",
                probe_name(oprobe),
                factor_name(ohow)
            ),
            params: oparams,
            macs: omacs,
            map50: ev.map50,
            map50_95: ev.map50_95,
        });
        other_ranks = ochoice;
        stage("compare", &mut stages, &mut stage_t);
    }

    // Layer reports.
    let alt = other(how);
    for (i, d) in decisions.iter().enumerate() {
        let l = &mut run.layers[i];
        let r = d.ranks;
        let errors = match r {
            Some(r) => Some(
                l.evaluate(how, r)
                    .map(|x| x.1)
                    .map_err(|source| CompressError::Tucker {
                        layer: l.conv.name.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let other_factorisation = match r {
            Some(r) => Some(
                l.evaluate(alt, r)
                    .map(|x| x.1)
                    .map_err(|source| CompressError::Tucker {
                        layer: l.conv.name.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let (h, w) = l.size;
        report.layers.push(LayerReport {
            name: l.conv.name.clone(),
            kernel: Some(l.conv.kernel),
            input: Some([1, l.conv.in_channels(), h, w]),
            decomposed: r.is_some(),
            reason: d.reason.clone(),
            ranks: r,
            params_before: l.conv.weight_params(),
            params_after: r.map_or(l.conv.weight_params(), |r| l.params(r)),
            macs_before: l.macs_before(),
            macs_after: r.map_or(l.macs_before(), |r| l.macs_after(r)),
            errors,
            other_factorisation,
            other_probe_ranks: other_ranks[i],
            search: d.trials.clone(),
            timing: r.and_then(|r| l.timing.get(&r).copied()),
        });
    }
    let (_, source_macs) = run.params_of(&vec![None; n]);
    report.source.conv_macs = source_macs;
    if choice.iter().all(Option::is_none) {
        report.nothing_to_do =
            Some("no convolution met the bound (and, where asked, was faster): the model is unchanged".into());
        report.fidelity = Some(fidelity);
        report.stages = stages;
        report.peak_rss_mib = peak_rss_mib();
        return Ok(report);
    }
    let mut out = run.build(&choice, how)?;
    let meta = serde_json::json!({
        "method": "tucker",
        "source_sha256": run.source.sha256,
        "probe": opts.probe,
        "factorisation": how,
        "max_layer_error": bound,
        "layers": report.layers.iter().filter(|l| l.decomposed).map(|l| serde_json::json!({
            "name": l.name,
            "ranks": l.ranks,
            "error": l.errors.map(|e| match opts.probe { Probe::Calibration => e.calibration, Probe::Random => e.random }),
        })).collect::<Vec<_>>(),
    });
    out.set_metadata(METADATA_KEY, meta.to_string());
    let bytes = out.encode();
    let (oparams, omacs) = run.params_of(&choice);
    report.output = Some(Summary {
        params: oparams,
        conv_macs: omacs,
        sha256: crate::model::sha256_hex(&bytes),
        path: job.out.display().to_string(),
    });
    report.fidelity = Some(fidelity);
    if opts.fps_rounds > 0 {
        progress(Event::Stage("timing the whole model before and after, interleaved"));
        let p = run.tmp.path().join("final.onnx");
        write_atomic(&p, &bytes)?;
        report.fps = Some(compare_models(
            rt,
            &opts.session,
            &job.model,
            &p,
            opts.fps_rounds,
            opts.fps_runs,
        )?);
        stage("fps", &mut stages, &mut stage_t);
    }
    write_atomic(&job.out, &bytes)?;
    stage("write", &mut stages, &mut stage_t);
    report.stages = stages;
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

fn factor_name(f: Factorisation) -> &'static str {
    match f {
        Factorisation::DataAware => "data-aware",
        Factorisation::Hosvd { hooi_iterations: 0 } => "HOSVD",
        Factorisation::Hosvd { .. } => "HOSVD+HOOI",
    }
}

fn probe_name(p: Probe) -> &'static str {
    match p {
        Probe::Calibration => "calibration",
        Probe::Random => "random",
    }
}
