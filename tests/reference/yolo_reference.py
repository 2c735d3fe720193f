#!/usr/bin/env python3
"""Independent reference detector: numpy + onnxruntime (Python) + OpenCV, written from Ultralytics' definitions.

Shares no code with kestrel. Letterbox follows ultralytics.data.augment.LetterBox (auto=False, scaleup=True,
center=True: r = min(H/h, W/w), new = round(w*r), round(h*r), cv2.resize INTER_LINEAR, top/left =
round(d/2 - 0.1), pad 114), RGB, /255, CHW. Decoding follows ultralytics.utils.ops.non_max_suppression
(YOLOv5 rows: obj > conf, score = obj*cls, best class, score > conf; YOLOv8 columns: best class score > conf),
greedy class-wise NMS (torchvision semantics: suppress IoU > iou), max_det. Boxes are mapped back with the
scale and padding the letterbox actually applied (Ultralytics' scale_boxes recomputes them from the unrounded
gain; that can differ by one model pixel) and clipped.

usage: yolo_reference.py MODEL IMAGE... [--conf 0.25] [--iou 0.45] [--max-det 300] [--decoder cv2|pixels.npy]
Prints one JSON object per image, like `kestrel detect`.
"""
import argparse
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort


def letterbox(rgb, dst_h, dst_w):
    h, w = rgb.shape[:2]
    r = min(dst_h / h, dst_w / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    geometry = dict(sx=new_w / w, sy=new_h / h, left=left, top=top, w=w, h=h)
    return out, geometry


def candidates(out, conf):
    """Returns (boxes xyxy, scores, classes) above conf from a [1,N,5+nc] or [1,4+nc,N] output."""
    out = out[0].astype(np.float32)
    if out.shape[0] > out.shape[1]:  # YOLOv5: rows
        obj = out[:, 4]
        out = out[obj > conf]
        cls = out[:, 5:] * out[:, 4:5]
    else:  # YOLOv8: columns
        out = out.T
        cls = out[:, 4:]
    best = cls.argmax(1)
    score = cls[np.arange(len(cls)), best]
    keep = score > conf
    xywh, score, best = out[keep, :4], score[keep], best[keep]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    return boxes, score, best


def iou_one_to_many(b, others):
    x1 = np.maximum(b[0], others[:, 0]); y1 = np.maximum(b[1], others[:, 1])
    x2 = np.minimum(b[2], others[:, 2]); y2 = np.minimum(b[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
    return inter / (area(b) + area(others) - inter)


def nms(boxes, scores, classes, iou, max_det):
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order:
        same = [k for k in kept if classes[k] == classes[i]]
        if not same or iou_one_to_many(boxes[i], boxes[same]).max() <= iou:
            kept.append(i)
        if len(kept) == max_det:
            break
    return kept


def preprocess(session, rgb):
    """Letterboxed model input [1, 3, H, W] in the model's precision, and the letterbox geometry."""
    inp = session.get_inputs()[0]
    _, _, dst_h, dst_w = inp.shape
    img, g = letterbox(rgb, dst_h, dst_w)
    x = img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    if inp.type == "tensor(float16)":
        x = x.astype(np.float16)
    return x, g


def detect(session, rgb, conf, iou, max_det, names):
    x, g = preprocess(session, rgb)
    return detect_tensor(session, x, g, conf, iou, max_det, names)


def detect_tensor(session, x, g, conf, iou, max_det, names):
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    boxes, scores, classes = candidates(out, conf)
    dets = []
    for k in nms(boxes, scores, classes, iou, max_det):
        x1, y1, x2, y2 = boxes[k]
        bx = [(x1 - g["left"]) / g["sx"], (y1 - g["top"]) / g["sy"], (x2 - g["left"]) / g["sx"], (y2 - g["top"]) / g["sy"]]
        bx = [float(np.clip(v, 0, g["w"] if i % 2 == 0 else g["h"])) for i, v in enumerate(bx)]
        c = int(classes[k])
        dets.append(dict(class_id=c, label=names[c] if c < len(names) else f"class{c}", score=float(scores[k]), box=bx))
    return dets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--max-det", type=int, default=300)
    args = ap.parse_args()
    so = ort.SessionOptions()
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    names = list(eval(meta["names"]).values()) if "names" in meta else []  # Ultralytics writes a dict literal
    for path in args.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            print(json.dumps(dict(image=path, error="cannot decode")))
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets = detect(session, rgb, args.conf, args.iou, args.max_det, names)
        print(json.dumps(dict(image=path, width=rgb.shape[1], height=rgb.shape[0], detections=dets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
