//! Structured channel pruning of an ONNX model: whole filters go, with the matching input channels of
//! everything that reads them, so the model really is smaller and needs fewer operations.
//!
//! - [`groups`]: which channels must go together (residual `Add`s, `Concat`, `Split`/`Slice`), and the
//!   graph rewrite.
//! - [`select`]: which channels (L1 norm, or greedy least-squares on the captured inputs) and the refit of
//!   the next layers' weights.
//!
//! The procedure mirrors the Tucker one: for each group, the fewest channels kept whose consumers' output
//! error ‖y − y′‖/‖y‖ on the calibration frames stays under `--max-layer-error`, by binary search; then the
//! whole model on the held-out frames, tightening the bound while fidelity is short. One uniform ratio
//! meeting the same fidelity, and L1 at the same channel counts, are the comparisons.

pub mod groups;
pub mod select;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use faer::Mat;
use kestrel_infer::runtime::Runtime;

use crate::compress::{fidelity_of, frame_data, CompressError, Event, Frames, Job, Options, Summary, Try, Variant};
use crate::evaluate::{Evaluation, Truth};
use crate::graph;
use crate::model::{floats, OnnxModel};
use crate::search::smallest_meeting;
use crate::stats::PatchStats;
use groups::{ChannelGraph, Group};
use select::Consumer;

/// How channels are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Importance {
    /// Greedy least-squares (block OBS) on the captured inputs, with the next layers refitted.
    DataAware,
    /// The L1 norm of each filter; the next layers' columns are dropped.
    L1,
}

impl Importance {
    pub fn name(self) -> &'static str {
        match self {
            Importance::DataAware => "data-aware",
            Importance::L1 => "L1",
        }
    }
}

/// Settings of the pruning stage (the shared ones, fidelity, session, frames, are in [`Options`]).
#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub importance: Importance,
    /// Kept channel counts are multiples of this (and at least one multiple).
    pub channel_multiple: usize,
    /// Ridge on the input covariance, as a fraction of its mean diagonal.
    pub damping: f64,
    /// Prune every group by this fraction instead of searching (no fidelity tightening).
    pub uniform_ratio: Option<f64>,
    /// Greedy batch (channels removed per step of the data-aware order).
    pub batch: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            importance: Importance::DataAware,
            channel_multiple: 8,
            damping: 0.01,
            uniform_ratio: None,
            batch: 8,
        }
    }
}

/// Errors of one group at one channel count: the worst consumer's.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PruneErrors {
    /// Data-aware choice and refit, on the calibration inputs.
    pub data_aware: f64,
    /// L1 choice, columns dropped, on the calibration inputs.
    pub l1: f64,
    /// The chosen importance's weights on random N(0, 1) inputs of the same shape (the talk's probe).
    pub random: f64,
}

/// What happened to one group.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupReport {
    #[serde(flatten)]
    pub group: Group,
    pub pruned: bool,
    pub reason: String,
    pub kept: usize,
    pub errors: Option<PruneErrors>,
    /// Channel counts tried at the final bound: (kept, error).
    pub search: Vec<(usize, f64, bool)>,
}

/// The uniform-ratio comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Uniform {
    /// Fraction of each group's channels removed, the largest tried that meets the fidelity.
    pub ratio: f64,
    pub params: usize,
    pub conv_macs: u64,
    pub map50: f64,
    pub map50_95: f64,
    /// Every ratio tried: (ratio, params, mAP@0.5).
    pub tries: Vec<(f64, usize, f64)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PruneReport {
    pub importance: Importance,
    pub channel_multiple: usize,
    pub damping: f64,
    pub max_layer_error: f64,
    pub bound_used: f64,
    pub uniform_ratio: Option<f64>,
    pub min_fidelity: f64,
    pub execution_provider: String,
    pub source: Summary,
    pub output: Option<Summary>,
    pub calibration: Frames,
    pub evaluation: Frames,
    /// Every dependency group found, pruned or not (and why not).
    pub groups: Vec<GroupReport>,
    pub tries: Vec<Try>,
    pub fidelity: Option<Evaluation>,
    /// Data-aware against L1 at the same channel counts; per-group search against one uniform ratio.
    pub comparisons: Vec<Variant>,
    pub uniform: Option<Uniform>,
    pub nothing_to_do: Option<String>,
}

/// One prunable group with everything its search needs.
struct Candidate<'a> {
    index: usize,
    consumers: Vec<Consumer<'a>>,
    random: Vec<PatchStats>,
    /// Per importance: the classes (indices into the group's classes) in removal order.
    orders: HashMap<Importance, Vec<usize>>,
    rungs: Vec<usize>,
    memo: HashMap<(Importance, usize), f64>,
}

struct Pruner<'a> {
    cg: ChannelGraph,
    source: OnnxModel,
    /// Per convolution: its input size, as captured.
    sizes: Vec<Option<(usize, usize)>>,
    candidates: Vec<Candidate<'a>>,
    opts: &'a PruneOptions,
}

fn select_err(group: &Group, source: select::SelectError) -> CompressError {
    CompressError::Select {
        group: group.convs.join(", "),
        source,
    }
}

impl Pruner<'_> {
    fn group(&self, c: usize) -> &Group {
        &self.cg.groups[self.candidates[c].index]
    }

    /// The columns of each consumer removed when the first `n` classes of `order` go.
    fn removed_columns(cand: &Candidate<'_>, order: &[usize], n: usize) -> Vec<Vec<usize>> {
        cand.consumers
            .iter()
            .map(|c| order[..n].iter().flat_map(|&q| c.columns[q].iter().copied()).collect())
            .collect()
    }

    /// The worst consumer's calibration error with `kept` channels under `how`.
    fn error(&mut self, c: usize, how: Importance, kept: usize) -> Result<f64, CompressError> {
        if let Some(&e) = self.candidates[c].memo.get(&(how, kept)) {
            return Ok(e);
        }
        let group = self.group(c).clone();
        let cand = &self.candidates[c];
        let order = &cand.orders[&how];
        let n = group.channels - kept;
        let cols = Self::removed_columns(cand, order, n);
        let mut worst = 0.0f64;
        for (con, gone) in cand.consumers.iter().zip(&cols) {
            let e = match how {
                Importance::DataAware => {
                    let (w2, shift) = select::refit(con, gone, self.opts.damping).map_err(|e| select_err(&group, e))?;
                    con.stats
                        .relative_error(con.w.as_ref(), w2.as_ref(), con.energy, Some(&shift))
                }
                Importance::L1 => {
                    let w2 = select::dropped(con, gone);
                    con.stats.relative_error(con.w.as_ref(), w2.as_ref(), con.energy, None)
                }
            };
            worst = worst.max(e);
        }
        self.candidates[c].memo.insert((how, kept), worst);
        Ok(worst)
    }

    fn random_error(&self, c: usize, how: Importance, kept: usize) -> Result<f64, CompressError> {
        let group = self.group(c);
        let cand = &self.candidates[c];
        let cols = Self::removed_columns(cand, &cand.orders[&how], group.channels - kept);
        let mut worst = 0.0f64;
        for ((con, gone), rs) in cand.consumers.iter().zip(&cols).zip(&cand.random) {
            let (w2, shift) = match how {
                Importance::DataAware => {
                    select::refit(con, gone, self.opts.damping).map_err(|e| select_err(group, e))?
                }
                Importance::L1 => (select::dropped(con, gone), vec![0.0; con.w.nrows()]),
            };
            let energy = rs.output_energy(con.w.as_ref(), &con.bias);
            worst = worst.max(rs.relative_error(con.w.as_ref(), w2.as_ref(), energy, Some(&shift)));
        }
        Ok(worst)
    }

    /// The model with `kept[c]` channels in each candidate group (`None`: unpruned), under `how`.
    fn build(&self, kept: &[Option<usize>], how: Importance, path: &Path) -> Result<OnnxModel, CompressError> {
        let removed = self.removed(kept, how);
        let g = self.source.proto.graph.clone().unwrap_or_default();
        let mut refits = HashMap::new();
        if how == Importance::DataAware {
            // Each consumer refitted once, for all the channels it loses (from every group).
            let mut done = HashSet::new();
            for cand in &self.candidates {
                for con in &cand.consumers {
                    let Some(ci) = con.conv else { continue };
                    if !done.insert(ci) {
                        continue;
                    }
                    let Some(classes) = self.cg.input_classes(ci) else {
                        continue;
                    };
                    let conv = &self.cg.convs[ci];
                    let taps = conv.taps();
                    let gone: Vec<usize> = classes
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| removed.contains(r))
                        .flat_map(|(p, _)| (p * taps..(p + 1) * taps).collect::<Vec<_>>())
                        .collect();
                    if gone.is_empty() {
                        continue;
                    }
                    let (w2, shift) =
                        select::refit(con, &gone, self.opts.damping).map_err(|source| CompressError::Select {
                            group: format!("the consumer {}", conv.name),
                            source,
                        })?;
                    let gone_set: HashSet<usize> = gone.iter().copied().collect();
                    let keep: Vec<usize> = (0..w2.ncols()).filter(|j| !gone_set.contains(j)).collect();
                    let mut w = Vec::with_capacity(w2.nrows() * keep.len());
                    for i in 0..w2.nrows() {
                        for &j in &keep {
                            w.push(w2[(i, j)] as f32);
                        }
                    }
                    let b: Vec<f32> = con.bias.iter().zip(&shift).map(|(b, s)| (b + s) as f32).collect();
                    refits.insert(ci, (w, b));
                }
            }
        }
        let pg = self
            .cg
            .prune(&g, &removed, &refits)
            .map_err(|source| CompressError::PruneGraph {
                path: self.source.path.clone(),
                source,
            })?;
        let mut proto = self.source.proto.clone();
        proto.graph = Some(pg);
        Ok(OnnxModel {
            path: path.to_path_buf(),
            sha256: String::new(),
            proto,
        })
    }

    /// The classes removed with `kept[c]` channels in each candidate group, under `how`.
    fn removed(&self, kept: &[Option<usize>], how: Importance) -> HashSet<usize> {
        let mut removed = HashSet::new();
        for (c, k) in kept.iter().enumerate() {
            let Some(k) = k else { continue };
            let group = self.group(c);
            for &q in &self.candidates[c].orders[&how][..group.channels - k] {
                removed.insert(group.classes[q]);
            }
        }
        removed
    }

    /// Parameters and convolution MACs of `m` (its convolutions at the captured input sizes).
    fn size_of(&self, m: &OnnxModel) -> (usize, u64) {
        let g = m.proto.graph.as_ref();
        let params = g.map(graph::parameter_count).unwrap_or(0);
        let mut macs = 0u64;
        if let Some(g) = g {
            for c in graph::convolutions(g).into_iter().flatten() {
                // The pruned graph's convolutions have the same outputs' names: their sizes are the captured ones.
                let Some(ci) = self.cg.convs.iter().position(|o| o.output == c.output) else {
                    continue;
                };
                let Some((h, w)) = self.sizes[ci] else { continue };
                let (ho, wo) = c.output_size(h, w);
                macs += (c.weight_params() * ho * wo) as u64;
            }
        }
        (params, macs)
    }
}

fn weights(
    g: &crate::onnx::GraphProto,
    conv: &graph::Conv,
    path: &Path,
) -> Result<(Mat<f64>, Vec<f64>), CompressError> {
    let inits = graph::initializers(g);
    let tensor_err = |source| CompressError::Tensor {
        path: path.to_path_buf(),
        source,
    };
    let w = inits
        .get(conv.weight.as_str())
        .map(|t| floats(t))
        .transpose()
        .map_err(tensor_err)?
        .unwrap_or_default();
    let b = match &conv.bias {
        Some(b) => inits
            .get(b.as_str())
            .map(|t| floats(t))
            .transpose()
            .map_err(tensor_err)?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let [k, c, _, _] = conv.kernel;
    let d = c * conv.taps();
    let wm = Mat::from_fn(k, d, |i, j| f64::from(w.get(i * d + j).copied().unwrap_or(0.0)));
    let bias: Vec<f64> = if b.len() == k {
        b.iter().map(|&v| f64::from(v)).collect()
    } else {
        vec![0.0; k]
    };
    Ok((wm, bias))
}

/// The kept counts of a group of `c` channels: multiples of `m` below `c`, smallest first.
fn rungs(c: usize, m: usize) -> Vec<usize> {
    let m = m.max(1);
    (1..).map(|i| i * m).take_while(|&k| k < c).collect()
}

/// `c` channels with `ratio` of them removed, rounded down to a multiple of `m` (at least `m`).
fn uniform_kept(c: usize, m: usize, ratio: f64) -> usize {
    let m = m.max(1);
    let want = (c as f64 * (1.0 - ratio)).round() as usize;
    ((want / m) * m).clamp(m.min(c), c)
}

/// The output of [`prune`]: its report, and the model (when anything was pruned).
pub struct Pruned {
    pub report: PruneReport,
    pub model: Option<OnnxModel>,
    /// The frames' truths, to be reused by a following stage.
    pub truths: Vec<(std::path::PathBuf, Vec<Truth>)>,
}

/// Run the pruning stage on `job.model`. Does not write `job.out`: the caller writes (or decomposes
/// further).
pub fn prune(
    rt: &Runtime,
    job: &Job,
    opts: &Options,
    popts: &PruneOptions,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Pruned, CompressError> {
    progress(Event::Stage("reading the model"));
    let mut source = OnnxModel::load(&job.model)?;
    graph::fold_batch_norms(&mut source.proto).map_err(|e| CompressError::Graph {
        path: job.model.clone(),
        source: e,
    })?;
    let g = source.proto.graph.clone().unwrap_or_default();
    let head = graph::head_convolutions(&g);
    let cg =
        ChannelGraph::analyse(&g, graph::opset(&source.proto), &head).map_err(|source| CompressError::PruneGraph {
            path: job.model.clone(),
            source,
        })?;
    let mut report = PruneReport {
        importance: popts.importance,
        channel_multiple: popts.channel_multiple,
        damping: popts.damping,
        max_layer_error: opts.max_layer_error,
        bound_used: opts.max_layer_error,
        uniform_ratio: popts.uniform_ratio,
        min_fidelity: opts.min_fidelity,
        execution_provider: String::new(),
        source: Summary {
            params: graph::parameter_count(&g),
            conv_macs: 0,
            sha256: source.sha256.clone(),
            path: job.model.display().to_string(),
        },
        output: None,
        calibration: Frames::default(),
        evaluation: Frames::default(),
        groups: Vec::new(),
        tries: Vec::new(),
        fidelity: None,
        comparisons: Vec::new(),
        uniform: None,
        nothing_to_do: None,
    };
    // Which groups may be pruned.
    let m = popts.channel_multiple.max(1);
    let mut reasons: Vec<Option<String>> = Vec::new();
    for gr in &cg.groups {
        let excluded = gr.convs.iter().find(|c| opts.exclude.contains(c));
        reasons.push(if let Some(b) = &gr.blocked {
            Some(b.clone())
        } else if let Some(x) = excluded {
            Some(format!("`{x}` is excluded (--exclude)"))
        } else if gr.consumers.is_empty() {
            Some("no convolution reads these channels".into())
        } else if gr.channels < 2 * m {
            Some(format!("{} channels: fewer than two multiples of {m}", gr.channels))
        } else {
            None
        });
    }
    let prunable: Vec<usize> = (0..cg.groups.len()).filter(|&i| reasons[i].is_none()).collect();
    if prunable.is_empty() {
        report.nothing_to_do = Some("no dependency group can be pruned (each group's reason is in the report)".into());
        report.groups = cg
            .groups
            .iter()
            .zip(reasons)
            .map(|(gr, r)| GroupReport {
                group: gr.clone(),
                pruned: false,
                reason: r.unwrap_or_default(),
                kept: gr.channels,
                errors: None,
                search: Vec::new(),
            })
            .collect();
        return Ok(Pruned {
            report,
            model: None,
            truths: Vec::new(),
        });
    }
    let fd = frame_data(rt, job, &opts.session, &source.proto, &cg.convs, progress)?;
    report.execution_provider = fd.ep.clone();
    report.calibration = fd.calibration;
    report.evaluation = fd.evaluation;
    let sizes: Vec<Option<(usize, usize)>> = fd.layers.iter().map(|l| l.as_ref().map(|c| c.size)).collect();
    let stats: Vec<Option<PatchStats>> = fd.layers.into_iter().map(|l| l.map(|c| c.stats)).collect();
    let (truths, labels) = (fd.truths, fd.labels);

    // Per group: consumers, orders.
    let conv_weights: Vec<(Mat<f64>, Vec<f64>)> = cg
        .convs
        .iter()
        .map(|c| weights(&g, c, &job.model))
        .collect::<Result<_, _>>()?;
    let mut candidates = Vec::new();
    for (n, &gi) in prunable.iter().enumerate() {
        let gr = &cg.groups[gi];
        progress(Event::Layer {
            index: n,
            total: prunable.len(),
            name: &gr.convs.join(", "),
            what: "ordering channels",
        });
        let class_index: HashMap<usize, usize> = gr.classes.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut consumers = Vec::new();
        let mut random = Vec::new();
        for name in &gr.consumers {
            let Some(ci) = cg.conv_index(name) else { continue };
            let (Some(st), Some(classes), Some((h, w))) = (stats[ci].as_ref(), cg.input_classes(ci), sizes[ci]) else {
                continue;
            };
            let conv = &cg.convs[ci];
            let taps = conv.taps();
            let mut columns = vec![Vec::new(); gr.channels];
            for (p, r) in classes.iter().enumerate() {
                if let Some(&q) = class_index.get(r) {
                    columns[q].extend(p * taps..(p + 1) * taps);
                }
            }
            let (wm, bias) = conv_weights[ci].clone();
            let energy = st.output_energy(wm.as_ref(), &bias);
            let d = conv.in_channels() * taps;
            let (ho, wo) = conv.output_size(h, w);
            let samples = (2 * d).div_ceil((ho * wo).max(1)).clamp(1, 32);
            random.push(PatchStats::random(conv, h, w, samples, 0x7072_756e + ci as u64));
            consumers.push(Consumer {
                w: wm,
                bias,
                stats: Cow::Borrowed(st),
                columns,
                energy,
                conv: Some(ci),
            });
        }
        // L1: the summed filter norms of every member.
        let mut norms = vec![0.0f64; gr.channels];
        for (q, &r) in gr.classes.iter().enumerate() {
            for (ci, ch) in cg.members(r) {
                let wm = &conv_weights[ci].0;
                norms[q] += (0..wm.ncols()).map(|j| wm[(ch, j)].abs()).sum::<f64>();
            }
        }
        // Each order with the classes whose removal would empty a Split part, a Slice or an input last.
        let protect = |order: Vec<usize>| -> Vec<usize> {
            let roots: Vec<usize> = order.iter().map(|&q| gr.classes[q]).collect();
            cg.protect(&roots).into_iter().map(|i| order[i]).collect()
        };
        let mut orders = HashMap::new();
        orders.insert(Importance::L1, protect(select::l1_order(&norms)));
        if popts.importance == Importance::DataAware || opts.compare {
            let da = select::data_aware_order(&consumers, gr.channels, popts.batch, popts.damping)
                .map_err(|e| select_err(gr, e))?;
            orders.insert(Importance::DataAware, protect(da));
        }
        candidates.push(Candidate {
            index: gi,
            consumers,
            random,
            orders,
            rungs: rungs(gr.channels, m),
            memo: HashMap::new(),
        });
    }
    drop(conv_weights);
    let tmp = tempfile::tempdir().map_err(CompressError::Temp)?;
    let mut p = Pruner {
        cg,
        source,
        sizes,
        candidates,
        opts: popts,
    };
    let how = popts.importance;
    let (_, source_macs) = p.size_of(&p.source);
    report.source.conv_macs = source_macs;
    let nc = p.candidates.len();
    let fidelity =
        |p: &Pruner<'_>, kept: &[Option<usize>], how: Importance, file: &str, progress: &mut dyn FnMut(Event<'_>)| {
            let path = tmp.path().join(file);
            let mdl = p.build(kept, how, &path)?;
            progress(Event::Stage("checking the whole model on the held-out frames"));
            let ev = fidelity_of(rt, &opts.session, &truths, &labels, &mdl, &path)?;
            let (params, macs) = p.size_of(&mdl);
            Ok::<_, CompressError>((mdl, ev, params, macs))
        };

    // Per-group search at a bound.
    let search = |p: &mut Pruner<'_>, bound: f64, progress: &mut dyn FnMut(Event<'_>)| {
        let mut out = Vec::with_capacity(nc);
        for c in 0..nc {
            let name = p.group(c).convs.join(", ");
            progress(Event::Layer {
                index: c,
                total: nc,
                name: &name,
                what: "searching channel counts",
            });
            let rungs = p.candidates[c].rungs.clone();
            let (found, trials) = smallest_meeting(&rungs, bound, |k| p.error(c, how, k), |k| k)?;
            out.push((found.map(|i| rungs[i]), trials));
        }
        Ok::<_, CompressError>(out)
    };
    let mut bound = opts.max_layer_error;
    let mut chosen: Vec<(Option<usize>, Vec<crate::search::Trial<usize>>)>;
    let (mut model, mut ev, mut params, mut macs);
    if let Some(r) = popts.uniform_ratio {
        chosen = (0..nc)
            .map(|c| (Some(uniform_kept(p.group(c).channels, m, r)), Vec::new()))
            .collect();
        let kept: Vec<_> = chosen.iter().map(|c| c.0).collect();
        (model, ev, params, macs) = fidelity(&p, &kept, how, "try.onnx", progress)?;
        report.tries.push(Try {
            max_layer_error: f64::NAN,
            decomposed_layers: nc,
            params,
            map50: ev.map50,
            meets: ev.map50 >= opts.min_fidelity,
        });
    } else {
        chosen = search(&mut p, bound, progress)?;
        let kept: Vec<_> = chosen.iter().map(|c| c.0).collect();
        (model, ev, params, macs) = fidelity(&p, &kept, how, "try.onnx", progress)?;
        let meets = ev.map50 >= opts.min_fidelity;
        report.tries.push(Try {
            max_layer_error: bound,
            decomposed_layers: kept.iter().flatten().count(),
            params,
            map50: ev.map50,
            meets,
        });
        if !meets {
            let (mut lo, mut hi) = (0.0f64, bound);
            let mut best = None;
            for _ in 0..opts.tighten_steps {
                let mid = (lo + hi) / 2.0;
                let ch = search(&mut p, mid, progress)?;
                let kept: Vec<_> = ch.iter().map(|c| c.0).collect();
                let (m2, e2, p2, c2) = fidelity(&p, &kept, how, "try.onnx", progress)?;
                let ok = e2.map50 >= opts.min_fidelity;
                report.tries.push(Try {
                    max_layer_error: mid,
                    decomposed_layers: kept.iter().flatten().count(),
                    params: p2,
                    map50: e2.map50,
                    meets: ok,
                });
                if ok {
                    lo = mid;
                    if best
                        .as_ref()
                        .is_none_or(|b: &(f64, _, OnnxModel, Evaluation, usize, u64)| p2 < b.4)
                    {
                        best = Some((mid, ch, m2, e2, p2, c2));
                    }
                } else {
                    hi = mid;
                }
            }
            match best {
                Some((b, ch, m2, e2, p2, c2)) => {
                    (bound, chosen, model, ev, params, macs) = (b, ch, m2, e2, p2, c2);
                }
                None => {
                    report.nothing_to_do = Some(format!(
                        "no bound tried kept the whole model at mAP@0.5 ≥ {} (tightest tried: {hi:.4})",
                        opts.min_fidelity
                    ));
                    chosen = (0..nc).map(|_| (None, Vec::new())).collect();
                }
            }
        }
    }
    report.bound_used = bound;
    let kept: Vec<Option<usize>> = chosen.iter().map(|c| c.0).collect();

    // Comparisons.
    if opts.compare && kept.iter().any(Option::is_some) {
        progress(Event::Stage("comparing with L1 at the same channel counts"));
        let alt = match how {
            Importance::DataAware => Importance::L1,
            Importance::L1 => Importance::DataAware,
        };
        let mut variants = vec![(
            format!("{} channels, the chosen model", how.name()),
            ev.clone(),
            params,
            macs,
        )];
        let (_, e, pp, mm) = fidelity(&p, &kept, alt, "other-importance.onnx", progress)?;
        variants.push((format!("{} channels at the same counts", alt.name()), e, pp, mm));
        for (what, e, pp, mm) in variants {
            report.comparisons.push(Variant {
                what,
                params: pp,
                macs: mm,
                map50: e.map50,
                map50_95: e.map50_95,
            });
        }
        if popts.uniform_ratio.is_none() {
            // The largest uniform ratio with at least the per-group result's fidelity.
            progress(Event::Stage("searching one uniform ratio with the same fidelity"));
            let target = ev.map50;
            let (mut lo, mut hi) = (0.0f64, 0.95f64);
            let mut tries = Vec::new();
            let mut best: Option<Uniform> = None;
            for _ in 0..opts.tighten_steps.max(5) {
                let mid = (lo + hi) / 2.0;
                let uk: Vec<Option<usize>> = (0..nc)
                    .map(|c| Some(uniform_kept(p.group(c).channels, m, mid)))
                    .collect();
                let (_, e, pu, mu) = fidelity(&p, &uk, how, "uniform.onnx", progress)?;
                tries.push((mid, pu, e.map50));
                if e.map50 >= target {
                    lo = mid;
                    if best.as_ref().is_none_or(|b| pu < b.params) {
                        best = Some(Uniform {
                            ratio: mid,
                            params: pu,
                            conv_macs: mu,
                            map50: e.map50,
                            map50_95: e.map50_95,
                            tries: Vec::new(),
                        });
                    }
                } else {
                    hi = mid;
                }
            }
            let mut u = best.unwrap_or(Uniform {
                ratio: 0.0,
                params: report.source.params,
                conv_macs: source_macs,
                map50: 1.0,
                map50_95: 1.0,
                tries: Vec::new(),
            });
            u.tries = tries;
            report.comparisons.push(Variant {
                what: format!("one uniform ratio ({:.3}) at the same fidelity", u.ratio),
                params: u.params,
                macs: u.conv_macs,
                map50: u.map50,
                map50_95: u.map50_95,
            });
            report.uniform = Some(u);
        }
    }

    // Group reports.
    let mut cand_of: HashMap<usize, usize> = HashMap::new();
    for (c, cand) in p.candidates.iter().enumerate() {
        cand_of.insert(cand.index, c);
    }
    for (gi, gr) in p.cg.groups.clone().iter().enumerate() {
        let Some(&c) = cand_of.get(&gi) else {
            report.groups.push(GroupReport {
                group: gr.clone(),
                pruned: false,
                reason: reasons[gi].clone().unwrap_or_default(),
                kept: gr.channels,
                errors: None,
                search: Vec::new(),
            });
            continue;
        };
        let (k, trials) = &chosen[c];
        let errors = match k {
            Some(k) => Some(PruneErrors {
                data_aware: if p.candidates[c].orders.contains_key(&Importance::DataAware) {
                    p.error(c, Importance::DataAware, *k)?
                } else {
                    f64::NAN
                },
                l1: p.error(c, Importance::L1, *k)?,
                random: p.random_error(c, how, *k)?,
            }),
            None => None,
        };
        report.groups.push(GroupReport {
            group: gr.clone(),
            pruned: k.is_some(),
            reason: match (k, &report.nothing_to_do) {
                (Some(_), _) if popts.uniform_ratio.is_some() => "uniform ratio (--uniform-ratio)".into(),
                (Some(_), _) => "the fewest channels that meet the bound".into(),
                (None, Some(why)) => why.clone(),
                (None, None) => match trials.first() {
                    Some(t) => format!(
                        "no channel count meets the bound: keeping {} of {} the error is {:.4} > {bound:.4}",
                        t.ranks, gr.channels, t.error
                    ),
                    None => "no candidate channel counts".into(),
                },
            },
            kept: k.unwrap_or(gr.channels),
            errors,
            search: trials.iter().map(|t| (t.ranks, t.error, t.meets)).collect(),
        });
    }
    if kept.iter().all(Option::is_none) {
        report
            .nothing_to_do
            .get_or_insert_with(|| "no group met the bound: the model is unchanged".into());
        return Ok(Pruned {
            report,
            model: None,
            truths,
        });
    }
    model.path.clone_from(&job.out);
    report.output = Some(Summary {
        params,
        conv_macs: macs,
        sha256: String::new(),
        path: job.out.display().to_string(),
    });
    report.fidelity = Some(ev);
    Ok(Pruned {
        report,
        model: Some(model),
        truths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_counts_are_multiples_below_the_count() {
        assert_eq!(rungs(32, 8), vec![8, 16, 24]);
        assert_eq!(rungs(20, 8), vec![8, 16]);
        assert_eq!(uniform_kept(64, 8, 0.5), 32);
        assert_eq!(uniform_kept(64, 8, 0.0), 64);
        assert_eq!(uniform_kept(64, 8, 0.99), 8);
        assert_eq!(uniform_kept(255, 8, 0.1), 224);
    }
}

/// One stage of a (combined) run, against the original.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub params: usize,
    /// MACs of all convolutions.
    pub conv_macs: u64,
    pub map50: f64,
    pub map50_95: f64,
    /// Bare fps of the original and this stage, interleaved (None: not timed).
    pub fps: Option<crate::timing::FpsComparison>,
}

/// The report of `--method prune` and `--method prune,tucker`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PruneRun {
    pub kestrel_compress_report: u32,
    pub method: &'static str,
    pub prune: PruneReport,
    /// The Tucker stage, on the pruned model, fidelity still against the original.
    pub tucker: Option<crate::compress::Report>,
    /// Original, pruned, pruned + Tucker.
    pub stages: Vec<StageSummary>,
    pub output: Option<Summary>,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub nothing_to_do: Option<String>,
}

fn meta_of(r: &PruneReport) -> serde_json::Value {
    serde_json::json!({
        "importance": r.importance,
        "max_layer_error": r.bound_used,
        "uniform_ratio": r.uniform_ratio,
        "groups": r.groups.iter().filter(|g| g.pruned).map(|g| serde_json::json!({
            "convs": g.group.convs,
            "kept": g.kept,
            "of": g.group.channels,
            "error": g.errors.map(|e| match r.importance { Importance::DataAware => e.data_aware, Importance::L1 => e.l1 }),
        })).collect::<Vec<_>>(),
    })
}

/// `kestrel compress --method prune` (`tucker_bound` None) or `prune,tucker` (the Tucker stage's
/// `--max-layer-error`). The pruning stage keeps mAP@0.5 ≥ `prune_min_fidelity` (default: `min_fidelity`
/// alone, halfway between it and 1 before a Tucker stage); the Tucker stage keeps the whole ≥
/// `min_fidelity` against the original. Writes `job.out` when anything was done.
pub fn run(
    rt: &Runtime,
    job: &Job,
    opts: &Options,
    popts: &PruneOptions,
    tucker_bound: Option<f64>,
    prune_min_fidelity: Option<f64>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<PruneRun, CompressError> {
    let t0 = std::time::Instant::now();
    crate::model::check_output(&job.model, &job.out)?;
    let method = if tucker_bound.is_some() {
        "prune,tucker"
    } else {
        "prune"
    };
    // The pruning stage's own fidelity floor: by default, with a Tucker stage after it, half the budget.
    let floor = prune_min_fidelity.unwrap_or(if tucker_bound.is_some() {
        (1.0 + opts.min_fidelity) / 2.0
    } else {
        opts.min_fidelity
    });
    let pr = prune(
        rt,
        job,
        &Options {
            min_fidelity: floor,
            ..opts.clone()
        },
        popts,
        progress,
    )?;
    let tmp = tempfile::tempdir().map_err(CompressError::Temp)?;
    let source_sha = pr.report.source.sha256.clone();
    let fps = |path: &Path| -> Result<Option<crate::timing::FpsComparison>, CompressError> {
        if opts.fps_rounds == 0 {
            return Ok(None);
        }
        Ok(Some(crate::timing::compare_models(
            rt,
            &opts.session,
            &job.model,
            path,
            opts.fps_rounds,
            opts.fps_runs,
        )?))
    };
    let mut stages = vec![StageSummary {
        stage: "original".into(),
        params: pr.report.source.params,
        conv_macs: pr.report.source.conv_macs,
        map50: 1.0,
        map50_95: 1.0,
        fps: None,
    }];
    let mut run = PruneRun {
        kestrel_compress_report: 1,
        method,
        prune: pr.report,
        tucker: None,
        stages: Vec::new(),
        output: None,
        seconds: 0.0,
        peak_rss_mib: None,
        nothing_to_do: None,
    };
    let pruned_path = tmp.path().join("pruned.onnx");
    let mut meta = serde_json::json!({ "method": method, "source_sha256": source_sha });
    let mut final_model = None;
    if let Some(mut m) = pr.model {
        meta["prune"] = meta_of(&run.prune);
        m.set_metadata(crate::compress::METADATA_KEY, meta.to_string());
        crate::model::write_atomic(&pruned_path, &m.encode())?;
        progress(Event::Stage(
            "timing the pruned model against the original, interleaved",
        ));
        let f = run.prune.fidelity.as_ref();
        stages.push(StageSummary {
            stage: "pruned".into(),
            params: run.prune.output.as_ref().map_or(0, |o| o.params),
            conv_macs: run.prune.output.as_ref().map_or(0, |o| o.conv_macs),
            map50: f.map_or(f64::NAN, |f| f.map50),
            map50_95: f.map_or(f64::NAN, |f| f.map50_95),
            fps: fps(&pruned_path)?,
        });
        final_model = Some(m);
    }
    if let Some(bound) = tucker_bound {
        let input = if final_model.is_some() {
            pruned_path.clone()
        } else {
            job.model.clone()
        };
        let tjob = Job {
            model: input,
            out: tmp.path().join("tucker.onnx"),
            calibration: job.calibration.clone(),
            evaluation: job.evaluation.clone(),
            reference: Some(job.model.clone()),
        };
        let topts = Options {
            max_layer_error: bound,
            fps_rounds: 0,
            compare: false,
            ..opts.clone()
        };
        let tr = crate::compress::compress(rt, &tjob, &topts, progress)?;
        if tr.nothing_to_do.is_none() {
            let mut m = OnnxModel::load(&tjob.out)?;
            let tmeta: serde_json::Value = m
                .metadata(crate::compress::METADATA_KEY)
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            meta["tucker"] = tmeta;
            m.set_metadata(crate::compress::METADATA_KEY, meta.to_string());
            crate::model::write_atomic(&tjob.out, &m.encode())?;
            let before = stages.last().map_or((0, 0), |s| (s.params, s.conv_macs));
            let (pb, pa) = tr.output.as_ref().map_or((0, 0), |o| (tr.source.params, o.params));
            let saved_macs: u64 = tr.layers.iter().map(|l| l.macs_before - l.macs_after).sum();
            let f = tr.fidelity.as_ref();
            progress(Event::Stage("timing the final model against the original, interleaved"));
            stages.push(StageSummary {
                stage: if final_model.is_some() {
                    "pruned + tucker".into()
                } else {
                    "tucker".into()
                },
                params: before.0 + pa - pb,
                conv_macs: before.1 - saved_macs,
                map50: f.map_or(f64::NAN, |f| f.map50),
                map50_95: f.map_or(f64::NAN, |f| f.map50_95),
                fps: fps(&tjob.out)?,
            });
            final_model = Some(m);
        }
        run.tucker = Some(tr);
    }
    match final_model {
        Some(m) => {
            let bytes = m.encode();
            let last = stages.last();
            run.output = Some(Summary {
                params: last.map_or(0, |s| s.params),
                conv_macs: last.map_or(0, |s| s.conv_macs),
                sha256: crate::model::sha256_hex(&bytes),
                path: job.out.display().to_string(),
            });
            crate::model::write_atomic(&job.out, &bytes)?;
        }
        None => {
            run.nothing_to_do = Some(
                run.prune
                    .nothing_to_do
                    .clone()
                    .unwrap_or_else(|| "nothing was pruned or decomposed".into()),
            );
        }
    }
    run.stages = stages;
    run.seconds = t0.elapsed().as_secs_f64();
    run.peak_rss_mib = crate::compress::peak_rss_mib();
    Ok(run)
}
