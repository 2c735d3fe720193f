"""kestrel evaluate's COCO mAP agrees with pycocotools' COCOeval (iouType bbox, the reference implementation
of the metric) on the same truths and detections, to 1e-3, headline and per class.

`kestrel evaluate --json` prints every image's truths and detections exactly as it evaluated them; those are
handed to COCOeval. Three kinds of truth:
1. a reference model: the FP16 model against the FP32 model's detections scoring at least 0.25;
2. a COCO instances file written here, with COCO's own 91-id categories and names (so some names differ from
   Darknet's: `motorcycle`, `tv`, ...), made from the FP32 model's detections perturbed (boxes shifted by
   various amounts, some dropped, some relabelled, spurious ones added) so that the mAP is well below 1.
   COCOeval reads that file itself, so this also checks kestrel's category mapping and box conversion;
3. the same truths as YOLO label files: the same mAP as (2).
"""
import json
import random
import subprocess

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import PHOTOS, ROOT, need, photo

NAMES = PHOTOS + ["kite.jpg", "scream.jpg"]
TOL = 1e-3

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]
COCO_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
CATEGORIES = [{"id": i, "name": n, "supercategory": ""} for i, n in zip(COCO_IDS, COCO_NAMES)]


@pytest.fixture(scope="module")
def photos():
    return [str(photo(n)) for n in NAMES]


@pytest.fixture(scope="module")
def fp16():
    return need(ROOT / "models/yolov3-tiny-416-fp16.onnx", "FP16 model")


def kestrel(kestrel_bin, *args, ok=True):
    r = subprocess.run([str(kestrel_bin), *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def evaluate(kestrel_bin, *args):
    return json.loads(kestrel(kestrel_bin, "evaluate", "--json", *args).stdout)


def xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def coco_gt(dataset):
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    return gt


def cocoeval(gt, report, image_id, category_id):
    """COCOeval on `gt` and the detections kestrel evaluated: (AP@.5, AP@.5:.95, {class_id: (ap50, ap)})."""
    dets = [{"image_id": image_id[im["image"]], "category_id": category_id(d["class_id"]), "bbox": xywh(d["box"]),
             "score": d["score"]}
            for im in report["per_image"] for d in im["detections"]]
    e = COCOeval(gt, gt.loadRes(dets), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    precision = e.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 100
    per_class = {}
    for c in report["per_class"]:
        k = e.params.catIds.index(category_id(c["class_id"]))
        per_class[c["class_id"]] = (precision[0, :, k].mean(), precision[:, :, k].mean())
    return e.stats[1], e.stats[0], per_class


def assert_agrees(report, want):
    print("kestrel", report["map50"], report["map50_95"], "pycocotools", want[0], want[1])
    ap50, ap, per_class = want
    assert abs(report["map50"] - ap50) <= TOL, (report["map50"], ap50)
    assert abs(report["map50_95"] - ap) <= TOL, (report["map50_95"], ap)
    assert set(per_class) == {c["class_id"] for c in report["per_class"]}
    for c in report["per_class"]:
        w50, w = per_class[c["class_id"]]
        assert abs(c["ap50"] - w50) <= TOL and abs(c["ap50_95"] - w) <= TOL, (c, w50, w)


@pytest.fixture(scope="module")
def against_reference(kestrel_bin, model416, fp16, photos, tmp_path_factory):
    drawn = tmp_path_factory.mktemp("annotated")
    report = evaluate(kestrel_bin, "--model", fp16, "--reference", model416, "--annotate", drawn, *photos)
    return report, drawn


def agrees_with_reference_truth(report):
    """COCOeval with the truths kestrel took from the reference model as the ground truth."""
    images, anns = [], []
    for i, im in enumerate(report["per_image"], 1):
        images.append({"id": i, "file_name": im["image"], "width": im["width"], "height": im["height"]})
        for t in im["truths"]:
            bb = xywh(t["box"])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": t["class_id"] + 1, "bbox": bb,
                         "area": bb[2] * bb[3], "iscrowd": 0})
    categories = [{"id": c + 1, "name": str(c)} for c in range(80)]
    gt = coco_gt({"images": images, "annotations": anns, "categories": categories})
    want = cocoeval(gt, report, {im["image"]: i for i, im in enumerate(report["per_image"], 1)}, lambda c: c + 1)
    assert_agrees(report, want)


def test_reference_truth_agrees_with_pycocotools(against_reference):
    report, _ = against_reference
    assert [im["image"] for im in report["per_image"]] == [str(photo(n)) for n in NAMES]
    assert report["images"] == len(NAMES)
    assert report["truths"] == sum(len(im["truths"]) for im in report["per_image"]) > 10
    assert all(t["score"] >= 0.25 for im in report["per_image"] for t in im["truths"])
    # Low-confidence detections (conf 0.001) are evaluated too, not only the confident ones.
    assert min(d["score"] for im in report["per_image"] for d in im["detections"]) < 0.01
    agrees_with_reference_truth(report)
    # FP16 against FP32: nearly the same detections.
    assert report["map50"] > 0.8
    assert report["matched_mean_iou"] > 0.95
    assert 0 < report["mean_abs_delta_score"] < 0.02


def test_every_reference_detection_as_truth_agrees_with_pycocotools(kestrel_bin, model416, fp16, photos):
    # Down to score 0.001 the reference's boxes are many, overlapping and uncertain: greedy matching among
    # close truths comes into play.
    report = evaluate(kestrel_bin, "--model", fp16, "--reference", model416, "--truth-score", "0.001", *photos)
    assert report["truths"] > 200
    agrees_with_reference_truth(report)


def test_annotated_images_show_both_models(against_reference):
    _, drawn = against_reference
    for name in NAMES:
        png = drawn / (name.rsplit(".", 1)[0] + ".png")
        img = cv2.imread(str(png))
        assert img is not None, png
        assert img.shape == cv2.imread(str(photo(name))).shape
    # The dog photo has confident detections: both colours appear (BGR), as does the legend's white.
    img = cv2.imread(str(drawn / "dog.png"))
    for bgr in [(0, 230, 0), (255, 0, 255), (255, 255, 255)]:
        assert np.all(img == bgr, axis=2).sum() > 50, bgr


@pytest.fixture(scope="module")
def perturbed_labels(kestrel_bin, model416, photos, tmp_path_factory):
    """A COCO instances file and the same truths as YOLO label files, from FP32 detections perturbed."""
    r = kestrel(kestrel_bin, "detect", "--model", model416, *photos)
    reports = [json.loads(line) for line in r.stdout.splitlines()]
    rng = random.Random(20240607)
    seen = sorted({d["class_id"] for rep in reports for d in rep["detections"]})
    images, anns, truths = [], [], {}
    for i, rep in enumerate(reports, 1):
        name = rep["image"].rsplit("/", 1)[-1]
        images.append({"id": i, "file_name": f"val/{name}", "width": rep["width"], "height": rep["height"]})
        boxes = []
        for d in rep["detections"]:
            x1, y1, x2, y2 = d["box"]
            w, h = x2 - x1, y2 - y1
            cls, roll = d["class_id"], rng.random()
            if roll < 0.1:
                continue  # dropped: the detection becomes a false positive
            if roll < 0.2:
                cls = rng.choice([c for c in seen if c != cls])  # relabelled: no match across classes
            shift = rng.choice([0.0, 0.0, 0.0, 0.02, 0.05, 0.1, 0.15, 0.3])
            dx, dy = shift * w * rng.choice([-1, 1]), shift * h * rng.uniform(-1, 1)
            boxes.append((cls, [x1 + dx, y1 + dy, w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)]))
        # A missed object of a class the image has: lowers that class's recall.
        W, H = rep["width"], rep["height"]
        missed = rng.choice(rep["detections"])["class_id"] if rep["detections"] else 0
        boxes.append((missed, [rng.uniform(0, W / 2), rng.uniform(0, H / 2), W / 5, H / 5]))
        truths[rep["image"]] = []
        for cls, bb in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": COCO_IDS[cls], "bbox": bb,
                         "area": bb[2] * bb[3], "iscrowd": 0})
            truths[rep["image"]].append((cls, bb))
    root = tmp_path_factory.mktemp("labels")
    coco = root / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    yolo = root / "yolo"
    yolo.mkdir()
    for rep in reports:
        W, H = rep["width"], rep["height"]
        lines = [f"{c} {(x + w / 2) / W!r} {(y + h / 2) / H!r} {w / W!r} {h / H!r}"
                 for c, (x, y, w, h) in truths[rep["image"]]]
        (yolo / (rep["image"].rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".txt")).write_text("\n".join(lines) + "\n")
    return coco, yolo, truths, {im["file_name"].rsplit("/", 1)[-1]: im["id"] for im in images}


@pytest.fixture(scope="module")
def against_coco(kestrel_bin, model416, photos, perturbed_labels):
    coco, _, _, _ = perturbed_labels
    return evaluate(kestrel_bin, "--model", model416, "--labels", coco, *photos)


def test_coco_labels_agree_with_pycocotools(against_coco, perturbed_labels):
    report = against_coco
    coco, _, truths, ids = perturbed_labels
    # kestrel read the file's truths: COCO ids and names mapped back to the model's classes, boxes to x1y1x2y2.
    for im in report["per_image"]:
        want = truths[im["image"]]
        assert [t["class_id"] for t in im["truths"]] == [c for c, _ in want]
        for t, (_, bb) in zip(im["truths"], want):
            assert np.allclose(xywh(t["box"]), bb, atol=1e-3)
            assert t["score"] is None
    gt = COCO(str(coco))
    want = cocoeval(gt, report, {im["image"]: ids[im["image"].rsplit("/", 1)[-1]] for im in report["per_image"]},
                    lambda c: COCO_IDS[c])
    assert_agrees(report, want)
    # Meaningful: far from perfect, far from nothing.
    assert 0.05 < report["map50_95"] < report["map50"] < 0.9, (report["map50"], report["map50_95"])
    assert report["mean_abs_delta_score"] == 0  # labels have no score


def test_yolo_labels_give_the_same_map(kestrel_bin, model416, photos, perturbed_labels, against_coco):
    _, yolo, _, _ = perturbed_labels
    report = evaluate(kestrel_bin, "--model", model416, "--labels", yolo, *photos)
    assert report["truths"] == against_coco["truths"]
    assert abs(report["map50"] - against_coco["map50"]) <= TOL
    assert abs(report["map50_95"] - against_coco["map50_95"]) <= TOL


def test_human_table(kestrel_bin, model416, fp16, photos):
    out = kestrel(kestrel_bin, "evaluate", "--model", fp16, "--reference", model416, *photos[:2]).stdout
    for text in ["mAP@0.5 ", "mAP@0.5:0.95", "matched mean IoU", "AP@0.5:0.95", "dog"]:
        assert text in out, out


def test_usage_and_unreadable_images(kestrel_bin, model416, fp16, tmp_path):
    both = kestrel(kestrel_bin, "evaluate", "--model", fp16, "--reference", model416, "--labels", tmp_path,
                   str(photo("dog.jpg")), ok=False)
    assert both.returncode == 2, both.stderr
    neither = kestrel(kestrel_bin, "evaluate", "--model", fp16, str(photo("dog.jpg")), ok=False)
    assert neither.returncode == 2, neither.stderr
    missing = tmp_path / "missing.jpg"
    r = kestrel(kestrel_bin, "evaluate", "--model", fp16, "--reference", model416, str(photo("dog.jpg")), missing,
                ok=False)
    assert r.returncode == 1, r.stderr
    assert str(missing) in r.stderr
