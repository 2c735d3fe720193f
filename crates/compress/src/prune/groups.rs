//! Which output channels must be removed together, and where every tensor's channels come from.
//!
//! Every output channel of every convolution is a node. Walking the graph in order, each tensor gets its
//! channel map: for each of its channels, the node it carries. Element-wise activations, `MaxPool`,
//! `Resize` and the like pass the map on; `Concat` on channels concatenates maps; `Split` and `Slice` on
//! channels cut them. `Add` (and any element-wise op of two such tensors) ties its inputs' channels
//! together, position by position, in a union-find: a residual connection's convolutions must lose the same
//! channels (Torch-Pruning's dependency graph does the same on PyTorch modules). A *class* is a set of tied
//! nodes, removed as one; a *group* is the set of convolutions whose classes are tied.
//!
//! A class that reaches an operator the walk does not understand, a graph output, or the output of a
//! detection-head convolution cannot be removed, and neither can the rest of its group: the reason is kept
//! for the report and nothing is guessed.

use std::collections::{BTreeSet, HashMap, HashSet};

use thiserror::Error;

use crate::graph::{self, node_name, Conv};
use crate::model::{float_tensor, floats, int64_tensor, int64s, TensorError};
use crate::onnx::{attribute_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, NodeProto};

#[derive(Debug, Error)]
pub enum PruneGraphError {
    #[error("input `{input}` has a dynamic channel count ({dim}): channel pruning needs every channel count fixed")]
    DynamicChannels { input: String, dim: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("node `{node}`: {reason}")]
    Node { node: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Output channel `channel` of convolution `conv` (an index into [`ChannelGraph::convs`]).
    Conv { conv: usize, channel: usize },
    /// A channel of a graph input.
    Input,
}

/// A node whose attributes or constants name channel positions, rewritten when channels go.
#[derive(Clone, Debug)]
enum Rewrite {
    /// `Split` on channels: the input's map and the sizes of its parts.
    Split {
        node: usize,
        map: Vec<usize>,
        sizes: Vec<usize>,
    },
    /// `Slice` on channels: `start..end` of the input's map (step 1), at position `at` of its axes.
    Slice {
        node: usize,
        map: Vec<usize>,
        start: usize,
        end: usize,
        at: usize,
    },
    /// `BatchNormalization` (not folded): its four per-channel constants.
    BatchNorm { node: usize, map: Vec<usize> },
}

/// Convolutions that lose the same channels.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Group {
    /// The convolutions whose output channels are removed together, in graph order.
    pub convs: Vec<String>,
    /// Channels that can be removed (classes): each removes one output channel of every conv above.
    pub channels: usize,
    /// The convolutions whose input channels go with them.
    pub consumers: Vec<String>,
    /// The nodes that tie the convolutions together (`Add` of a residual connection and the like).
    pub joined_by: Vec<String>,
    /// Why this group is not pruned, when it is not.
    pub blocked: Option<String>,
    /// The classes (union-find roots), in the order of the first convolution's channels.
    #[serde(skip)]
    pub classes: Vec<usize>,
}

/// The channel structure of a graph.
#[derive(Clone, Debug)]
pub struct ChannelGraph {
    parent: Vec<usize>,
    origin: Vec<Origin>,
    blocked: Vec<Option<String>>,
    /// Channel map of every tensor that carries channels.
    maps: HashMap<String, Vec<usize>>,
    /// The convolutions with constant weights, in graph order.
    pub convs: Vec<Conv>,
    /// Per convolution: its output nodes.
    outputs: Vec<Vec<usize>>,
    rewrites: Vec<Rewrite>,
    joins: Vec<(String, usize, usize)>,
    /// The model's ONNX opset (where `Split` takes its sizes).
    opset: i64,
    /// Channel maps that must keep at least one channel: every part of a `Split`, every `Slice`, every
    /// convolution's input.
    segments: Vec<Vec<usize>>,
    pub groups: Vec<Group>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Mish",
    "Gelu",
    "Identity",
    "Dropout",
    "Neg",
    "Abs",
    "Exp",
    "Sqrt",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
];

const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"];

struct Walk<'a> {
    inits: HashMap<&'a str, &'a crate::onnx::TensorProto>,
    /// Outputs of `Constant` nodes: their element counts.
    constants: HashMap<&'a str, usize>,
    cg: ChannelGraph,
}

impl<'a> Walk<'a> {
    fn new_node(&mut self, origin: Origin) -> usize {
        let id = self.cg.parent.len();
        self.cg.parent.push(id);
        self.cg.origin.push(origin);
        self.cg.blocked.push(None);
        id
    }

    fn block(&mut self, map: &[usize], reason: &str) {
        for &n in map {
            if self.cg.blocked[n].is_none() {
                self.cg.blocked[n] = Some(reason.to_string());
            }
        }
    }

    /// Element count of a constant input, `None` if `name` is not a constant.
    fn constant_len(&self, name: &str) -> Option<usize> {
        if let Some(t) = self.inits.get(name) {
            return Some(t.dims.iter().product::<i64>().max(0) as usize);
        }
        self.constants.get(name).copied()
    }

    fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.inits.get(name).and_then(|t| int64s(t))
    }

    fn map(&self, name: &str) -> Option<Vec<usize>> {
        self.cg.maps.get(name).cloned()
    }

    fn unknown(&mut self, n: &NodeProto, why: &str) {
        let reason = format!("`{}` node `{}` {why}", n.op_type(), node_name(n));
        for i in &n.input {
            if let Some(m) = self.map(i) {
                self.block(&m, &reason);
            }
        }
    }

    fn node(&mut self, idx: usize, n: &'a NodeProto, conv_at: &HashMap<String, usize>, head: &HashSet<String>) {
        let op = n.op_type();
        let first = n.input.first().and_then(|i| self.map(i));
        let out0 = n.output.first().cloned().unwrap_or_default();
        if !n.domain().is_empty() && n.domain() != "ai.onnx" {
            self.unknown(
                n,
                "is of a custom domain: the propagation does not know how channels pass through it",
            );
            return;
        }
        match op {
            "Conv" => {
                let Some(&ci) = conv_at.get(out0.as_str()) else {
                    self.unknown(
                        n,
                        "is a grouped or depthwise convolution or has computed weights: pruning stops there",
                    );
                    return;
                };
                if let Some(m) = &first {
                    self.cg.segments.push(m.clone());
                }
                let k = self.cg.convs[ci].out_channels();
                let nodes: Vec<usize> = (0..k)
                    .map(|channel| self.new_node(Origin::Conv { conv: ci, channel }))
                    .collect();
                if head.contains(&self.cg.convs[ci].name) {
                    let reason = format!(
                        "`{}` is a detection-head output convolution: its channels are the output layout",
                        self.cg.convs[ci].name
                    );
                    self.block(&nodes, &reason);
                }
                self.cg.outputs[ci].clone_from(&nodes);
                self.cg.maps.insert(out0, nodes);
            }
            "Constant" => {
                let len = n
                    .attribute
                    .iter()
                    .find(|a| a.name() == "value")
                    .and_then(|a| a.t.as_ref())
                    .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
                    .unwrap_or(1);
                if let Some(o) = n.output.first() {
                    self.constants.insert(o.as_str(), len);
                }
            }
            _ if UNARY.contains(&op) => {
                if let Some(m) = first {
                    self.cg.maps.insert(out0, m);
                }
            }
            "Clip" => {
                let Some(m) = first else { return };
                if n.input
                    .iter()
                    .skip(1)
                    .filter(|i| !i.is_empty())
                    .all(|i| self.constant_len(i) == Some(1))
                {
                    self.cg.maps.insert(out0, m);
                } else {
                    self.unknown(n, "has bounds that are not scalar constants");
                }
            }
            "PRelu" => {
                let Some(m) = first else { return };
                if n.input.get(1).and_then(|s| self.constant_len(s)) == Some(1) {
                    self.cg.maps.insert(out0, m);
                } else {
                    self.unknown(n, "has a per-channel slope: the propagation does not slice it");
                }
            }
            "BatchNormalization" => {
                let Some(m) = first else { return };
                let per_channel = n
                    .input
                    .iter()
                    .skip(1)
                    .take(4)
                    .all(|i| self.constant_len(i) == Some(m.len()));
                if n.input.len() == 5 && per_channel && n.output.len() == 1 {
                    self.cg.rewrites.push(Rewrite::BatchNorm {
                        node: idx,
                        map: m.clone(),
                    });
                    self.cg.maps.insert(out0, m);
                } else {
                    self.unknown(
                        n,
                        "has parameters that are not per-channel constants (or is in training mode)",
                    );
                }
            }
            "Resize" | "Upsample" => {
                let Some(m) = first else { return };
                let scales_at = if op == "Upsample" { 1 } else { 2 };
                let sizes = n.input.get(3).is_some_and(|s| !s.is_empty());
                let scales = n.input.get(scales_at).and_then(|s| self.inits.get(s.as_str()));
                let channel_scale = scales.and_then(|t| floats(t).ok()).and_then(|v| v.get(1).copied());
                if !sizes && channel_scale == Some(1.0) {
                    self.cg.maps.insert(out0, m);
                } else {
                    self.unknown(
                        n,
                        "resizes by output sizes or by scales that are not constants with 1 on channels",
                    );
                }
            }
            _ if BINARY.contains(&op) => {
                let (a, b) = (n.input.first(), n.input.get(1));
                let (ma, mb) = (a.and_then(|s| self.map(s)), b.and_then(|s| self.map(s)));
                match (ma, mb) {
                    (Some(x), Some(y)) if x.len() == y.len() => {
                        for (&p, &q) in x.iter().zip(&y) {
                            let (rp, rq) = (find(&mut self.cg.parent, p), find(&mut self.cg.parent, q));
                            if rp != rq {
                                self.cg.parent[rq] = rp;
                                self.cg.joins.push((node_name(n), p, q));
                            }
                        }
                        self.cg.maps.insert(out0, x);
                    }
                    (Some(x), None) | (None, Some(x)) => {
                        let other = if self.map(a.map_or("", String::as_str)).is_some() {
                            b
                        } else {
                            a
                        };
                        if other.and_then(|s| self.constant_len(s)) == Some(1) {
                            self.cg.maps.insert(out0, x);
                        } else {
                            self.unknown(
                                n,
                                "combines channels with a tensor that is not a scalar constant (a per-channel or \
                                 computed operand): the propagation does not slice it",
                            );
                        }
                    }
                    (Some(_), Some(_)) => {
                        self.unknown(
                            n,
                            "combines tensors of different channel counts (broadcast on channels)",
                        );
                    }
                    (None, None) => {}
                }
            }
            "Concat" => {
                let maps: Vec<Option<Vec<usize>>> = n.input.iter().map(|i| self.map(i)).collect();
                if maps.iter().all(Option::is_none) {
                    return;
                }
                let axis = graph::int(n, "axis").unwrap_or(0);
                if axis != 1 && axis != -3 {
                    self.unknown(
                        n,
                        &format!("joins on axis {axis}, not on channels: no pruning through it"),
                    );
                    return;
                }
                if maps.iter().any(Option::is_none) {
                    self.unknown(
                        n,
                        "joins channels with a tensor whose channels come from no convolution",
                    );
                    return;
                }
                self.cg
                    .maps
                    .insert(out0, maps.into_iter().flatten().flatten().collect());
            }
            "Split" => {
                let Some(m) = first else { return };
                let axis = graph::int(n, "axis").unwrap_or(0);
                if axis != 1 && axis != -3 {
                    for o in &n.output {
                        self.cg.maps.insert(o.clone(), m.clone());
                    }
                    return;
                }
                let sizes: Option<Vec<i64>> = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(s) => self.const_ints(s),
                    None => match graph::ints(n, "split") {
                        Some(v) if !v.is_empty() => Some(v),
                        _ => {
                            let parts = n.output.len().max(1);
                            (m.len() % parts == 0).then(|| vec![(m.len() / parts) as i64; parts])
                        }
                    },
                };
                let sizes: Option<Vec<usize>> =
                    sizes.and_then(|v| v.iter().map(|&x| usize::try_from(x).ok()).collect());
                match sizes {
                    Some(s) if s.len() == n.output.len() && s.iter().sum::<usize>() == m.len() => {
                        let mut at = 0;
                        for (o, &len) in n.output.iter().zip(&s) {
                            self.cg.segments.push(m[at..at + len].to_vec());
                            self.cg.maps.insert(o.clone(), m[at..at + len].to_vec());
                            at += len;
                        }
                        self.cg.rewrites.push(Rewrite::Split {
                            node: idx,
                            map: m,
                            sizes: s,
                        });
                    }
                    _ => self.unknown(n, "splits channels by sizes that are not constants"),
                }
            }
            "Slice" => {
                let Some(m) = first else { return };
                let get = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).map(|s| self.const_ints(s));
                let (starts, ends) = (get(1).flatten(), get(2).flatten());
                let axes = match get(3) {
                    None => starts.as_ref().map(|s| (0..s.len() as i64).collect()),
                    Some(a) => a,
                };
                let steps = match get(4) {
                    None => starts.as_ref().map(|s| vec![1; s.len()]),
                    Some(s) => s,
                };
                let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes, steps) else {
                    self.unknown(n, "slices by bounds that are not constants");
                    return;
                };
                let Some(at) = axes.iter().position(|&a| a == 1 || a == -3) else {
                    self.cg.maps.insert(out0, m);
                    return;
                };
                let c = m.len() as i64;
                let clamp = |v: i64| if v < 0 { (v + c).clamp(0, c) } else { v.min(c) } as usize;
                let (start, end) = (clamp(starts[at]), clamp(ends[at]));
                if steps.get(at) != Some(&1) || start > end {
                    self.unknown(n, "slices channels with a step other than 1");
                    return;
                }
                self.cg.segments.push(m[start..end].to_vec());
                self.cg.maps.insert(out0, m[start..end].to_vec());
                self.cg.rewrites.push(Rewrite::Slice {
                    node: idx,
                    map: m,
                    start,
                    end,
                    at,
                });
            }
            _ => self.unknown(n, "is not understood by the propagation: pruning stops there"),
        }
    }
}

impl ChannelGraph {
    /// The channel structure of `g`. `head` names the detection-head output convolutions.
    pub fn analyse(g: &GraphProto, opset: i64, head: &HashSet<String>) -> Result<Self, PruneGraphError> {
        let convs: Vec<Conv> = graph::convolutions(g).into_iter().filter_map(Result::ok).collect();
        let conv_at: HashMap<String, usize> = convs.iter().enumerate().map(|(i, c)| (c.output.clone(), i)).collect();
        let inits = graph::initializers(g);
        let n_convs = convs.len();
        let mut w = Walk {
            inits,
            constants: HashMap::new(),
            cg: ChannelGraph {
                parent: Vec::new(),
                origin: Vec::new(),
                blocked: Vec::new(),
                maps: HashMap::new(),
                convs,
                outputs: vec![Vec::new(); n_convs],
                rewrites: Vec::new(),
                joins: Vec::new(),
                opset,
                segments: Vec::new(),
                groups: Vec::new(),
            },
        };
        let inputs: Vec<_> = g.input.iter().filter(|i| !w.inits.contains_key(i.name())).collect();
        for input in inputs {
            let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                continue;
            };
            let Some(shape) = &t.shape else { continue };
            if shape.dim.len() != 4 {
                continue;
            }
            let c = match shape.dim[1].value.as_ref() {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => *v as usize,
                Some(tensor_shape_proto::dimension::Value::DimParam(p)) => {
                    return Err(PruneGraphError::DynamicChannels {
                        input: input.name().to_string(),
                        dim: format!("`{p}`"),
                    })
                }
                _ => {
                    return Err(PruneGraphError::DynamicChannels {
                        input: input.name().to_string(),
                        dim: "unknown".into(),
                    })
                }
            };
            let nodes: Vec<usize> = (0..c).map(|_| w.new_node(Origin::Input)).collect();
            w.block(&nodes, &format!("the channels of the model input `{}`", input.name()));
            w.cg.maps.insert(input.name().to_string(), nodes);
        }
        for (idx, n) in g.node.iter().enumerate() {
            w.node(idx, n, &conv_at, head);
        }
        for o in &g.output {
            if let Some(m) = w.map(o.name()) {
                w.block(&m, &format!("reaches the graph output `{}`", o.name()));
            }
        }
        let mut cg = w.cg;
        cg.build_groups();
        Ok(cg)
    }

    fn root(&self, mut x: usize) -> usize {
        while self.parent[x] != x {
            x = self.parent[x];
        }
        x
    }

    fn build_groups(&mut self) {
        // Convolutions sharing a class are in one group (union-find over convolutions).
        let n = self.convs.len();
        let mut cp: Vec<usize> = (0..n).collect();
        let mut owner: HashMap<usize, usize> = HashMap::new();
        for (ci, nodes) in self.outputs.iter().enumerate() {
            for &node in nodes {
                let r = self.root(node);
                match owner.get(&r) {
                    Some(&other) => {
                        let (a, b) = (find(&mut cp, other), find(&mut cp, ci));
                        if a != b {
                            cp[b.max(a)] = a.min(b);
                        }
                    }
                    None => {
                        owner.insert(r, ci);
                    }
                }
            }
        }
        // Roots blocked: any of their nodes blocked; a graph input tied in.
        let mut reason_of: HashMap<usize, String> = HashMap::new();
        for node in 0..self.parent.len() {
            if let Some(r) = &self.blocked[node] {
                reason_of.entry(self.root(node)).or_insert_with(|| r.clone());
            }
        }
        let mut by_group: Vec<(usize, Vec<usize>)> = Vec::new();
        for ci in 0..n {
            let gi = find(&mut cp, ci);
            match by_group.iter_mut().find(|(g, _)| *g == gi) {
                Some((_, v)) => v.push(ci),
                None => by_group.push((gi, vec![ci])),
            }
        }
        let mut consumers: HashMap<usize, BTreeSet<usize>> = HashMap::new();
        for (ci, c) in self.convs.iter().enumerate() {
            if let Some(m) = self.maps.get(&c.input) {
                for &node in m {
                    consumers.entry(self.root(node)).or_default().insert(ci);
                }
            }
        }
        let mut groups = Vec::new();
        for (_, members) in by_group {
            let mut classes = Vec::new();
            let mut seen = HashSet::new();
            for &ci in &members {
                for &node in &self.outputs[ci] {
                    let r = self.root(node);
                    if seen.insert(r) {
                        classes.push(r);
                    }
                }
            }
            if classes.is_empty() {
                continue;
            }
            let blocked = classes.iter().find_map(|r| reason_of.get(r).cloned());
            let cons: BTreeSet<usize> = classes
                .iter()
                .flat_map(|r| consumers.get(r).into_iter().flatten().copied())
                .collect();
            let gid = find(&mut cp, members[0]);
            let mut joined_by: Vec<String> = Vec::new();
            for (name, p, _) in &self.joins {
                if let Origin::Conv { conv, .. } = self.origin[*p] {
                    if find(&mut cp, conv) == gid && !joined_by.contains(name) {
                        joined_by.push(name.clone());
                    }
                }
            }
            groups.push(Group {
                convs: members.iter().map(|&ci| self.convs[ci].name.clone()).collect(),
                channels: classes.len(),
                consumers: cons.iter().map(|&ci| self.convs[ci].name.clone()).collect(),
                joined_by,
                blocked,
                classes,
            });
        }
        self.groups = groups;
    }

    /// The root (class) of every input channel of convolution `ci`, `None` when its input carries no map.
    pub fn input_classes(&self, ci: usize) -> Option<Vec<usize>> {
        self.maps
            .get(&self.convs[ci].input)
            .map(|m| m.iter().map(|&n| self.root(n)).collect())
    }

    /// The root of every output channel of convolution `ci`.
    pub fn output_classes(&self, ci: usize) -> Vec<usize> {
        self.outputs[ci].iter().map(|&n| self.root(n)).collect()
    }

    /// Members of class `root`: (convolution, output channel).
    pub fn members(&self, root: usize) -> Vec<(usize, usize)> {
        (0..self.parent.len())
            .filter(|&n| self.root(n) == root)
            .filter_map(|n| match self.origin[n] {
                Origin::Conv { conv, channel } => Some((conv, channel)),
                Origin::Input => None,
            })
            .collect()
    }

    /// `order` (classes by root, cheapest first) with every class whose removal would leave a `Split` part,
    /// a `Slice` or a convolution's input without channels moved to the end: taking any prefix of the
    /// result never empties one (while enough classes are kept).
    pub fn protect(&self, order: &[usize]) -> Vec<usize> {
        let mut remaining: Vec<usize> = self.segments.iter().map(Vec::len).collect();
        let mut of_root: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for (si, seg) in self.segments.iter().enumerate() {
            let mut count: HashMap<usize, usize> = HashMap::new();
            for &n in seg {
                *count.entry(self.root(n)).or_default() += 1;
            }
            for (r, c) in count {
                of_root.entry(r).or_default().push((si, c));
            }
        }
        let (mut out, mut deferred) = (Vec::new(), Vec::new());
        for (i, r) in order.iter().enumerate() {
            let segs = of_root.get(r).map(Vec::as_slice).unwrap_or_default();
            if segs.iter().all(|&(si, c)| remaining[si] > c) {
                for &(si, c) in segs {
                    remaining[si] -= c;
                }
                out.push(i);
            } else {
                deferred.push(i);
            }
        }
        out.extend(deferred);
        out
    }

    /// Index of the convolution named `name`.
    pub fn conv_index(&self, name: &str) -> Option<usize> {
        self.convs.iter().position(|c| c.name == name)
    }

    /// `g` without the channels of the classes in `removed`. `refits` gives, per convolution, new weights
    /// for its kept input channels (K × C′ × kh × kw, all K rows) and a new bias (K); the others keep
    /// their weights' kept columns.
    pub fn prune(
        &self,
        g: &GraphProto,
        removed: &HashSet<usize>,
        refits: &HashMap<usize, (Vec<f32>, Vec<f32>)>,
    ) -> Result<GraphProto, PruneGraphError> {
        let mut out = g.clone();
        let kept = |map: &[usize]| -> Vec<bool> { map.iter().map(|&n| !removed.contains(&self.root(n))).collect() };
        let inits = graph::initializers(g);
        let mut new_inits = Vec::new();
        for (ci, conv) in self.convs.iter().enumerate() {
            let rows: Vec<bool> = self.output_classes(ci).iter().map(|r| !removed.contains(r)).collect();
            let cols: Vec<bool> = match self.maps.get(&conv.input) {
                Some(m) => kept(m),
                None => vec![true; conv.in_channels()],
            };
            let refit = refits.get(&ci);
            if rows.iter().all(|&k| k) && cols.iter().all(|&k| k) && refit.is_none() {
                continue;
            }
            let [k, c, kh, kw] = conv.kernel;
            let taps = kh * kw;
            let c2 = cols.iter().filter(|&&x| x).count();
            let k2 = rows.iter().filter(|&&x| x).count();
            if k2 == 0 || c2 == 0 {
                return Err(PruneGraphError::Node {
                    node: conv.name.clone(),
                    reason: "pruning would remove every channel".into(),
                });
            }
            let missing = || PruneGraphError::Node {
                node: conv.name.clone(),
                reason: "its weight initializer is missing".into(),
            };
            let (wk, bias): (Vec<f32>, Option<Vec<f32>>) = match refit {
                Some((w, b)) => (w.clone(), Some(b.clone())),
                None => {
                    let w = floats(inits.get(conv.weight.as_str()).ok_or_else(missing)?)?;
                    let mut sub = Vec::with_capacity(k * c2 * taps);
                    for o in 0..k {
                        for (ch, _) in cols.iter().enumerate().filter(|(_, &x)| x) {
                            let at = (o * c + ch) * taps;
                            sub.extend_from_slice(&w[at..at + taps]);
                        }
                    }
                    let b = match &conv.bias {
                        Some(b) => Some(floats(inits.get(b.as_str()).ok_or_else(missing)?)?),
                        None => None,
                    };
                    (sub, b)
                }
            };
            if wk.len() != k * c2 * taps {
                return Err(PruneGraphError::Node {
                    node: conv.name.clone(),
                    reason: format!("refitted weights have {} values, not {}", wk.len(), k * c2 * taps),
                });
            }
            let mut w2 = Vec::with_capacity(k2 * c2 * taps);
            for (o, _) in rows.iter().enumerate().filter(|(_, &x)| x) {
                w2.extend_from_slice(&wk[o * c2 * taps..(o + 1) * c2 * taps]);
            }
            let wname = graph::unique(&out, &format!("{}.pruned", conv.weight));
            new_inits.push(float_tensor(&wname, &[k2, c2, kh, kw], &w2));
            let bname = match bias {
                Some(b) => {
                    let b2: Vec<f32> = b.iter().zip(&rows).filter(|(_, &x)| x).map(|(&v, _)| v).collect();
                    let name = graph::unique(
                        &out,
                        &format!("{}.pruned", conv.bias.as_deref().unwrap_or(&conv.weight)),
                    );
                    new_inits.push(float_tensor(&name, &[k2], &b2));
                    Some(name)
                }
                None => None,
            };
            let node = out
                .node
                .iter_mut()
                .find(|n| n.op_type() == "Conv" && n.output.first() == Some(&conv.output))
                .ok_or_else(|| PruneGraphError::Node {
                    node: conv.name.clone(),
                    reason: "not found in the graph".into(),
                })?;
            node.input[1] = wname;
            if let Some(b) = bname {
                if node.input.len() > 2 {
                    node.input[2] = b;
                } else {
                    node.input.push(b);
                }
            }
            // Names must stay unique as further initializers are added.
            out.initializer.append(&mut new_inits);
        }
        for rw in &self.rewrites {
            match rw {
                Rewrite::Split { node, map, sizes } => {
                    let keep = kept(map);
                    let mut at = 0;
                    let new: Vec<i64> = sizes
                        .iter()
                        .map(|&len| {
                            let k = keep[at..at + len].iter().filter(|&&x| x).count();
                            at += len;
                            k as i64
                        })
                        .collect();
                    if new.contains(&0) {
                        return Err(PruneGraphError::Node {
                            node: node_name(&g.node[*node]),
                            reason: "pruning would empty a part of this Split".into(),
                        });
                    }
                    let src = &g.node[*node];
                    let by_input = src.input.get(1).is_some_and(|s| !s.is_empty())
                        || (graph::attr(src, "split").is_none() && self.opset >= 13);
                    if by_input {
                        let name = graph::unique(&out, &format!("{}.split", node_name(src)));
                        out.initializer.push(int64_tensor(&name, &new));
                        let n = &mut out.node[*node];
                        if n.input.len() > 1 {
                            n.input[1] = name;
                        } else {
                            n.input.push(name);
                        }
                    } else {
                        let n = &mut out.node[*node];
                        n.attribute.retain(|a| a.name() != "split");
                        n.attribute.push(AttributeProto {
                            name: Some("split".into()),
                            r#type: Some(attribute_proto::AttributeType::Ints as i32),
                            ints: new,
                            ..Default::default()
                        });
                    }
                }
                Rewrite::Slice {
                    node,
                    map,
                    start,
                    end,
                    at,
                } => {
                    let keep = kept(map);
                    let s = keep[..*start].iter().filter(|&&x| x).count() as i64;
                    let e = keep[..*end].iter().filter(|&&x| x).count() as i64;
                    let src = &g.node[*node];
                    let names = [src.input[1].clone(), src.input[2].clone()];
                    for (pos, (orig, v)) in names.iter().zip([s, e]).enumerate() {
                        let mut vals = inits.get(orig.as_str()).and_then(|t| int64s(t)).unwrap_or_default();
                        if let Some(x) = vals.get_mut(*at) {
                            *x = v;
                        }
                        let name = graph::unique(&out, &format!("{}.{}", node_name(src), ["starts", "ends"][pos]));
                        out.initializer.push(int64_tensor(&name, &vals));
                        out.node[*node].input[pos + 1] = name;
                    }
                }
                Rewrite::BatchNorm { node, map } => {
                    let keep = kept(map);
                    for pos in 1..5 {
                        let orig = g.node[*node].input[pos].clone();
                        let t = inits.get(orig.as_str()).ok_or_else(|| PruneGraphError::Node {
                            node: node_name(&g.node[*node]),
                            reason: format!("its constant `{orig}` is missing"),
                        })?;
                        let v: Vec<f32> = floats(t)?
                            .into_iter()
                            .zip(&keep)
                            .filter(|(_, &k)| k)
                            .map(|(x, _)| x)
                            .collect();
                        let name = graph::unique(&out, &format!("{orig}.pruned"));
                        out.initializer.push(float_tensor(&name, &[v.len()], &v));
                        out.node[*node].input[pos] = name;
                    }
                }
            }
        }
        // Intermediate shapes recorded in the file would now be wrong: let the runtime infer them.
        out.value_info.retain(|v| !self.maps.contains_key(v.name()));
        graph::remove_unused_initializers(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::float_tensor;
    use crate::onnx::{tensor_shape_proto, TensorShapeProto, TypeProto, ValueInfoProto};

    fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        }
    }

    fn axis(v: i64) -> AttributeProto {
        AttributeProto {
            name: Some("axis".into()),
            r#type: Some(attribute_proto::AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        }
    }

    fn input(c: Option<i64>) -> ValueInfoProto {
        let dim = |v: Option<i64>| tensor_shape_proto::Dimension {
            value: Some(match v {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(v),
                None => tensor_shape_proto::dimension::Value::DimParam("C".into()),
            }),
            ..Default::default()
        };
        ValueInfoProto {
            name: Some("x".into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(Some(1)), dim(c), dim(Some(8)), dim(Some(8))],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// x → a (4) → relu; b (4) from relu; Add(relu, b) → c; Concat(c, a-relu) on `cat_axis` → d; d → out.
    fn graph(cat_axis: i64, channels: Option<i64>) -> GraphProto {
        let mut g = GraphProto {
            input: vec![input(channels)],
            ..Default::default()
        };
        for (name, k, c) in [
            ("a", 4, 3),
            ("b", 4, 4),
            ("c", 4, 4),
            ("d", 2, if cat_axis == 1 { 8 } else { 4 }),
        ] {
            g.initializer
                .push(float_tensor(&format!("{name}.w"), &[k, c, 1, 1], &vec![0.5; k * c]));
        }
        g.node = vec![
            node("Conv", "a", &["x", "a.w"], &["a"], vec![]),
            node("Relu", "ra", &["a"], &["ra"], vec![]),
            node("Conv", "b", &["ra", "b.w"], &["b"], vec![]),
            node("Add", "res", &["ra", "b"], &["s"], vec![]),
            node("Conv", "c", &["s", "c.w"], &["c"], vec![]),
            node("Concat", "cat", &["c", "ra"], &["cat"], vec![axis(cat_axis)]),
            node("Conv", "d", &["cat", "d.w"], &["d"], vec![]),
        ];
        g.output = vec![ValueInfoProto {
            name: Some("d".into()),
            ..Default::default()
        }];
        g
    }

    #[test]
    fn a_residual_add_ties_two_convolutions_and_the_output_is_blocked() {
        let cg = ChannelGraph::analyse(&graph(1, Some(3)), 13, &HashSet::new()).unwrap();
        let by: HashMap<Vec<String>, &Group> = cg.groups.iter().map(|g| (g.convs.clone(), g)).collect();
        let ab = by[&vec!["a".to_string(), "b".to_string()]];
        assert_eq!((ab.channels, ab.joined_by.clone()), (4, vec!["res".to_string()]));
        assert_eq!(ab.consumers, vec!["b", "c", "d"]);
        assert!(ab.blocked.is_none());
        assert!(by[&vec!["d".to_string()]]
            .blocked
            .as_deref()
            .unwrap()
            .contains("graph output"));
        // Removing one tied class takes a channel from a, b and c's input, and two from d's (via the Concat).
        let removed: HashSet<usize> = [ab.classes[0]].into_iter().collect();
        let g2 = cg.prune(&graph(1, Some(3)), &removed, &HashMap::new()).unwrap();
        let dims: HashMap<&str, Vec<i64>> = g2
            .node
            .iter()
            .filter(|n| n.op_type() == "Conv")
            .map(|n| {
                let w = g2.initializer.iter().find(|t| t.name() == n.input[1]).unwrap();
                (n.name(), w.dims.clone())
            })
            .collect();
        assert_eq!(dims["a"], vec![3, 3, 1, 1]);
        assert_eq!(dims["b"], vec![3, 3, 1, 1]);
        assert_eq!(dims["c"], vec![4, 3, 1, 1]);
        assert_eq!(dims["d"], vec![2, 7, 1, 1]);
    }

    #[test]
    fn concat_on_another_axis_blocks_with_the_reason() {
        let cg = ChannelGraph::analyse(&graph(2, Some(3)), 13, &HashSet::new()).unwrap();
        let ab = cg.groups.iter().find(|g| g.convs[0] == "a").unwrap();
        assert!(ab.blocked.as_deref().unwrap().contains("axis 2"), "{:?}", ab.blocked);
    }

    #[test]
    fn a_dynamic_channel_count_is_refused() {
        let e = ChannelGraph::analyse(&graph(1, None), 13, &HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("dynamic channel count"), "{e}");
    }

    #[test]
    fn protect_never_empties_a_segment() {
        let cg = ChannelGraph::analyse(&graph(1, Some(3)), 13, &HashSet::new()).unwrap();
        let ab = cg.groups.iter().find(|g| g.convs[0] == "a").unwrap();
        let order = cg.protect(&ab.classes);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
    }
}
