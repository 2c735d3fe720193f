#!/usr/bin/env python3
"""Convert a Darknet YOLOv3(-tiny) cfg + weights into an ONNX detector with the YOLOv5 output layout.

Output: one tensor `output0` of shape [1, N, 5 + nc]: rows (cx, cy, w, h) in input pixels, objectness and nc class
probabilities, all post-sigmoid (score = objectness * class probability). Rows are ordered head by head (in cfg
order), then anchor, then grid row, then grid column, exactly as an Ultralytics YOLOv5 export orders them.

The conversion is deterministic: the same cfg, weights, size and precision always give byte-identical ONNX.
Batch norm is folded into the convolutions in float64 (Darknet's formula: (x - mean) / (sqrt(var) + 1e-6)).

Usage: darknet_to_onnx.py CFG WEIGHTS NAMES OUT.onnx [--size 416] [--fp16]
"""
import argparse
import hashlib
import sys

import numpy as np
from onnx import TensorProto, helper

from onnx_common import GraphBuilder, coco_names_meta, finish_model


def parse_cfg(path):
    sections = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("["):
                sections.append({"type": line.strip("[]").strip()})
            else:
                key, value = line.split("=", 1)
                sections[-1][key.strip()] = value.strip()
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise SystemExit(f"{path}: first section must be [net]")
    return sections[0], sections[1:]


class Weights:
    """Sequential reader of a Darknet .weights file."""

    def __init__(self, path):
        data = open(path, "rb").read()
        major, minor, _revision = np.frombuffer(data[:12], dtype="<i4")
        seen_bytes = 8 if major * 10 + minor >= 2 else 4
        self.buf = np.frombuffer(data[12 + seen_bytes :], dtype="<f4")
        self.pos = 0

    def take(self, n):
        if self.pos + n > self.buf.size:
            raise SystemExit("weights file too short for this cfg")
        out = self.buf[self.pos : self.pos + n].astype(np.float64)
        self.pos += n
        return out

    def check_consumed(self):
        if self.pos != self.buf.size:
            raise SystemExit(f"weights file has {self.buf.size - self.pos} unread floats: cfg and weights disagree")


def yolo_head(g, x, sec, ny, nx, stride, nc):
    """Decode one Darknet [yolo] head to rows [1, na*ny*nx, 5+nc] in the YOLOv5 layout."""
    anchors = np.array([float(v) for v in sec["anchors"].split(",")]).reshape(-1, 2)
    mask = [int(v) for v in sec["mask"].split(",")]
    na, no = len(mask), 5 + nc
    # [1, na*no, ny, nx] -> [1, na, ny, nx, no]
    t = g.op("Reshape", [x, g.const("shape", [1, na, no, ny, nx], np.int64)])
    t = g.op("Transpose", [t], perm=[0, 1, 3, 4, 2])
    xy = g.op("Slice", [t, g.const("s", [0], np.int64), g.const("e", [2], np.int64), g.const("a", [4], np.int64)])
    wh = g.op("Slice", [t, g.const("s", [2], np.int64), g.const("e", [4], np.int64), g.const("a", [4], np.int64)])
    sc = g.op("Slice", [t, g.const("s", [4], np.int64), g.const("e", [no], np.int64), g.const("a", [4], np.int64)])
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    grid = np.stack([gx, gy], axis=-1).reshape(1, 1, ny, nx, 2) * float(stride)
    xy = g.op("Add", [g.op("Mul", [g.op("Sigmoid", [xy]), g.const("stride", [float(stride)])]), g.const("grid", grid)])
    anchor_grid = anchors[mask].reshape(1, na, 1, 1, 2)
    wh = g.op("Mul", [g.op("Exp", [wh]), g.const("anchors", anchor_grid)])
    sc = g.op("Sigmoid", [sc])
    rows = g.op("Concat", [xy, wh, sc], axis=4)
    return g.op("Reshape", [rows, g.const("shape", [1, na * ny * nx, no], np.int64)])


def convert(cfg_path, weights_path, names, size, fp16):
    net, sections = parse_cfg(cfg_path)
    weights = Weights(weights_path)
    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    g = GraphBuilder(dtype)
    nc = len(names)

    x, c, h, w = "images", int(net.get("channels", 3)), size, size
    outputs = []  # (tensor name, channels, h, w) per layer index
    heads = []
    for sec in sections:
        kind = sec["type"]
        if kind == "convolutional":
            filters, k = int(sec["filters"]), int(sec["size"])
            stride = int(sec.get("stride", 1))
            pad = k // 2 if int(sec.get("pad", 0)) else int(sec.get("padding", 0))
            if int(sec.get("batch_normalize", 0)):
                beta, gamma = weights.take(filters), weights.take(filters)
                mean, var = weights.take(filters), weights.take(filters)
                wt = weights.take(filters * c * k * k).reshape(filters, c, k, k)
                scale = gamma / (np.sqrt(var) + 1e-6)
                wt = wt * scale[:, None, None, None]
                bias = beta - mean * scale
            else:
                bias = weights.take(filters)
                wt = weights.take(filters * c * k * k).reshape(filters, c, k, k)
            x = g.op(
                "Conv",
                [x, g.const("w", wt), g.const("b", bias)],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
            act = sec.get("activation", "linear")
            if act == "leaky":
                x = g.op("LeakyRelu", [x], alpha=0.1)
            elif act != "linear":
                raise SystemExit(f"unsupported activation {act}")
            c, h, w = filters, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif kind == "maxpool":
            k, stride = int(sec["size"]), int(sec["stride"])
            padding = int(sec.get("padding", k - 1))
            # Darknet pads (padding // 2) on top/left and the rest on bottom/right, with -inf.
            lo, hi = padding // 2, padding - padding // 2
            oh, ow = (h + padding - k) // stride + 1, (w + padding - k) // stride + 1
            x = g.op("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[lo, lo, hi, hi])
            h, w = oh, ow
        elif kind == "upsample":
            s = int(sec["stride"])
            x = g.op(
                "Resize",
                [x, "", g.const("scales", [1.0, 1.0, float(s), float(s)], np.float32)],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
            h, w = h * s, w * s
        elif kind == "route":
            idx = [int(v) for v in sec["layers"].split(",")]
            idx = [i if i >= 0 else len(outputs) + i for i in idx]
            parts = [outputs[i] for i in idx]
            x = parts[0][0] if len(parts) == 1 else g.op("Concat", [p[0] for p in parts], axis=1)
            c, h, w = sum(p[1] for p in parts), parts[0][2], parts[0][3]
        elif kind == "yolo":
            if int(sec["classes"]) != nc:
                raise SystemExit(f"cfg says {sec['classes']} classes, names file has {nc}")
            heads.append(yolo_head(g, x, sec, h, w, size // h, nc))
        else:
            raise SystemExit(f"unsupported Darknet layer [{kind}]")
        outputs.append((x, c, h, w))
    weights.check_consumed()

    out = g.op("Concat", heads, stem="concat", axis=1)
    g.nodes.append(helper.make_node("Identity", [out], ["output0"], name="output0"))
    meta = {
        "names": coco_names_meta(names),
        "imgsz": f"[{size}, {size}]",
        "stride": "32",
        "task": "detect",
        "description": "YOLOv3-tiny COCO (official Darknet weights), YOLOv5 output layout",
        "source_weights_sha256": hashlib.sha256(open(weights_path, "rb").read()).hexdigest(),
        "precision": "fp16" if fp16 else "fp32",
    }
    model, out_shape = finish_model(g.nodes, g.inits, "yolov3_tiny_darknet", "images", [1, 3, size, size], "output0",
                                    dtype, "kestrel-darknet-to-onnx", meta)
    if len(out_shape) != 3 or out_shape[0] != 1 or out_shape[2] != 5 + nc:
        raise SystemExit(f"unexpected output shape {out_shape}")
    return model, out_shape


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cfg")
    ap.add_argument("weights")
    ap.add_argument("names")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=416, help="square input size, a multiple of 32 (default 416)")
    ap.add_argument("--fp16", action="store_true", help="float16 weights, activations, input and output")
    args = ap.parse_args()
    if args.size % 32:
        raise SystemExit("--size must be a multiple of 32")
    names = [n.strip() for n in open(args.names, encoding="utf-8") if n.strip()]
    model, out_shape = convert(args.cfg, args.weights, names, args.size, args.fp16)
    data = model.SerializeToString(deterministic=True)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out}: input [1, 3, {args.size}, {args.size}], output {out_shape}, "
          f"{'fp16' if args.fp16 else 'fp32'}, sha256 {hashlib.sha256(data).hexdigest()}", file=sys.stderr)


if __name__ == "__main__":
    main()
