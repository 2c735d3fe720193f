"""`kestrel compress --method prune` checked from the outside, on every architecture we have: the trained
YOLOv3-tiny (Concat, Resize), the synthetic YOLOv5n and YOLOv5s (C3 residual Adds, SPPF, SiLU), and a
constructed model with Split, Slice, an unfolded BatchNormalization and a residual Add that ties a Split's
half to another convolution. Each pruned model passes the full ONNX checker and runs in onnxruntime with the
original's output layout; pruning nothing gives the original's outputs, removing filters that are exactly zero
changes nothing; the dependency groups of YOLOv5n are the ones its architecture implies; bad input is refused
or explained.

Uniform ratios and the L1 order keep these runs light (no search, no fidelity tightening, no timing); the
per-group search, the data-aware order and the comparisons are measured by scripts/bench-compress.sh.
"""
import json
import os
import re

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from conftest import ROOT, need, photo  # noqa: E402
from test_compress import kestrel, spread  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune-frames")
    cal = need(ROOT / ".cache/frames/calibration", "compress calibration frames")
    ev = need(ROOT / ".cache/frames/eval", "compress evaluation frames")
    return spread(cal, 4, tmp / "calibration"), spread(ev, 3, tmp / "eval")


def prune(kestrel_bin, model, out, frames, *extra):
    report = out.with_suffix(".json")
    r = kestrel(kestrel_bin, "compress", "--method", "prune", "--model", model, "--out", out, "--calibration",
                frames[0], "--eval", frames[1], "--report", report, "--fps-rounds", 0, "--no-compare", *extra)
    return r, (json.loads(report.read_text()) if r.returncode == 0 else None)


def run(model_path, x):
    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def inputs_for(model_path, n=2, seed=0):
    m = onnx.load(str(model_path))
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [rng.random(dims, dtype=np.float32) for _ in range(n)]


def conv(name, x, w, b, **attrs):
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, **attrs), [
        numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
        numpy_helper.from_array(b.astype(np.float32), f"{name}.b")]


def constructed(path, zero_filters=0, concat_axis=1, dynamic_channels=False):
    """Split, Slice, Add, Concat, BatchNormalization, MaxPool, Resize, SiLU, in the YOLOv5 output layout
    (1 class). `zero_filters`: that many of c3's filters (and biases) are exactly zero."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []

    def add(n, i):
        nodes.append(n)
        inits.extend(i)

    def w(k, c, s=3):
        return rng.standard_normal((k, c, s, s)) * (1.0 / np.sqrt(c * s * s))

    add(*conv("c0", "images", w(16, 3), rng.standard_normal(16) * 0.1, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
              strides=[2, 2]))
    nodes.append(helper.make_node("LeakyRelu", ["c0"], ["a0"], alpha=0.1))
    add(*conv("c1", "a0", w(32, 16), rng.standard_normal(32) * 0.1, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["a1"]))
    inits.append(numpy_helper.from_array(np.array([16, 16], np.int64), "split_sizes"))
    nodes.append(helper.make_node("Split", ["a1", "split_sizes"], ["sa", "sb"], axis=1, name="split"))
    add(*conv("c2", "sa", w(16, 16), rng.standard_normal(16) * 0.1, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes += [helper.make_node("Sigmoid", ["c2"], ["c2s"]), helper.make_node("Mul", ["c2", "c2s"], ["a2"]),
              helper.make_node("Add", ["a2", "sb"], ["res"], name="residual")]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "sl_starts"),
              numpy_helper.from_array(np.array([8], np.int64), "sl_ends"),
              numpy_helper.from_array(np.array([1], np.int64), "sl_axes")]
    nodes.append(helper.make_node("Slice", ["a1", "sl_starts", "sl_ends", "sl_axes"], ["sl"], name="slice"))
    other = "a0"
    if concat_axis != 1:
        add(*conv("cx", "a0", w(16, 16), np.zeros(16), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        other = "cx"
    if concat_axis == 1:
        nodes.append(helper.make_node("Concat", ["res", "sl", other], ["cat"], axis=1, name="cat"))
        cat_c = 40
    else:
        # Height-wise join of two 16-channel maps: channels pass straight, but not through a channel concat.
        nodes.append(helper.make_node("Concat", ["res", other], ["cat2"], axis=concat_axis, name="cat"))
        inits += [numpy_helper.from_array(np.array([0, 0], np.int64), "h_starts"),
                  numpy_helper.from_array(np.array([32, 32], np.int64), "h_ends"),
                  numpy_helper.from_array(np.array([2, 3], np.int64), "h_axes")]
        nodes.append(helper.make_node("Slice", ["cat2", "h_starts", "h_ends", "h_axes"], ["cat"], name="crop"))
        cat_c = 16
    inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, cat_c).astype(np.float32), "bn_s"),
              numpy_helper.from_array(rng.standard_normal(cat_c).astype(np.float32) * 0.1, "bn_b"),
              numpy_helper.from_array(rng.standard_normal(cat_c).astype(np.float32) * 0.1, "bn_m"),
              numpy_helper.from_array(rng.uniform(0.5, 1.5, cat_c).astype(np.float32), "bn_v")]
    nodes += [helper.make_node("BatchNormalization", ["cat", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
              helper.make_node("MaxPool", ["bn"], ["mp"], kernel_shape=[2, 2], strides=[2, 2])]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "rs_scales"))
    nodes.append(helper.make_node("Resize", ["mp", "", "rs_scales"], ["rs"], mode="nearest", name="resize"))
    w3, b3 = w(32, cat_c), rng.standard_normal(32) * 0.1
    w3[:zero_filters], b3[:zero_filters] = 0.0, 0.0
    add(*conv("c3", "rs", w3, b3, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]))
    nodes.append(helper.make_node("Relu", ["c3"], ["a3"]))
    add(*conv("head", "a3", w(6, 32, 1), np.array([0, 0, 0, 0, 0, 0]), kernel_shape=[1, 1]))
    inits.append(numpy_helper.from_array(np.array([1, 6, -1], np.int64), "shape"))
    nodes += [helper.make_node("Reshape", ["head", "shape"], ["flat"]),
              helper.make_node("Transpose", ["flat"], ["output0"], perm=[0, 2, 1])]
    n = (SIZE // 4) ** 2
    cdim = "C" if dynamic_channels else 3
    g = helper.make_graph(nodes, "prune-zoo", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                             [1, cdim, SIZE, SIZE])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, n, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="kestrel-tests")
    m.ir_version = 8
    e = m.metadata_props.add()
    e.key, e.value = "names", "{0: 'thing'}"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return path


def output_shapes(path):
    return [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in onnx.load(str(path)).graph.output]


def check_pruned(original, pruned, max_layer_drop=None):
    """Full checker, runs in onnxruntime, same output layout (declared and actual)."""
    m = onnx.load(str(pruned))
    onnx.checker.check_model(m, full_check=True)
    assert output_shapes(pruned) == output_shapes(original)
    for x in inputs_for(original, n=1):
        a, b = run(original, x), run(pruned, x)
        assert [o.shape for o in a] == [o.shape for o in b]
        assert all(np.isfinite(o).all() for o in b)


def conv_params(path):
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    return sum(int(np.prod(inits[n.input[1]].dims)) for n in m.graph.node if n.op_type == "Conv")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return constructed(tmp_path_factory.mktemp("zoo") / "zoo.onnx")


def test_constructed_model_groups_follow_split_slice_add_and_concat(kestrel_bin, zoo, frames, tmp_path):
    r, rep = prune(kestrel_bin, zoo, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.5, "--importance", "l1")
    assert r.returncode == 0, r.stderr
    groups = {tuple(g["convs"]): g for g in rep["prune"]["groups"]}
    # c2's output is added to the second half of c1's (through the Split): one group, joined by the Add.
    assert set(groups) == {("c0",), ("c1", "c2"), ("c3",), ("head",)}, groups.keys()
    g12 = groups[("c1", "c2")]
    assert g12["joined_by"] == ["residual"] and g12["channels"] == 32  # 16 tied pairs + c1's first 16
    assert set(g12["consumers"]) == {"c2", "c3"}  # through the Split, and through the Slice and Concat
    assert set(groups[("c0",)]["consumers"]) == {"c1", "c3"}
    assert "detection-head" in groups[("head",)]["blocked"]
    assert all(groups[k]["pruned"] for k in [("c0",), ("c1", "c2"), ("c3",)])
    check_pruned(zoo, tmp_path / "p.onnx")
    assert conv_params(tmp_path / "p.onnx") < 0.5 * conv_params(zoo)


def test_constructed_model_data_aware_refit_is_valid(kestrel_bin, zoo, frames, tmp_path):
    r, rep = prune(kestrel_bin, zoo, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.5)
    assert r.returncode == 0, r.stderr
    assert rep["prune"]["importance"] == "data-aware"
    check_pruned(zoo, tmp_path / "p.onnx")
    # The split sizes and slice bounds follow the kept channels.
    m = onnx.load(str(tmp_path / "p.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    c1 = next(n for n in m.graph.node if n.output[0] == "c1")
    k1 = inits[c1.input[1]].shape[0]
    sizes = inits[nodes["split"].input[1]]
    assert sizes.sum() == k1 and (sizes > 0).all()


def test_ratio_zero_gives_the_original_outputs(kestrel_bin, zoo, frames, tmp_path):
    r, rep = prune(kestrel_bin, zoo, tmp_path / "p.onnx", frames, "--uniform-ratio", 0)
    assert r.returncode == 0, r.stderr
    check_pruned(zoo, tmp_path / "p.onnx")
    for x in inputs_for(zoo):
        for a, b in zip(run(zoo, x), run(tmp_path / "p.onnx", x)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_removing_zero_filters_changes_nothing(kestrel_bin, frames, tmp_path):
    src = constructed(tmp_path / "zeros.onnx", zero_filters=8)
    # Only c3's group is pruned (the others excluded), by a quarter: exactly its 8 zero filters by L1.
    r, rep = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.25, "--importance", "l1",
                   "--exclude", "c0,c1")
    assert r.returncode == 0, r.stderr
    groups = {tuple(g["convs"]): g for g in rep["prune"]["groups"]}
    assert groups[("c3",)]["pruned"] and groups[("c3",)]["kept"] == 24
    assert not groups[("c0",)]["pruned"] and "--exclude" in groups[("c0",)]["reason"]
    check_pruned(src, tmp_path / "p.onnx")
    assert conv_params(tmp_path / "p.onnx") == conv_params(src) - 8 * (40 * 9 + 6)
    for x in inputs_for(src):
        for a, b in zip(run(src, x), run(tmp_path / "p.onnx", x)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_concat_on_another_axis_stops_pruning_with_the_reason(kestrel_bin, frames, tmp_path):
    src = constructed(tmp_path / "axis.onnx", concat_axis=2)
    r, rep = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.5, "--importance", "l1")
    assert r.returncode == 0, r.stderr
    groups = {tuple(g["convs"]): g for g in rep["prune"]["groups"]}
    blocked = groups[("c1", "c2")]["blocked"]
    assert blocked and "`cat`" in blocked and "axis 2" in blocked, groups
    assert not groups[("c1", "c2")]["pruned"] and not groups[("cx",)]["pruned"]
    assert groups[("c3",)]["pruned"]
    check_pruned(src, tmp_path / "p.onnx")


def test_dynamic_channel_count_is_refused(kestrel_bin, frames, tmp_path):
    src = constructed(tmp_path / "dyn.onnx", dynamic_channels=True)
    r, _ = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.5)
    assert r.returncode != 0 and "dynamic channel count" in r.stderr, r.stderr
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("value", ["0", "1", "-0.5", "abc"])
def test_max_layer_error_out_of_range_names_the_option(kestrel_bin, zoo, frames, tmp_path, value):
    r = kestrel(kestrel_bin, "compress", "--method", "prune", "--model", zoo, "--out", tmp_path / "p.onnx",
                "--calibration", frames[0], f"--max-layer-error={value}")
    assert r.returncode == 2 and "--max-layer-error" in r.stderr and f"'{value}'" in r.stderr, r.stderr
    assert not (tmp_path / "p.onnx").exists()


def base(name):
    """`model.2.cv1.conv_out_7` → `model.2.cv1`; `model.24.m.0_out_199` → `model.24.m.0`."""
    return re.sub(r"(\.conv)?_out_\d+$", "", name)


def expected_v5_groups(depth):
    """The groups YOLOv5's architecture implies: in each backbone C3 (shortcut=True), cv1 and every
    bottleneck's cv2 are tied by the residual Adds; every other convolution is a group of its own; the three
    Detect convolutions are blocked (their channels are the output layout)."""
    c3 = {2: 3, 4: 6, 6: 9, 8: 3, 13: 3, 17: 3, 20: 3, 23: 3}
    shortcut = {2, 4, 6, 8}
    n_of = {i: max(round(n * depth), 1) for i, n in c3.items()}
    groups = []
    for i in range(24):
        if i in c3:
            n = n_of[i]
            if i in shortcut:
                groups.append((f"model.{i}.cv1", *[f"model.{i}.m.{j}.cv2" for j in range(n)]))
            else:
                groups.append((f"model.{i}.cv1",))
                groups += [(f"model.{i}.m.{j}.cv2",) for j in range(n)]
            groups.append((f"model.{i}.cv2",))
            groups += [(f"model.{i}.m.{j}.cv1",) for j in range(n)]
            groups.append((f"model.{i}.cv3",))
        elif i == 9:
            groups += [("model.9.cv1",), ("model.9.cv2",)]
        elif i in (11, 12, 15, 16, 19, 22):
            continue  # Upsample and Concat layers
        else:
            groups.append((f"model.{i}",))
    return sorted(groups), {(f"model.24.m.{j}",) for j in range(3)}


@pytest.mark.parametrize("name,depth", [("yolov5n-synthetic-384.onnx", 0.33), ("yolov5s-synthetic-640.onnx", 0.33),
                                        ("yolov3-tiny-416.onnx", None)])
def test_real_architectures_prune_to_valid_models(kestrel_bin, frames, tmp_path, name, depth):
    src = need(ROOT / "models" / name, name)
    r, rep = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.25, "--importance", "l1")
    assert r.returncode == 0, r.stderr
    check_pruned(src, tmp_path / "p.onnx")
    groups = rep["prune"]["groups"]
    assert conv_params(tmp_path / "p.onnx") < 0.8 * conv_params(src)
    if depth is None:
        # YOLOv3-tiny: no residuals; conv_23 feeds both conv_28 and (through the Concat) conv_82.
        g = {tuple(x["convs"]): x for x in groups}
        assert all(len(k) == 1 for k in g) and set(g[("conv_23",)]["consumers"]) == {"conv_28", "conv_82"}
        assert "detection-head" in g[("conv_45",)]["blocked"] and "detection-head" in g[("conv_86",)]["blocked"]
        return
    found = sorted(tuple(base(c) for c in g["convs"]) for g in groups)
    want, head = expected_v5_groups(depth)
    assert sorted(k for k in found if k not in head) == want
    for g in groups:
        key = tuple(base(c) for c in g["convs"])
        if key in head:
            assert "detection-head" in g["blocked"] and not g["pruned"]
        else:
            assert g["blocked"] is None and g["pruned"], g
            assert len(g["joined_by"]) == len(key) - 1  # one Add per bottleneck


def test_pruned_model_detects_and_reports_stages(kestrel_bin, frames, tmp_path):
    src = ROOT / "models/yolov3-tiny-416.onnx"
    r, rep = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0.1)
    assert r.returncode == 0, r.stderr
    assert [s["stage"] for s in rep["stages"]] == ["original", "pruned"]
    assert rep["stages"][1]["params"] == sum(int(np.prod(t.dims)) for t in
                                             onnx.load(str(tmp_path / "p.onnx")).graph.initializer
                                             if t.data_type == TensorProto.FLOAT)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    info = json.loads(meta["kestrel_compress"])
    assert info["method"] == "prune" and info["source_sha256"] == rep["prune"]["source"]["sha256"]
    assert {tuple(g["convs"]) for g in info["prune"]["groups"]} == \
        {tuple(g["convs"]) for g in rep["prune"]["groups"] if g["pruned"]}
    d = kestrel(kestrel_bin, "detect", "--model", tmp_path / "p.onnx", photo("person.jpg"))
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout)["detections"], "the lightly pruned model finds nothing in person.jpg"


@pytest.mark.parametrize("name", ["yolov5n-synthetic-384.onnx", "yolov3-tiny-416.onnx"])
def test_ratio_zero_gives_the_original_outputs_on_real_architectures(kestrel_bin, frames, tmp_path, name):
    src = need(ROOT / "models" / name, name)
    r, _ = prune(kestrel_bin, src, tmp_path / "p.onnx", frames, "--uniform-ratio", 0, "--importance", "l1")
    assert r.returncode == 0, r.stderr
    check_pruned(src, tmp_path / "p.onnx")
    for x in inputs_for(src, n=1):
        for a, b in zip(run(src, x), run(tmp_path / "p.onnx", x)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
