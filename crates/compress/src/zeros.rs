//! `kestrel compress --method zeros`: magnitude pruning that only sets weights to zero, the talk's lesson made
//! measurable. Per convolution, the fraction `ratio` of its weights with the smallest |w| become 0.0; the
//! tensors keep their shapes, so the model has exactly as many parameters, the same file size (plus the
//! metadata entry) and, on a dense runtime, the same speed. What changes is how well the file compresses:
//! the report gives the zstd size before and after (the size of an over-the-air update, `--package`).
//!
//! [`zero_smallest`] is the maths, pure; [`zeros`] the procedure from the model file to the report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use crate::compress::{peak_rss_mib, Event, Stage, METADATA_KEY};
use crate::graph::{self, Unsupported};
use crate::model::{check_output, floats, write_atomic, ModelFileError, OnnxModel, TensorError, FLOAT};
use crate::onnx::{GraphProto, NodeProto, TensorProto};
use crate::package::{write_encoded, Packaged};
use crate::timing::{compare_models, FpsComparison, TimingError};
use kestrel_infer::model::SessionOptions;
use kestrel_infer::package::{self as pkg, PackageError};
use kestrel_infer::runtime::Runtime;

#[derive(Debug, Error)]
pub enum ZerosError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{path}: {source}")]
    Tensor { path: PathBuf, source: TensorError },
    #[error("measuring the zstd size: {0}")]
    Zstd(#[source] PackageError),
    #[error("timing on the device: {0}")]
    Timing(#[from] TimingError),
    #[error("a temporary directory: {0}")]
    Temp(#[source] std::io::Error),
}

/// How many of `n` weights a ratio zeroes: `ratio · n` rounded to the nearest whole number (halves up),
/// within 0..=n (a ratio outside [0, 1], or NaN, is taken as the nearest end).
pub fn count_for(n: usize, ratio: f64) -> usize {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return n;
    }
    ((ratio * n as f64).round() as usize).min(n)
}

/// What [`zero_smallest`] did to one tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Zeroed {
    /// Weights set to zero: exactly [`count_for`]`(len, ratio)`, including any that were zero already.
    pub zeroed: usize,
    /// Weights that were exactly ±0.0 before.
    pub zeros_before: usize,
    /// The largest |w| zeroed (0 when none): every weight left has |w| ≥ this.
    pub threshold: f32,
}

/// Set the [`count_for`]`(w.len(), ratio)` weights of smallest |w| to 0.0. Ties in |w| are broken by
/// position (the earlier weight is zeroed first), so exactly that many are zeroed and the result does not
/// depend on the sort. NaN counts as larger than any number (never zeroed before one). A ratio of 0 leaves
/// `w` untouched, bit for bit.
pub fn zero_smallest(w: &mut [f32], ratio: f64) -> Zeroed {
    let zeros_before = w.iter().filter(|v| **v == 0.0).count();
    let k = count_for(w.len(), ratio);
    if k == 0 {
        return Zeroed {
            zeroed: 0,
            zeros_before,
            threshold: 0.0,
        };
    }
    let mut order: Vec<usize> = (0..w.len()).collect();
    let by_magnitude = |a: &usize, b: &usize| w[*a].abs().total_cmp(&w[*b].abs()).then(a.cmp(b));
    order.select_nth_unstable_by(k - 1, by_magnitude);
    let threshold = w[order[k - 1]].abs();
    for &i in &order[..k] {
        w[i] = 0.0;
    }
    Zeroed {
        zeroed: k,
        zeros_before,
        threshold,
    }
}

/// Write `values` back into a float initializer in the form it was stored (raw bytes or `float_data`).
fn set_floats(t: &mut TensorProto, values: &[f32]) {
    match &mut t.raw_data {
        Some(raw) if !raw.is_empty() => {
            raw.clear();
            for v in values {
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        _ => t.float_data = values.to_vec(),
    }
}

fn node_name(n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => n.output.first().cloned().unwrap_or_default(),
    }
}

/// Settings of one `--method zeros` run.
#[derive(Clone, Debug)]
pub struct ZerosOptions {
    /// Fraction of each convolution's weights zeroed, 0..=1.
    pub ratio: f64,
    /// Also prune the detection head's output convolutions ([`graph::head_convolutions`]).
    pub include_head: bool,
    /// Convolutions (node names) left as they are.
    pub exclude: Vec<String>,
    pub session: SessionOptions,
    /// Interleaved rounds and runs per round of the whole-model fps comparison; 0 rounds skips it.
    pub fps_rounds: usize,
    pub fps_runs: usize,
    /// zstd level of the reported sizes (and of the package).
    pub zstd_level: i32,
    /// Also write `OUT.zst` and `OUT.zst.sha256`.
    pub package: bool,
}

impl Default for ZerosOptions {
    fn default() -> Self {
        Self {
            ratio: 0.5,
            include_head: false,
            exclude: Vec::new(),
            session: SessionOptions::default(),
            fps_rounds: 6,
            fps_runs: 10,
            zstd_level: pkg::LEVEL,
            package: false,
        }
    }
}

/// One model file, as the report describes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileSummary {
    pub path: String,
    pub sha256: String,
    /// Elements of all float initializers.
    pub params: usize,
    /// Of those, how many are exactly zero.
    pub zero_params: usize,
    pub file_bytes: u64,
    /// The file compressed with zstd at the report's level (frame checksum on, as a package).
    pub zstd_bytes: u64,
}

/// One pruned convolution.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ZeroedLayer {
    pub name: String,
    /// The weight initializer.
    pub weight: String,
    pub shape: Vec<i64>,
    pub params: usize,
    pub zeroed: usize,
    pub zeros_before: usize,
    pub zeros_after: usize,
    /// The largest |w| zeroed.
    pub threshold: f32,
}

/// The report of `--method zeros` (`--report`), also the source of the printed summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ZerosReport {
    pub kestrel_compress_report: u32,
    pub method: &'static str,
    pub ratio: f64,
    pub include_head: bool,
    pub zstd_level: i32,
    pub source: FileSummary,
    /// None when there was nothing to prune (no model written).
    pub output: Option<FileSummary>,
    pub layers: Vec<ZeroedLayer>,
    /// Convolutions left as they are, and why.
    pub left: Vec<Unsupported>,
    /// Weights of the pruned convolutions, and how many of them were zeroed.
    pub conv_weights: usize,
    pub zeroed: usize,
    /// Bare inference rate before and after, interleaved (None with 0 rounds).
    pub fps: Option<FpsComparison>,
    /// The providers asked for the fps comparison, in order of preference.
    pub execution_providers: Vec<String>,
    pub package: Option<Packaged>,
    pub stages: Vec<Stage>,
    pub peak_rss_mib: Option<f64>,
    pub nothing_to_do: Option<String>,
}

fn zero_count(g: &GraphProto) -> usize {
    g.initializer
        .iter()
        .filter(|t| t.data_type() == FLOAT)
        .filter_map(|t| floats(t).ok())
        .map(|v| v.iter().filter(|x| **x == 0.0).count())
        .sum()
}

/// Zero the smallest weights of every convolution with constant float weights (the detection head's
/// output convolutions only with `include_head`) in `g`; the others are listed with the reason.
fn prune_graph(
    g: &mut GraphProto,
    opts: &ZerosOptions,
    path: &Path,
) -> Result<(Vec<ZeroedLayer>, Vec<Unsupported>), ZerosError> {
    let head = graph::head_convolutions(g);
    let mut layers = Vec::new();
    let mut left = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    let convs: Vec<(String, Option<String>)> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv" && n.domain().is_empty())
        .map(|n| (node_name(n), n.input.get(1).cloned()))
        .collect();
    for (name, weight) in convs {
        let leave = |reason: String| Unsupported {
            name: name.clone(),
            reason,
        };
        let Some(weight) = weight else {
            left.push(leave("a Conv without a weight input".into()));
            continue;
        };
        if opts.exclude.contains(&name) {
            left.push(leave("excluded (--exclude)".into()));
            continue;
        }
        if !opts.include_head && head.contains(&name) {
            left.push(leave(
                "a detection-head output convolution (its outputs are the detections' logits): left as it is \
                 (--include-head prunes it too)"
                    .into(),
            ));
            continue;
        }
        if !done.insert(weight.clone()) {
            left.push(leave(format!(
                "its weight `{weight}` is shared with a convolution pruned already"
            )));
            continue;
        }
        let Some(t) = g.initializer.iter_mut().find(|t| t.name() == weight) else {
            left.push(leave(format!(
                "its weight `{weight}` is not a constant (an initializer): computed at run time"
            )));
            continue;
        };
        if t.data_type() != FLOAT {
            left.push(leave(format!("its weight `{weight}` is not float32")));
            continue;
        }
        let mut w = floats(t).map_err(|source| ZerosError::Tensor {
            path: path.to_path_buf(),
            source,
        })?;
        let z = zero_smallest(&mut w, opts.ratio);
        if z.zeroed > 0 {
            set_floats(t, &w);
        }
        layers.push(ZeroedLayer {
            name,
            weight,
            shape: t.dims.clone(),
            params: w.len(),
            zeroed: z.zeroed,
            zeros_before: z.zeros_before,
            zeros_after: w.iter().filter(|v| **v == 0.0).count(),
            threshold: z.threshold,
        });
    }
    Ok((layers, left))
}

/// Run `kestrel compress --method zeros` on `model`, writing `out` (and with `package`, its package).
/// `rt` is needed only for the fps comparison (skipped without it, or with 0 rounds).
pub fn zeros(
    rt: Option<&Runtime>,
    model: &Path,
    out: &Path,
    opts: &ZerosOptions,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<ZerosReport, ZerosError> {
    let mut stages = Vec::new();
    let mut t = Instant::now();
    let mut stage = |name: &str, t: &mut Instant| {
        stages.push(Stage {
            stage: name.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
        *t = Instant::now();
    };
    check_output(model, out)?;
    progress(Event::Stage("reading the model"));
    let bytes = std::fs::read(model).map_err(|source| ModelFileError::Read {
        path: model.to_path_buf(),
        source,
    })?;
    let mut m = OnnxModel::decode(model, &bytes)?;
    let g0 = m.proto.graph.clone().unwrap_or_default();
    let summary = |path: &Path, sha256: String, g: &GraphProto, file: &[u8], zstd: u64| FileSummary {
        path: path.display().to_string(),
        sha256,
        params: graph::parameter_count(g),
        zero_params: zero_count(g),
        file_bytes: file.len() as u64,
        zstd_bytes: zstd,
    };
    stage("read", &mut t);

    progress(Event::Stage("zeroing the smallest weights of each convolution"));
    let (layers, left) = match m.proto.graph.as_mut() {
        Some(g) => prune_graph(g, opts, model)?,
        None => (Vec::new(), Vec::new()),
    };
    stage("prune", &mut t);
    let conv_weights = layers.iter().map(|l| l.params).sum();
    let zeroed = layers.iter().map(|l| l.zeroed).sum();
    let mut report = ZerosReport {
        kestrel_compress_report: 1,
        method: "zeros",
        ratio: opts.ratio,
        include_head: opts.include_head,
        zstd_level: opts.zstd_level,
        source: summary(model, m.sha256.clone(), &g0, &bytes, 0),
        output: None,
        layers,
        left,
        conv_weights,
        zeroed,
        fps: None,
        execution_providers: opts.session.ep.providers.iter().map(|p| p.name().to_string()).collect(),
        package: None,
        stages: Vec::new(),
        peak_rss_mib: None,
        nothing_to_do: None,
    };
    if report.layers.is_empty() {
        report.nothing_to_do = Some(if report.left.is_empty() {
            "the model has no convolutions".into()
        } else {
            format!("all {} of its convolutions are left out", report.left.len())
        });
        report.stages = stages;
        report.peak_rss_mib = peak_rss_mib();
        return Ok(report);
    }
    let meta = serde_json::json!({
        "method": "zeros",
        "ratio": opts.ratio,
        "source_sha256": m.sha256,
        "layers": report.layers.iter().map(|l| serde_json::json!({
            "name": l.name,
            "zeroed": l.zeroed,
            "params": l.params,
        })).collect::<Vec<_>>(),
    });
    m.set_metadata(METADATA_KEY, meta.to_string());
    let out_bytes = m.encode();
    let g1 = m.proto.graph.clone().unwrap_or_default();

    progress(Event::Stage("compressing both models with zstd"));
    let zst_before = pkg::encode(&bytes, opts.zstd_level).map_err(ZerosError::Zstd)?;
    let zst_after = pkg::encode(&out_bytes, opts.zstd_level).map_err(ZerosError::Zstd)?;
    report.source.zstd_bytes = zst_before.len() as u64;
    drop(zst_before);
    report.output = Some(summary(
        out,
        crate::model::sha256_hex(&out_bytes),
        &g1,
        &out_bytes,
        zst_after.len() as u64,
    ));
    stage("zstd", &mut t);

    if let Some(rt) = rt.filter(|_| opts.fps_rounds > 0) {
        progress(Event::Stage("timing the whole model before and after, interleaved"));
        let tmp = tempfile::tempdir().map_err(ZerosError::Temp)?;
        let p = tmp.path().join("zeros.onnx");
        write_atomic(&p, &out_bytes)?;
        report.fps = Some(compare_models(
            rt,
            &opts.session,
            model,
            &p,
            opts.fps_rounds,
            opts.fps_runs,
        )?);
        stage("fps", &mut t);
    }
    write_atomic(out, &out_bytes)?;
    if opts.package {
        report.package = Some(write_encoded(out, out_bytes.len(), &zst_after, opts.zstd_level)?);
    }
    stage("write", &mut t);
    report.stages = stages;
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_round_to_nearest_within_range() {
        assert_eq!(count_for(10, 0.5), 5);
        assert_eq!(count_for(7, 0.5), 4); // 3.5 rounds up
        assert_eq!(count_for(3, 1.0 / 3.0), 1);
        assert_eq!(count_for(10, 0.0), 0);
        assert_eq!(count_for(10, 1.0), 10);
        assert_eq!(count_for(10, -0.1), 0);
        assert_eq!(count_for(10, 1.5), 10);
        assert_eq!(count_for(10, f64::NAN), 0);
        assert_eq!(count_for(0, 0.5), 0);
    }

    #[test]
    fn smallest_magnitudes_are_zeroed_whatever_their_sign() {
        let mut w = vec![0.5, -0.1, 0.3, -0.7, 0.2, 0.05];
        let z = zero_smallest(&mut w, 0.5);
        assert_eq!(w, vec![0.5, 0.0, 0.3, -0.7, 0.0, 0.0]);
        assert_eq!(
            z,
            Zeroed {
                zeroed: 3,
                zeros_before: 0,
                threshold: 0.2
            }
        );
    }

    #[test]
    fn ties_are_broken_by_position_and_the_count_is_exact() {
        // Six weights of equal magnitude: half are zeroed, the first three.
        let mut w = vec![0.25, -0.25, 0.25, -0.25, 0.25, -0.25];
        let z = zero_smallest(&mut w, 0.5);
        assert_eq!(w, vec![0.0, 0.0, 0.0, -0.25, 0.25, -0.25]);
        assert_eq!((z.zeroed, z.threshold), (3, 0.25));
        // A tie across the threshold: 0.1 twice, only one of them fits.
        let mut w = vec![0.3, 0.1, 0.2, -0.1];
        zero_smallest(&mut w, 0.25);
        assert_eq!(w, vec![0.3, 0.0, 0.2, -0.1]);
    }

    #[test]
    fn existing_zeros_count_among_the_smallest() {
        let mut w = vec![0.0, 1.0, -0.0, 2.0, 3.0, 4.0];
        let z = zero_smallest(&mut w, 0.5);
        assert_eq!(w, vec![0.0, 0.0, 0.0, 2.0, 3.0, 4.0]);
        assert_eq!((z.zeroed, z.zeros_before, z.threshold), (3, 2, 1.0));
    }

    #[test]
    fn nan_is_never_zeroed_before_a_number() {
        let mut w = vec![f32::NAN, 1.0, -2.0, f32::INFINITY];
        zero_smallest(&mut w, 0.75);
        assert!(w[0].is_nan());
        assert_eq!(&w[1..], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn ratio_zero_leaves_weights_bit_identical() {
        let orig = vec![-0.0f32, 1.5, f32::MIN_POSITIVE, -3.25, f32::NAN, 1e-30];
        let mut w = orig.clone();
        let z = zero_smallest(&mut w, 0.0);
        assert_eq!(z.zeroed, 0);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w), bits(&orig));
    }

    proptest! {
        /// Exactly `count_for(n, ratio)` weights are zeroed, and none of the survivors is smaller in
        /// magnitude than any weight that was zeroed.
        #[test]
        fn exact_fraction_and_the_smallest(
            w in prop::collection::vec(prop_oneof![-4.0f32..4.0, Just(0.0f32), Just(0.5f32), Just(-0.5f32)], 0..400),
            ratio in 0.0f64..=1.0,
        ) {
            let mut v = w.clone();
            let z = zero_smallest(&mut v, ratio);
            let k = count_for(w.len(), ratio);
            prop_assert_eq!(z.zeroed, k);
            let zeros_before = w.iter().filter(|x| **x == 0.0).count();
            prop_assert_eq!(z.zeros_before, zeros_before);
            // The originals' zeros are the smallest of all: among the k unless there are more of them.
            prop_assert_eq!(v.iter().filter(|x| **x == 0.0).count(), k.max(zeros_before));
            let zeroed: Vec<usize> = (0..w.len()).filter(|&i| v[i] == 0.0 && w[i] != 0.0).collect();
            let kept: Vec<usize> = (0..w.len()).filter(|&i| v[i] != 0.0).collect();
            let max_zeroed = zeroed.iter().map(|&i| w[i].abs()).fold(0.0f32, f32::max);
            for &i in &kept {
                prop_assert!(w[i].abs() >= max_zeroed);
                prop_assert_eq!(v[i].to_bits(), w[i].to_bits());
            }
            prop_assert!(z.threshold >= max_zeroed);
        }
    }

    #[test]
    fn stored_form_is_kept() {
        let mut raw = crate::model::float_tensor("w", &[4], &[1.0, -2.0, 0.5, 3.0]);
        let mut w = floats(&raw).unwrap();
        zero_smallest(&mut w, 0.5);
        set_floats(&mut raw, &w);
        assert_eq!(raw.raw_data.as_ref().map(Vec::len), Some(16));
        assert!(raw.float_data.is_empty());
        assert_eq!(floats(&raw).unwrap(), vec![0.0, -2.0, 0.0, 3.0]);
        let mut fd = TensorProto {
            dims: vec![2],
            data_type: Some(FLOAT),
            name: Some("f".into()),
            float_data: vec![0.1, -0.2],
            ..Default::default()
        };
        set_floats(&mut fd, &[0.0, -0.2]);
        assert_eq!(fd.float_data, vec![0.0, -0.2]);
        assert!(fd.raw_data.as_ref().is_none_or(Vec::is_empty));
    }
}
