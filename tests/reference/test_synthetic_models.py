"""The synthetic YOLOv5 generator is deterministic, has YOLOv5's architecture and layout, and its models run sanely."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

TOOL = "models/tools/yolov5_synthetic.py"
# Ultralytics' figures: README table (1.9 M / 7.2 M) and the fused model summaries (Conv + folded BN, as here).
PUBLISHED = {"n": 1.9e6, "s": 7.2e6}
FUSED = {"n": 1867405, "s": 7225885}


def generate(root, out, variant, *extra):
    r = subprocess.run([sys.executable, str(root / TOOL), variant, str(out), *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    """Generate each (variant, flags) once per module: {key: bytes}."""
    cache, folder = {}, tmp_path_factory.mktemp("synthetic")

    def get(variant, *extra):
        key = (variant, *extra)
        if key not in cache:
            cache[key] = generate(root, folder / f"{'_'.join(key).replace('-', '')}.onnx", variant, *extra)
        return cache[key]

    return get


def dims(v):
    return [d.dim_value for d in v.type.tensor_type.shape.dim]


def run(data, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def noise(size=640, dtype=np.float32):
    return np.random.default_rng(7).uniform(0.0, 1.0, (1, 3, size, size)).astype(dtype)


@pytest.mark.parametrize("variant", ["n", "s"])
def test_generation_is_deterministic(root, built, tmp_path, variant):
    assert generate(root, tmp_path / "again.onnx", variant) == built(variant)


def test_seed_changes_the_weights_only(built):
    a, b = onnx.load_from_string(built("n")), onnx.load_from_string(built("n", "--seed", "1"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert a.graph.initializer[0].raw_data != b.graph.initializer[0].raw_data
    assert {p.key: p.value for p in b.metadata_props}["seed"] == "1"


def test_layout_and_metadata(built):
    m = onnx.load_from_string(built("n"))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 13 and m.ir_version == 8
    assert [i.name for i in m.graph.input] == ["images"] and [o.name for o in m.graph.output] == ["output0"]
    assert dims(m.graph.input[0]) == [1, 3, 640, 640]
    assert dims(m.graph.output[0]) == [1, 25200, 85]
    meta = {p.key: p.value for p in m.metadata_props}
    assert [p.key for p in m.metadata_props] == sorted(meta)
    assert meta["names"].startswith("{0: 'person', 1: 'bicycle', 2: 'car'") and meta["names"].endswith("79: 'toothbrush'}")
    assert meta["imgsz"] == "[640, 640]" and meta["stride"] == "32" and meta["precision"] == "fp32"
    assert "random weights" in meta["description"] and meta["seed"] == "0"
    # The YOLOv5 v6.0 graph: 57 Conv blocks + 3 Detect convs, SiLU as x * Sigmoid(x), SPPF's three pools.
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 60 and ops.count("MaxPool") == 3 and ops.count("Resize") == 2
    assert ops.count("Add") == 7 + 3  # backbone Bottleneck shortcuts (1 + 2 + 3 + 1), then grid offsets
    assert "LeakyRelu" not in ops and "Relu" not in ops


def test_smaller_input_has_fewer_rows(built):
    m = onnx.load_from_string(built("n", "--size", "320"))
    assert dims(m.graph.input[0]) == [1, 3, 320, 320]
    assert dims(m.graph.output[0]) == [1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85]
    assert {p.key: p.value for p in m.metadata_props}["imgsz"] == "[320, 320]"
    assert run(built("n", "--size", "320"), noise(320)).shape == (1, 6300, 85)


@pytest.mark.parametrize("variant", ["n", "s"])
def test_parameter_count_matches_yolov5(built, variant):
    m = onnx.load_from_string(built(variant))
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.name.endswith((".weight", ".bias")))
    assert abs(params - PUBLISHED[variant]) / PUBLISHED[variant] < 0.02
    assert params == FUSED[variant]


@pytest.mark.parametrize("variant", ["n", "s"])
def test_output_is_finite_and_not_saturated(built, variant):
    y = run(built(variant), noise())
    assert y.shape == (1, 25200, 85) and y.dtype == np.float32 and np.isfinite(y).all()
    obj = y[0, :, 4]
    assert 0.0005 < np.median(obj) < 0.05  # around YOLOv5's initial objectness bias
    assert 0 < (obj > 0.25).sum() < 0.05 * obj.size  # some candidates for NMS, not a flood
    assert (obj < 0.999).all() or (obj > 0.999).sum() < 10
    cls = y[0, :, 5:]
    assert 0.05 < np.median(cls.max(axis=1)) < 0.95
    assert y[0, :, :2].min() >= -16.5 and y[0, :, :2].max() <= 656.5  # (2 * sigmoid - 0.5 + grid) * stride
    assert y[0, :, 2:4].min() >= 0.0 and y[0, :, 2:4].max() <= 4 * 373 + 1  # (2 * sigmoid)^2 * anchor


def test_fp16_runs_and_matches_fp32(built):
    m = onnx.load_from_string(built("n", "--fp16"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {p.key: p.value for p in m.metadata_props}["precision"] == "fp16"
    y16 = run(built("n", "--fp16"), noise(dtype=np.float16))
    assert y16.dtype == np.float16 and np.isfinite(y16).all()
    y32 = run(built("n"), noise())
    assert np.abs(y16[0, :, 4:].astype(np.float32) - y32[0, :, 4:]).max() < 0.05


def test_bad_size_is_refused(root, tmp_path):
    r = subprocess.run([sys.executable, str(root / TOOL), "n", str(tmp_path / "x.onnx"), "--size", "100"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "multiple of 32" in r.stderr
