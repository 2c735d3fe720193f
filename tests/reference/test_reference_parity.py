"""kestrel detect agrees with an independent reference detector (tests/reference/yolo_reference.py: numpy,
Python onnxruntime and OpenCV, written from Ultralytics' definitions) on the same model and real photos.

Three comparisons:
1. Post-processing, strict: the reference's YOLO decoding, NMS and box mapping run on the exact tensor kestrel
   fed the model (kestrel detect --save-input). Same classes in the same order, boxes within 1 px, scores
   within 1e-3 (measured: 1e-4 px and 3e-8).
2. Preprocessing: kestrel's tensor vs the reference's (cv2.imread + cv2.resize INTER_LINEAR + pad 114).
   Same geometry, padding identical, pixels within 1 grey level, mean difference below 0.3 levels.
   Both decode JPEG with libjpeg-turbo (same pixels) and resize with the same bilinear kernel (half-pixel
   centres, 2x2 support), but with different fixed-point rounding (fast_image_resize vs OpenCV/IPP), so
   they cannot be bit-identical. Measured on Debian's darknet photos: max 1 level, mean 0.07-0.12.
3. End to end, with the looser bound that (2) forces: this model is sensitive to such +/-1-level noise;
   measured score changes reach 0.017 and box changes 0.44 px (0.019 and 0.97 px when kestrel still decoded
   with the image crate, 3-4 levels off), and a detection within a few hundredths of the
   threshold can appear on one side only. So: every detection scoring above conf + 0.05 on either side has a
   same-class partner on the other with IoU > 0.95, boxes within 1.5 px and scores within 0.03.
"""
import json
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from conftest import PHOTOS, ROOT, photo

sys.path.insert(0, str(ROOT / "tests/reference"))
import yolo_reference as ref  # noqa: E402

CONF, IOU, MAX_DET = 0.25, 0.45, 300


@pytest.fixture(scope="module")
def kestrel_run(kestrel_bin, model416, tmp_path_factory):
    tensors = tmp_path_factory.mktemp("tensors")
    paths = [str(photo(n)) for n in PHOTOS]
    r = subprocess.run([str(kestrel_bin), "detect", "--model", str(model416), "--save-input", str(tensors), *paths],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    reports = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rep["image"] for rep in reports] == paths
    return dict(zip(PHOTOS, reports)), tensors


@pytest.fixture(scope="module")
def session(model416):
    s = ort.InferenceSession(str(model416), providers=["CPUExecutionProvider"])
    names = list(eval(s.get_modelmeta().custom_metadata_map["names"]).values())
    return s, names


def rgb_of(name):
    return cv2.cvtColor(cv2.imread(str(photo(name))), cv2.COLOR_BGR2RGB)


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", PHOTOS)
def test_postprocessing_matches_strictly(name, kestrel_run, session):
    reports, tensors = kestrel_run
    s, names = session
    rgb = rgb_of(name)
    _, geometry = ref.preprocess(s, rgb)
    x = np.load(tensors / f"{name.rsplit('.', 1)[0]}.npy")
    want = ref.detect_tensor(s, x, geometry, CONF, IOU, MAX_DET, names)
    got = reports[name]["detections"]
    assert [d["label"] for d in got] == [d["label"] for d in want]
    for g, w in zip(got, want):
        assert g["class_id"] == w["class_id"]
        assert abs(g["score"] - w["score"]) <= 1e-3, (g, w)
        assert max(abs(a - b) for a, b in zip(g["box"], w["box"])) <= 1.0, (g, w)


@pytest.mark.parametrize("name", PHOTOS)
def test_preprocessing_matches_the_ultralytics_letterbox(name, kestrel_run, session):
    reports, tensors = kestrel_run
    s, _ = session
    want, g = ref.preprocess(s, rgb_of(name))
    got = np.load(tensors / f"{name.rsplit('.', 1)[0]}.npy")
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (reports[name]["width"], reports[name]["height"]) == (g["w"], g["h"])
    diff = np.abs(got - want) * 255
    # Padding: same rows/columns, exactly grey 114.
    pad = np.ones(got.shape[2:], bool)
    new_h, new_w = round(g["h"] * g["sy"]), round(g["w"] * g["sx"])
    pad[g["top"]:g["top"] + new_h, g["left"]:g["left"] + new_w] = False
    assert np.all(got[0][:, pad] == np.float32(114 / 255)) and np.all(want[0][:, pad] == np.float32(114 / 255))
    assert diff.max() <= 1.0 + 1e-3, f"max difference {diff.max():.2f} grey levels"
    assert diff.mean() < 0.3, f"mean difference {diff.mean():.3f} grey levels"


@pytest.mark.parametrize("name", PHOTOS)
def test_end_to_end_agrees_within_preprocessing_noise(name, kestrel_run, session):
    reports, _ = kestrel_run
    s, names = session
    want = ref.detect(s, rgb_of(name), CONF, IOU, MAX_DET, names)
    got = reports[name]["detections"]
    for a_side, b_side in ((got, want), (want, got)):
        for a in a_side:
            if a["score"] <= CONF + 0.05:
                continue
            partners = [b for b in b_side if b["class_id"] == a["class_id"]]
            assert partners, f"{a} has no same-class partner in {b_side}"
            b = max(partners, key=lambda b: iou(a["box"], b["box"]))
            assert iou(a["box"], b["box"]) > 0.95, (a, b)
            assert max(abs(u - v) for u, v in zip(a["box"], b["box"])) <= 1.5, (a, b)
            assert abs(a["score"] - b["score"]) <= 0.03, (a, b)
