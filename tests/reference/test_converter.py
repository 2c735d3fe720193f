"""The Darknet -> ONNX conversion is deterministic, checks its inputs, and writes the advertised layout."""
import hashlib
import subprocess
import sys

import onnx

TOOL = "models/tools/darknet_to_onnx.py"


def convert(root, src, out, *extra):
    subprocess.run([sys.executable, str(root / TOOL), str(src / "yolov3-tiny.cfg"), str(src / "yolov3-tiny.weights"),
                    str(src / "coco.names"), str(out), *extra], check=True, capture_output=True)
    return out.read_bytes()


def test_weights_are_the_official_release(darknet_src):
    digest = hashlib.sha256((darknet_src / "yolov3-tiny.weights").read_bytes()).hexdigest()
    assert digest.startswith("dccea06f")


def test_conversion_is_deterministic_and_matches_the_built_model(root, darknet_src, model416, tmp_path):
    a = convert(root, darknet_src, tmp_path / "a.onnx")
    b = convert(root, darknet_src, tmp_path / "b.onnx")
    assert a == b
    assert a == model416.read_bytes(), "models/yolov3-tiny-416.onnx is stale: rerun scripts/make-models.sh"


def test_layout_and_metadata(root, darknet_src, tmp_path):
    m = onnx.load_from_string(convert(root, darknet_src, tmp_path / "m640.onnx", "--size", "640"))
    assert m.opset_import[0].version >= 13
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
    assert dims(m.graph.input[0]) == [1, 3, 640, 640]
    assert dims(m.graph.output[0]) == [1, 3 * (20 * 20 + 40 * 40), 85]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["names"].startswith("{0: 'person', 1: 'bicycle'")
    assert meta["source_weights_sha256"].startswith("dccea06f")


def test_mismatched_weights_are_refused(root, darknet_src, tmp_path):
    short = tmp_path / "short.weights"
    short.write_bytes((darknet_src / "yolov3-tiny.weights").read_bytes()[:-4096])
    r = subprocess.run([sys.executable, str(root / TOOL), str(darknet_src / "yolov3-tiny.cfg"), str(short),
                        str(darknet_src / "coco.names"), str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert r.returncode != 0 and "too short" in r.stderr
