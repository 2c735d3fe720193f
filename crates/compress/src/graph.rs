//! Graph surgery on ONNX: find the convolutions that can be decomposed (and say why the others can't), fold
//! `BatchNormalization` into the convolution before it, replace a convolution by a chain of convolutions,
//! expose intermediate tensors as outputs, and build one-layer models for timing.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use crate::model::{float_tensor, floats, TensorError, FLOAT};
use crate::onnx::{
    attribute_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

#[derive(Debug, Error)]
pub enum GraphError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("node `{node}`: {reason}")]
    Node { node: String, reason: String },
}

/// A 2-D convolution whose weights are constants: what can be decomposed.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// The node's name (or its output's name when the node has none).
    pub name: String,
    pub input: String,
    pub output: String,
    pub weight: String,
    pub bias: Option<String>,
    /// K (output channels), C (input channels), kh, kw.
    pub kernel: [usize; 4],
    pub strides: [usize; 2],
    /// Top, left, bottom, right (explicit; `auto_pad` is resolved once the input size is known).
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    /// `NOTSET`, `VALID`, `SAME_UPPER` or `SAME_LOWER`.
    pub auto_pad: String,
}

impl Conv {
    pub fn out_channels(&self) -> usize {
        self.kernel[0]
    }
    pub fn in_channels(&self) -> usize {
        self.kernel[1]
    }
    /// kh · kw.
    pub fn taps(&self) -> usize {
        self.kernel[2] * self.kernel[3]
    }
    /// Weight parameters (without the bias).
    pub fn weight_params(&self) -> usize {
        self.kernel.iter().product()
    }

    /// The explicit pads for an input of `h`×`w` (resolving `auto_pad` as ONNX defines it).
    pub fn pads_for(&self, h: usize, w: usize) -> [usize; 4] {
        let same = |size: usize, k: usize, s: usize, d: usize| {
            let out = size.div_ceil(s);
            let need = ((out - 1) * s + (k - 1) * d + 1).saturating_sub(size);
            (need / 2, need - need / 2)
        };
        match self.auto_pad.as_str() {
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let (h0, h1) = same(h, self.kernel[2], self.strides[0], self.dilations[0]);
                let (w0, w1) = same(w, self.kernel[3], self.strides[1], self.dilations[1]);
                if self.auto_pad == "SAME_UPPER" {
                    [h0, w0, h1, w1]
                } else {
                    [h1, w1, h0, w0]
                }
            }
            _ => self.pads,
        }
    }

    /// Output height and width for an input of `h`×`w`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let p = self.pads_for(h, w);
        let o = |size: usize, p0: usize, p1: usize, k: usize, s: usize, d: usize| {
            (size + p0 + p1).saturating_sub((k - 1) * d + 1) / s + 1
        };
        (
            o(h, p[0], p[2], self.kernel[2], self.strides[0], self.dilations[0]),
            o(w, p[1], p[3], self.kernel[3], self.strides[1], self.dilations[1]),
        )
    }
}

/// A convolution left as it is, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Unsupported {
    pub name: String,
    pub reason: String,
}

pub(crate) fn node_name(n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => n.output.first().cloned().unwrap_or_default(),
    }
}

pub(crate) fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

pub(crate) fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

pub(crate) fn int(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name).and_then(|a| a.i)
}

fn to_usize(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).ok()).collect()
}

/// Initializers by name.
pub fn initializers(g: &GraphProto) -> HashMap<&str, &TensorProto> {
    g.initializer.iter().map(|t| (t.name(), t)).collect()
}

/// Every `Conv` of the graph: the decomposable ones, and the others with the reason.
pub fn convolutions(g: &GraphProto) -> Vec<Result<Conv, Unsupported>> {
    let inits = initializers(g);
    g.node
        .iter()
        .filter(|n| n.op_type() == "Conv" && n.domain().is_empty())
        .map(|n| conv_of(n, &inits))
        .collect()
}

fn conv_of(n: &NodeProto, inits: &HashMap<&str, &TensorProto>) -> Result<Conv, Unsupported> {
    let name = node_name(n);
    let no = |reason: String| Unsupported {
        name: name.clone(),
        reason,
    };
    let (Some(input), Some(weight), Some(output)) = (n.input.first(), n.input.get(1), n.output.first()) else {
        return Err(no("a Conv without input, weight or output".into()));
    };
    let Some(w) = inits.get(weight.as_str()) else {
        return Err(no(format!(
            "its weight `{weight}` is not a constant (an initializer): computed at run time"
        )));
    };
    if w.data_type() != FLOAT {
        return Err(no(format!("its weight `{weight}` is not float32")));
    }
    let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
        None => None,
        Some(b) if inits.contains_key(b.as_str()) => Some(b.clone()),
        Some(b) => return Err(no(format!("its bias `{b}` is not a constant"))),
    };
    let Some(kernel) = to_usize(&w.dims).filter(|d| d.len() == 4) else {
        return Err(no(format!("not a 2-D convolution (weight shape {:?})", w.dims)));
    };
    let group = int(n, "group").unwrap_or(1);
    if group != 1 {
        let kind = if usize::try_from(group).ok() == Some(kernel[0]) && kernel[1] == 1 {
            "depthwise"
        } else {
            "grouped"
        };
        return Err(no(format!(
            "{kind} convolution (group {group}): Tucker-2 of the channel modes does not apply"
        )));
    }
    let two = |key: &str| -> Result<[usize; 2], Unsupported> {
        match ints(n, key).as_deref().map(to_usize) {
            None => Ok([1, 1]),
            Some(Some(v)) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok([v[0], v[1]]),
            Some(_) => Err(no(format!("unsupported {key}"))),
        }
    };
    let strides = two("strides")?;
    let dilations = two("dilations")?;
    let pads = match ints(n, "pads").as_deref().map(to_usize) {
        None => [0; 4],
        // ONNX order: begins then ends (top, left, bottom, right).
        Some(Some(v)) if v.len() == 4 => [v[0], v[1], v[2], v[3]],
        Some(_) => return Err(no("unsupported pads".into())),
    };
    let auto_pad = attr(n, "auto_pad")
        .and_then(|a| a.s.as_deref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| "NOTSET".into());
    Ok(Conv {
        name,
        input: input.clone(),
        output: output.clone(),
        weight: weight.clone(),
        bias,
        kernel: [kernel[0], kernel[1], kernel[2], kernel[3]],
        strides,
        pads,
        dilations,
        auto_pad,
    })
}

/// The convolutions of the detection head's outputs: those whose output reaches a graph output without
/// passing through another convolution (their channels are the output layout, their values the detections'
/// logits). By their names.
pub fn head_convolutions(g: &GraphProto) -> HashSet<String> {
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let mut head = HashSet::new();
    for n in g.node.iter().filter(|n| n.op_type() == "Conv") {
        let mut frontier: Vec<&str> = n.output.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut reaches = false;
        while let Some(t) = frontier.pop() {
            if !seen.insert(t) {
                continue;
            }
            if outputs.contains(t) {
                reaches = true;
                break;
            }
            for m in g
                .node
                .iter()
                .filter(|m| m.op_type() != "Conv" && m.input.iter().any(|i| i == t))
            {
                frontier.extend(m.output.iter().map(String::as_str));
            }
        }
        if reaches {
            head.insert(node_name(n));
        }
    }
    head
}

/// A `BatchNormalization` folded into the convolution before it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Folded {
    pub conv: String,
    pub batch_norm: String,
}

/// Fold every `BatchNormalization` (inference mode) that directly follows a `Conv` with constant weights,
/// where the convolution's output feeds nothing else: W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β.
pub fn fold_batch_norms(model: &mut ModelProto) -> Result<Vec<Folded>, GraphError> {
    let Some(g) = model.graph.as_mut() else {
        return Ok(Vec::new());
    };
    let mut folded = Vec::new();
    while let Some((ci, bi)) = next_foldable(g) {
        let (conv, bn) = (g.node[ci].clone(), g.node[bi].clone());
        let inits = initializers(g);
        let get = |name: &str| -> Result<Vec<f32>, GraphError> {
            let t = inits.get(name).ok_or_else(|| GraphError::Node {
                node: node_name(&bn),
                reason: format!("`{name}` is not a constant"),
            })?;
            Ok(floats(t)?)
        };
        let mut w = get(&conv.input[1])?;
        let (gamma, beta, mean, var) = (
            get(&bn.input[1])?,
            get(&bn.input[2])?,
            get(&bn.input[3])?,
            get(&bn.input[4])?,
        );
        let k = gamma.len();
        let wdims = inits
            .get(conv.input[1].as_str())
            .map(|t| t.dims.clone())
            .unwrap_or_default();
        let mut b = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => get(name)?,
            None => vec![0.0; k],
        };
        if beta.len() != k || mean.len() != k || var.len() != k || b.len() != k || w.len() % k != 0 {
            return Err(GraphError::Node {
                node: node_name(&bn),
                reason: "BatchNormalization's parameters do not match the convolution's output channels".into(),
            });
        }
        let eps = attr(&bn, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
        let per = w.len() / k;
        for o in 0..k {
            let s = gamma[o] / (var[o] + eps).sqrt();
            for x in &mut w[o * per..(o + 1) * per] {
                *x *= s;
            }
            b[o] = (b[o] - mean[o]) * s + beta[o];
        }
        let base = node_name(&conv);
        let (wn, bn_name) = (
            unique(g, &format!("{base}.bn_folded.weight")),
            unique(g, &format!("{base}.bn_folded.bias")),
        );
        let wdims: Vec<usize> = wdims.iter().map(|&d| d as usize).collect();
        g.initializer.push(float_tensor(&wn, &wdims, &w));
        g.initializer.push(float_tensor(&bn_name, &[k], &b));
        let out = bn.output[0].clone();
        let c = &mut g.node[ci];
        c.input.truncate(1);
        c.input.push(wn);
        c.input.push(bn_name);
        c.output[0] = out;
        folded.push(Folded {
            conv: base,
            batch_norm: node_name(&bn),
        });
        g.node.remove(bi);
    }
    remove_unused_initializers(g);
    Ok(folded)
}

fn next_foldable(g: &GraphProto) -> Option<(usize, usize)> {
    let inits = initializers(g);
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    for (bi, bn) in g.node.iter().enumerate() {
        if bn.op_type() != "BatchNormalization" || bn.input.len() < 5 || bn.output.len() != 1 {
            continue;
        }
        if int(bn, "training_mode").unwrap_or(0) != 0 {
            continue;
        }
        if !bn.input[1..5].iter().all(|i| inits.contains_key(i.as_str())) {
            continue;
        }
        let x = &bn.input[0];
        let Some(ci) = g.node.iter().position(|n| n.output.first() == Some(x)) else {
            continue;
        };
        let conv = &g.node[ci];
        if conv.op_type() != "Conv" || conv_of(conv, &inits).is_err() || outputs.contains(x.as_str()) {
            continue;
        }
        let users = g.node.iter().filter(|n| n.input.iter().any(|i| i == x)).count();
        if users == 1 {
            return Some((ci, bi));
        }
    }
    None
}

/// A name not used by any node output, initializer or graph input yet.
pub fn unique(g: &GraphProto, want: &str) -> String {
    let used = |s: &str| {
        g.initializer.iter().any(|t| t.name() == s)
            || g.node.iter().any(|n| n.output.iter().any(|o| o == s) || n.name() == s)
            || g.input.iter().any(|i| i.name() == s)
    };
    if !used(want) {
        return want.to_string();
    }
    (1..)
        .map(|i| format!("{want}.{i}"))
        .find(|s| !used(s))
        .unwrap_or_else(|| want.to_string())
}

/// Drop initializers (and graph inputs naming them) that no node uses any more.
pub fn remove_unused_initializers(g: &mut GraphProto) {
    let used: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name().to_string()))
        .collect();
    let dropped: HashSet<String> = g
        .initializer
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| !used.contains(n))
        .collect();
    g.initializer.retain(|t| !dropped.contains(t.name()));
    g.input.retain(|i| !dropped.contains(i.name()));
}

/// One convolution of a replacement chain.
#[derive(Clone, Debug)]
pub struct ConvStep {
    /// Suffix of the new node's name (`tucker_in`, `tucker_core`, `tucker_out`).
    pub suffix: &'static str,
    /// K, C, kh, kw.
    pub kernel: [usize; 4],
    /// Row-major K·C·kh·kw.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    /// This step takes the original's stride, padding and dilation (the others are plain 1×1).
    pub spatial: bool,
}

fn ints_attr(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn conv_node(name: &str, input: &str, w: &str, b: Option<&str>, out: &str, conv: &Conv, step: &ConvStep) -> NodeProto {
    let mut inputs = vec![input.to_string(), w.to_string()];
    inputs.extend(b.map(str::to_string));
    let mut attribute = vec![ints_attr("kernel_shape", &step.kernel[2..])];
    if step.spatial {
        attribute.push(ints_attr("strides", &conv.strides));
        attribute.push(ints_attr("dilations", &conv.dilations));
        if matches!(conv.auto_pad.as_str(), "NOTSET" | "") {
            attribute.push(ints_attr("pads", &conv.pads));
        } else {
            attribute.push(AttributeProto {
                name: Some("auto_pad".into()),
                r#type: Some(attribute_proto::AttributeType::String as i32),
                s: Some(conv.auto_pad.clone().into_bytes()),
                ..Default::default()
            });
        }
    }
    NodeProto {
        input: inputs,
        output: vec![out.to_string()],
        name: Some(name.to_string()),
        op_type: Some("Conv".into()),
        attribute,
        ..Default::default()
    }
}

/// Replace `conv` by the chain `steps` (first consumes the conv's input, last produces its output), in place,
/// keeping the graph's topological order. Weights no node uses any more are dropped.
pub fn replace_conv(g: &mut GraphProto, conv: &Conv, steps: &[ConvStep]) -> Result<(), GraphError> {
    let Some(at) = g
        .node
        .iter()
        .position(|n| n.op_type() == "Conv" && n.output.first() == Some(&conv.output))
    else {
        return Err(GraphError::Node {
            node: conv.name.clone(),
            reason: "not in the graph".into(),
        });
    };
    let mut nodes = Vec::with_capacity(steps.len());
    let mut input = conv.input.clone();
    for (i, s) in steps.iter().enumerate() {
        let base = format!("{}/{}", conv.name, s.suffix);
        let w = unique(g, &format!("{base}.weight"));
        g.initializer.push(float_tensor(&w, &s.kernel, &s.weight));
        let b = s.bias.as_ref().map(|b| {
            let n = unique(g, &format!("{base}.bias"));
            g.initializer.push(float_tensor(&n, &[b.len()], b));
            n
        });
        let out = if i + 1 == steps.len() {
            conv.output.clone()
        } else {
            unique(g, &format!("{base}.out"))
        };
        let name = unique(g, &base);
        nodes.push(conv_node(&name, &input, &w, b.as_deref(), &out, conv, s));
        input = out;
    }
    g.node.splice(at..=at, nodes);
    remove_unused_initializers(g);
    Ok(())
}

fn float_value(name: &str, shape: Option<&[usize]>) -> ValueInfoProto {
    let shape = shape.map(|s| TensorShapeProto {
        dim: s
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A copy of `model` whose graph also outputs the tensors `names` (float32, shapes left to the runtime),
/// after the original outputs.
pub fn with_outputs(model: &ModelProto, names: &[String]) -> ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let have: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
        for n in names.iter().filter(|n| !have.contains(*n)) {
            g.output.push(float_value(n, None));
        }
    }
    m
}

/// A model of the convolution chain `steps` alone (or of the original convolution when `steps` is one
/// step with the conv's own weights), with input `[1, C, h, w]`: what the device times.
pub fn layer_model(conv: &Conv, steps: &[ConvStep], h: usize, w: usize, opset: i64) -> Result<ModelProto, GraphError> {
    let mut g = GraphProto {
        name: Some(format!("{} alone", conv.name)),
        ..Default::default()
    };
    let single = Conv {
        input: "x".into(),
        output: "y".into(),
        ..conv.clone()
    };
    g.input.push(float_value("x", Some(&[1, conv.in_channels(), h, w])));
    g.output.push(float_value("y", None));
    g.node.push(NodeProto {
        input: vec!["x".into(), "placeholder".into()],
        output: vec!["y".into()],
        op_type: Some("Conv".into()),
        ..Default::default()
    });
    // replace_conv finds the placeholder node by its output and op type.
    replace_conv(&mut g, &single, steps)?;
    Ok(ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("kestrel-compress".into()),
        graph: Some(g),
        ..Default::default()
    })
}

/// The model's default-domain opset version.
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty())
        .and_then(|o| o.version)
        .unwrap_or(13)
}

/// The conv's kernel and bias as one chain step (for the original layer's model).
pub fn original_step(g: &GraphProto, conv: &Conv) -> Result<ConvStep, GraphError> {
    let inits = initializers(g);
    let w = floats(inits.get(conv.weight.as_str()).ok_or_else(|| GraphError::Node {
        node: conv.name.clone(),
        reason: "weight missing".into(),
    })?)?;
    let bias = match &conv.bias {
        Some(b) => Some(floats(inits.get(b.as_str()).ok_or_else(|| GraphError::Node {
            node: conv.name.clone(),
            reason: "bias missing".into(),
        })?)?),
        None => None,
    };
    Ok(ConvStep {
        suffix: "original",
        kernel: conv.kernel,
        weight: w,
        bias,
        spatial: true,
    })
}

/// Parameters of a graph: elements of all float initializers.
pub fn parameter_count(g: &GraphProto) -> usize {
    g.initializer
        .iter()
        .filter(|t| t.data_type() == FLOAT)
        .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
        .sum()
}
