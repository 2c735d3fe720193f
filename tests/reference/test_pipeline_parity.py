"""The streaming pipeline's preprocessing (libjpeg-turbo, DCT-scaled decoding, allocation-free bilinear
letterbox) against the independent reference (tests/reference/yolo_reference.py: OpenCV full-size decode +
cv2.resize INTER_LINEAR, as Ultralytics), on 1920x1080 JPEG frames made from Debian's darknet photos.

- `scaled_jpeg_decode = false` (full-size decode, the same resampling kernel): as `kestrel detect`, every
  detection above conf + 0.05 has a same-class partner with IoU > 0.95, boxes within 2 px (1080p frames:
  4.6 image pixels per model pixel) and scores within 0.03.
- `scaled_jpeg_decode = true` (the default; decode at 1/4 for a 416 model): the tensor is low-passed in the
  DCT domain instead of sampled by a 2x2 bilinear kernel at a 4.6x reduction, which changes what the model
  sees more than rounding does. Measured on these six frames: boxes still overlap with IoU >= 0.86, and
  scores move by up to 0.09, except one horse in horses.jpg (a photo where this model wavers between horse
  and cow) at 0.38 instead of 0.60. (An INTER_AREA reference, closer in spirit, is not closer in numbers.)
  Bound: every detection above conf + 0.15 has a same-class partner with IoU > 0.8 and score within 0.25.
  Use `scaled_jpeg_decode = false` where Ultralytics-identical preprocessing matters more than CPU.
"""
import glob
import json
import subprocess
import sys

import cv2
import onnxruntime as ort
import pytest

from conftest import ROOT, need

sys.path.insert(0, str(ROOT / "tests/reference"))
import yolo_reference as ref  # noqa: E402

CONF = 0.25


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def frames():
    need(ROOT / ".cache/bench/1080p", "1080p frames")
    return sorted(glob.glob(str(ROOT / ".cache/bench/1080p/*.jpg")))


@pytest.fixture(scope="module")
def reference(frames, model416):
    s = ort.InferenceSession(str(model416), providers=["CPUExecutionProvider"])
    names = list(eval(s.get_modelmeta().custom_metadata_map["names"]).values())
    return [ref.detect(s, cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB), CONF, 0.45, 300, names) for f in frames]


def run_pipeline(kestrel_bin, frames, tmp_path, scaled):
    cfg = tmp_path / f"scaled-{scaled}.toml"
    cfg.write_text(
        f'[source]\nkind = "images"\npath = "{ROOT}/.cache/bench/1080p"\nfps_hz = 0.0\nloop_frames = false\n'
        f'[model]\npath = "{ROOT}/models/yolov3-tiny-416.onnx"\n'
        f'[pipeline]\nscaled_jpeg_decode = {"true" if scaled else "false"}\n[metrics]\nlog_interval_ms = 0\n'
    )
    r = subprocess.run([str(kestrel_bin), "run", "--no-socket", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, len(frames) + 1)), "every frame, in order"
    assert all((x["width"], x["height"]) == (1920, 1080) for x in lines)
    return [x["detections"] for x in lines]


@pytest.mark.parametrize("scaled,margin,min_iou,score_tol,box_tol", [
    (False, 0.05, 0.95, 0.03, 2.0),
    (True, 0.15, 0.80, 0.25, None),
])
def test_pipeline_agrees_with_reference(kestrel_bin, frames, reference, tmp_path, scaled, margin, min_iou, score_tol, box_tol):
    got_all = run_pipeline(kestrel_bin, frames, tmp_path, scaled)
    matched = 0
    for got, want in zip(got_all, reference):
        for a_side, b_side in ((got, want), (want, got)):
            for a in a_side:
                if a["score"] <= CONF + margin:
                    continue
                partners = [b for b in b_side if b["class_id"] == a["class_id"]]
                assert partners, f"{a} has no same-class partner in {b_side}"
                b = max(partners, key=lambda b: iou(a["box"], b["box"]))
                assert iou(a["box"], b["box"]) > min_iou, (a, b)
                assert abs(a["score"] - b["score"]) <= score_tol, (a, b)
                if box_tol is not None:
                    assert max(abs(u - v) for u, v in zip(a["box"], b["box"])) <= box_tol, (a, b)
                matched += 1
    assert matched >= 10, f"only {matched} confident detections compared"
