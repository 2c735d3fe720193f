//! The compression maths and graph surgery against ONNX Runtime, on a constructed model with every kind of
//! convolution: strides, asymmetric padding, dilation, bias and none, a non-square kernel, `auto_pad`, a
//! BatchNormalization to fold, and the three kinds that must be left alone (grouped, depthwise, computed
//! weights).

use kestrel_compress::capture::Capture;
use kestrel_compress::compress::replacement;
use kestrel_compress::graph::{self, Conv};
use kestrel_compress::model::{float_tensor, floats, OnnxModel};
use kestrel_compress::onnx::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use kestrel_compress::tucker::{Factorisation, Kernel, Prepared};
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};

use crate::common;

const H: usize = 20;
const W: usize = 18;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: Some(name.into()),
        op_type: Some(op.into()),
        attribute,
        ..Default::default()
    }
}

fn value(name: &str, dims: Option<&[i64]>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|&v| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// name, input, output, kernel, has a bias, attributes.
type ConvSpec = (
    &'static str,
    &'static str,
    &'static str,
    [usize; 4],
    bool,
    Vec<AttributeProto>,
);

/// The constructed model; its convolutions in order: c1 … c9.
fn zoo() -> ModelProto {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut g = GraphProto {
        name: Some("conv zoo".into()),
        ..Default::default()
    };
    let mut init = |g: &mut GraphProto, name: &str, dims: &[usize], lo: f32, hi: f32| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        g.initializer.push(float_tensor(name, dims, &v));
    };
    let convs: &[ConvSpec] = &[
        (
            "c1",
            "x",
            "y1",
            [8, 3, 3, 3],
            true,
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        ),
        (
            "c2",
            "r1",
            "y2",
            [12, 8, 3, 3],
            true,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[0, 1, 1, 0]),
            ],
        ),
        (
            "c3",
            "y2",
            "y3",
            [12, 12, 3, 3],
            false,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("dilations", &[2, 2]),
                ints("pads", &[2, 2, 2, 2]),
            ],
        ),
        (
            "c4",
            "b3",
            "y4",
            [16, 12, 1, 1],
            true,
            vec![ints("kernel_shape", &[1, 1])],
        ),
        (
            "c5",
            "y4",
            "y5",
            [10, 16, 5, 3],
            true,
            vec![ints("kernel_shape", &[5, 3]), ints("pads", &[2, 1, 2, 1])],
        ),
        (
            "c6",
            "y5",
            "y6",
            [10, 5, 3, 3],
            true,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                int("group", 2),
            ],
        ),
        (
            "c7",
            "y6",
            "y7",
            [10, 1, 3, 3],
            false,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                int("group", 10),
            ],
        ),
    ];
    for (name, input, output, k, bias, attrs) in convs {
        init(&mut g, &format!("{name}.w"), k, -0.5, 0.5);
        let w = format!("{name}.w");
        let b = format!("{name}.b");
        let mut inputs = vec![*input, w.as_str()];
        if *bias {
            init(&mut g, &b, &[k[0]], -0.2, 0.2);
            inputs.push(b.as_str());
        }
        g.node.push(node("Conv", name, &inputs, output, attrs.clone()));
        if *name == "c1" {
            g.node.push(node("Relu", "relu1", &["y1"], "r1", vec![]));
        }
        if *name == "c3" {
            for (p, lo, hi) in [
                ("scale", 0.5, 1.5),
                ("bias", -0.3, 0.3),
                ("mean", -0.2, 0.2),
                ("var", 0.5, 2.0),
            ] {
                init(&mut g, &format!("bn3.{p}"), &[12], lo, hi);
            }
            let mut bn = node(
                "BatchNormalization",
                "bn3",
                &["y3", "bn3.scale", "bn3.bias", "bn3.mean", "bn3.var"],
                "b3",
                vec![],
            );
            bn.attribute.push(AttributeProto {
                name: Some("epsilon".into()),
                r#type: Some(AttributeType::Float as i32),
                f: Some(1e-3),
                ..Default::default()
            });
            g.node.push(bn);
        }
    }
    // c8: its weight is computed (Identity of an initializer), so not a constant.
    init(&mut g, "c8.w0", &[6, 10, 1, 1], -0.5, 0.5);
    g.node.push(node("Identity", "c8.id", &["c8.w0"], "c8.w", vec![]));
    g.node.push(node(
        "Conv",
        "c8",
        &["y7", "c8.w"],
        "y8",
        vec![ints("kernel_shape", &[1, 1])],
    ));
    // c9: auto_pad SAME_UPPER with stride 2.
    init(&mut g, "c9.w", &[8, 6, 3, 3], -0.5, 0.5);
    init(&mut g, "c9.b", &[8], -0.2, 0.2);
    let mut c9 = node(
        "Conv",
        "c9",
        &["y8", "c9.w", "c9.b"],
        "out",
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])],
    );
    c9.attribute.push(AttributeProto {
        name: Some("auto_pad".into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(b"SAME_UPPER".to_vec()),
        ..Default::default()
    });
    g.node.push(c9);
    g.input.push(value("x", Some(&[1, 3, H as i64, W as i64])));
    g.output.push(value("out", None));
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: Some("kestrel-tests".into()),
        graph: Some(g),
        ..Default::default()
    }
}

fn frames(n: usize) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    (0..n)
        .map(|_| (0..3 * H * W).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

/// Run `m` on `x`; every graph output by name.
fn run(m: &ModelProto, x: &[f32]) -> Vec<(String, Vec<f32>)> {
    let rt = common::runtime();
    let bytes = m.encode_to_vec();
    let mut s = Session::builder(&rt.env).unwrap().commit_from_memory(&bytes).unwrap();
    let t = TensorRef::from_array_view(([1usize, 3, H, W], x)).unwrap();
    let out = s.run(ort::inputs!["x" => t]).unwrap();
    out.iter()
        .map(|(name, v)| (name.to_string(), v.try_extract_tensor::<f32>().unwrap().1.to_vec()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn kernel_of(m: &ModelProto, c: &Conv) -> (Kernel, Option<Vec<f32>>) {
    let g = m.graph.as_ref().unwrap();
    let inits = graph::initializers(g);
    let w = floats(inits[c.weight.as_str()]).unwrap();
    let b = c.bias.as_ref().map(|b| floats(inits[b.as_str()]).unwrap());
    (Kernel::from_f32(c.kernel[0], c.kernel[1], c.taps(), &w), b)
}

#[test]
fn batch_norm_folds_and_unsupported_convolutions_say_why() {
    let _g = common::shared_lock();
    let original = zoo();
    let mut folded = original.clone();
    let f = graph::fold_batch_norms(&mut folded).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].conv.as_str(), f[0].batch_norm.as_str()), ("c3", "bn3"));
    assert!(folded
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .all(|n| n.op_type() != "BatchNormalization"));
    for x in frames(2) {
        let (a, b) = (&run(&original, &x)[0].1, &run(&folded, &x)[0].1);
        assert!(
            max_abs_diff(a, b) <= 1e-5 * max_abs(a).max(1.0),
            "{}",
            max_abs_diff(a, b)
        );
    }
    let found = graph::convolutions(folded.graph.as_ref().unwrap());
    let ok: Vec<&str> = found
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ok, ["c1", "c2", "c3", "c4", "c5", "c9"]);
    let why: Vec<(String, String)> = found
        .iter()
        .filter_map(|c| c.as_ref().err())
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why[0].0 == "c6" && why[0].1.contains("grouped"), "{why:?}");
    assert!(why[1].0 == "c7" && why[1].1.contains("depthwise"), "{why:?}");
    assert!(why[2].0 == "c8" && why[2].1.contains("not a constant"), "{why:?}");
    // Only c9 produces a graph output without another convolution after it.
    let head = graph::head_convolutions(folded.graph.as_ref().unwrap());
    assert_eq!(head.into_iter().collect::<Vec<_>>(), ["c9"]);
}

#[test]
fn the_trained_models_head_is_its_two_output_convolutions() {
    let _g = common::shared_lock();
    let m = OnnxModel::load(&common::model("yolov3-tiny-416.onnx")).unwrap();
    let mut head: Vec<String> = graph::head_convolutions(m.proto.graph.as_ref().unwrap())
        .into_iter()
        .collect();
    head.sort();
    // The 1×1 convolutions to 255 = 3 × (5 + 80) channels at 13×13 and 26×26.
    assert_eq!(head, ["conv_45", "conv_86"]);
}

#[test]
fn full_rank_replacement_equals_the_original_through_onnx_runtime() {
    let _g = common::shared_lock();
    let mut folded = zoo();
    graph::fold_batch_norms(&mut folded).unwrap();
    let convs: Vec<Conv> = graph::convolutions(folded.graph.as_ref().unwrap())
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let xs = frames(3);
    let mut cap = Capture::new(common::runtime(), &folded, &convs).unwrap();
    for x in &xs {
        cap.add_frame(x, H, W).unwrap();
    }
    for how in [
        Factorisation::Hosvd { hooi_iterations: 0 },
        Factorisation::Hosvd { hooi_iterations: 2 },
        Factorisation::DataAware,
    ] {
        let mut m = folded.clone();
        for (c, cap) in convs.iter().zip(&cap.layers) {
            let stats = &cap.as_ref().unwrap().stats;
            let (kern, bias) = kernel_of(&folded, c);
            let p = Prepared::new(kern, Some(stats), 0.0).unwrap();
            let [k, ch, _, _] = c.kernel;
            let (ri, ro) = if c.taps() == 1 { (k.min(ch), k.min(ch)) } else { (ch, k) };
            let f = p.factors(how, ri, ro, Some(stats)).unwrap();
            graph::replace_conv(m.graph.as_mut().unwrap(), c, &replacement(c, &f, bias)).unwrap();
        }
        let g = m.graph.as_ref().unwrap();
        // Every supported conv became a chain; the unsupported three are still there as they were.
        let conv_nodes = g.node.iter().filter(|n| n.op_type() == "Conv").count();
        assert_eq!(conv_nodes, 5 * 3 + 2 + 3, "{how:?}");
        for x in &xs {
            let (a, b) = (&run(&folded, x)[0].1, &run(&m, x)[0].1);
            let d = max_abs_diff(a, b);
            assert!(
                d <= 1e-4 * max_abs(a).max(1.0),
                "{how:?}: max |Δ| {d} of {}",
                max_abs(a)
            );
        }
    }
}

#[test]
fn predicted_error_equals_the_measured_one_and_one_layer_models_agree() {
    let _g = common::shared_lock();
    let mut folded = zoo();
    graph::fold_batch_norms(&mut folded).unwrap();
    let convs: Vec<Conv> = graph::convolutions(folded.graph.as_ref().unwrap())
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let xs = frames(3);
    let mut cap = Capture::new(common::runtime(), &folded, &convs).unwrap();
    for x in &xs {
        cap.add_frame(x, H, W).unwrap();
    }
    // c2 (stride 2, asymmetric pads) and c4 (1×1) at low ranks: the error predicted from the captured
    // statistics is the error of that layer's output through ONNX Runtime on the same frames.
    for (name, ranks) in [("c2", (3, 5)), ("c4", (4, 4)), ("c5", (6, 4))] {
        let i = convs.iter().position(|c| c.name == name).unwrap();
        let c = &convs[i];
        let st = &cap.layers[i].as_ref().unwrap().stats;
        let (kern, bias) = kernel_of(&folded, c);
        let p = Prepared::new(kern.clone(), Some(st), 0.3).unwrap();
        let b64: Vec<f64> = bias.iter().flatten().map(|&v| f64::from(v)).collect();
        for how in [Factorisation::DataAware, Factorisation::Hosvd { hooi_iterations: 0 }] {
            let f = p.factors(how, ranks.0, ranks.1, Some(st)).unwrap();
            let predicted = st.relative_error(
                kern.w.as_ref(),
                f.reconstruct().as_ref(),
                st.output_energy(kern.w.as_ref(), &b64),
                f.bias_shift.as_deref(),
            );
            let mut m = folded.clone();
            graph::replace_conv(m.graph.as_mut().unwrap(), c, &replacement(c, &f, bias.clone())).unwrap();
            let probe = [c.output.clone()];
            let (a, b) = (graph::with_outputs(&folded, &probe), graph::with_outputs(&m, &probe));
            let (mut num, mut den) = (0f64, 0f64);
            for x in &xs {
                let ya = run(&a, x).into_iter().find(|(n, _)| *n == c.output).unwrap().1;
                let yb = run(&b, x).into_iter().find(|(n, _)| *n == c.output).unwrap().1;
                num += ya.iter().zip(&yb).map(|(p, q)| f64::from(p - q).powi(2)).sum::<f64>();
                den += ya.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>();
            }
            let measured = (num / den).sqrt();
            assert!(
                predicted > 1e-3,
                "{name} {how:?}: ranks {ranks:?} should lose something"
            );
            assert!(
                (predicted - measured).abs() <= 1e-4 * measured.max(1e-3) + 1e-6,
                "{name} {how:?}: predicted {predicted} measured {measured}"
            );
        }
        // The one-layer timing models compute the same thing at full rank.
        let (h, w) = cap.layers[i].as_ref().unwrap().size;
        let (fi, fo) = if c.taps() == 1 {
            let r = c.kernel[0].min(c.kernel[1]);
            (r, r)
        } else {
            (c.kernel[1], c.kernel[0])
        };
        let full = p
            .factors(Factorisation::Hosvd { hooi_iterations: 0 }, fi, fo, None)
            .unwrap();
        let one = graph::original_step(folded.graph.as_ref().unwrap(), c).unwrap();
        let ma = graph::layer_model(c, &[one], h, w, 13).unwrap();
        let mb = graph::layer_model(c, &replacement(c, &full, bias.clone()), h, w, 13).unwrap();
        let rt = common::runtime();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..c.in_channels() * h * w)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut outs = Vec::new();
        for m in [&ma, &mb] {
            let bytes = m.encode_to_vec();
            let mut s = Session::builder(&rt.env).unwrap().commit_from_memory(&bytes).unwrap();
            let t = TensorRef::from_array_view(([1usize, c.in_channels(), h, w], x.as_slice())).unwrap();
            let o = s.run(ort::inputs!["x" => t]).unwrap();
            outs.push(o["y"].try_extract_tensor::<f32>().unwrap().1.to_vec());
        }
        let d = max_abs_diff(&outs[0], &outs[1]);
        assert!(
            d <= 1e-4 * max_abs(&outs[0]).max(1.0),
            "{name}: one-layer models differ by {d}"
        );
    }
}

#[test]
fn metadata_round_trips_through_the_file() {
    let _g = common::shared_lock();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.onnx");
    let mut m = OnnxModel::decode(&p, &zoo().encode_to_vec()).unwrap();
    let meta = r#"{"method":"tucker","layers":[{"name":"c2","ranks":[3,5],"error":0.01}]}"#;
    m.set_metadata("kestrel_compress", meta.into());
    m.set_metadata("names", "{0: 'a'}".into());
    m.set_metadata("kestrel_compress", meta.into());
    kestrel_compress::model::write_atomic(&p, &m.encode()).unwrap();
    let back = OnnxModel::load(&p).unwrap();
    assert_eq!(back.metadata("kestrel_compress"), Some(meta));
    assert_eq!(back.metadata("names"), Some("{0: 'a'}"));
    assert_eq!(back.proto.metadata_props.len(), 2);
    assert_eq!(back.proto, m.proto);
}
