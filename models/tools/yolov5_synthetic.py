#!/usr/bin/env python3
"""Write a synthetic YOLOv5n/s ONNX model (real YOLOv5 v6.x/v7.0 architecture, seeded random weights) for benchmarks.

The graph is what an Ultralytics YOLOv5 export of yolov5{n,s}.yaml looks like after batch norm is folded: every
Conv block is Conv2d (with bias) + SiLU (written as x * Sigmoid(x), opset 13 has no SiLU op), C3 / Bottleneck /
SPPF / nearest Upsample / Concat exactly as in models/common.py, and Detect decodes inside the graph as the export
does: xy = (sigmoid * 2 - 0.5 + grid) * stride, wh = (sigmoid * 2)^2 * anchor, objectness and class scores sigmoid.
Input `images` [1, 3, S, S] (RGB, 0..1); output `output0` [1, 3 * (S/8)^2 * 21 / 16, 85] ([1, 25200, 85] at 640).

The weights are random and detect nothing: the model is only for speed. They are drawn from numpy's
default_rng(seed) in a fixed order, so the same arguments always give byte-identical files. Each conv is He-normal;
its folded batch norm is computed the way a trained one is: the network is run in float64 on photo-like
calibration images (seeded colour 1/f noise) and every output channel is normalised to N(beta, gamma^2), with
gamma ~ U(0.75, 1.25) and beta ~ N(1, 0.1^2). The statistics are rounded coarsely before use, so no float noise in
the calibration can reach the weights. The positive beta keeps SiLU in its contracting range, so activations stay
O(1) through the whole depth on photos and on uniform noise alike (no saturation, no fp16 overflow). Detect biases
follow YOLOv5's _initialize_biases (objectness log(8 / (640 / stride)^2), classes log(0.6 / (nc - 0.99))); Detect
weights give the logits a spread of DETECT_LOGIT_STD, so objectness is mostly ~0.002 with a tail above 0.5:
tens to a few hundred rows clear a 0.25 score, a realistic load for NMS.

Usage: yolov5_synthetic.py {n,s} OUT.onnx [--size 640] [--seed 0] [--fp16]
"""
import argparse
import hashlib
import math
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_common import GraphBuilder, coco_names_meta, finish_model

VARIANTS = {"n": (0.33, 0.25), "s": (0.33, 0.50)}  # depth_multiple, width_multiple
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
# yolov5{n,s}.yaml (v6.0+): [from, number, module, args]
BACKBONE = [
    [-1, 1, "Conv", [64, 6, 2, 2]],  # 0-P1/2
    [-1, 1, "Conv", [128, 3, 2]],  # 1-P2/4
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],  # 3-P3/8
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],  # 5-P4/16
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],  # 7-P5/32
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],  # 9
]
HEAD = [
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],  # cat backbone P4
    [-1, 3, "C3", [512, False]],  # 13
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],  # cat backbone P3
    [-1, 3, "C3", [256, False]],  # 17 (P3/8-small)
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],  # cat head P4
    [-1, 3, "C3", [512, False]],  # 20 (P4/16-medium)
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],  # cat head P5
    [-1, 3, "C3", [1024, False]],  # 23 (P5/32-large)
    [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],  # Detect(P3, P4, P5)
]
COCO = [
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

BN_GAIN = (0.75, 1.25)  # folded-BN scale per output channel (pre-activation std), uniform in this range
BN_BETA = (1.0, 0.1)  # folded-BN shift per output channel (pre-activation mean): normal, mean and std
DETECT_LOGIT_STD = 2.0  # spread of the Detect logits around YOLOv5's initial biases
CALIB_SIZE = 320  # side of the calibration images the folded-BN statistics are measured on
CALIB_IMAGES = 2


def make_divisible(x, divisor):
    return math.ceil(x / divisor) * divisor


def round_mantissa(v, bits=6):
    """v (> 0) rounded to `bits` significant bits, exactly (frexp / ldexp): the last-bit noise of a float64
    calibration run (BLAS, SIMD exp) then cannot change any weight."""
    m, e = np.frexp(np.maximum(v, 1e-12))
    return np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e)


def calibration_images(seed, size):
    """Photo-like calibration batch [n, 3, size, size] in 0..1: colour 1/f noise, the spectrum of natural images."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the weights' stream does not depend on it
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    out = []
    for _ in range(CALIB_IMAGES):
        planes = []
        for _ in range(3):
            spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
            planes.append(np.fft.irfft2(spec, s=(size, size)))
        planes = np.stack(planes)
        planes = planes / planes.std(axis=(1, 2), keepdims=True)
        img = 0.8 * planes[0:1] + 0.35 * planes  # luminance shared by the channels, some colour
        img = img / img.std() * 0.25 + 0.45
        out.append(np.clip(img, 0.0, 1.0))
    return np.stack(out)


def np_conv(x, w, s, p):
    """float64 reference Conv2d (no bias), NCHW."""
    n, c, h, wd = x.shape
    co, _, k, _ = w.shape
    if k == 1 and s == 1 and p == 0:
        return np.einsum("oc,nchw->nohw", w.reshape(co, c), x, optimize=True)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    oh, ow = win.shape[2], win.shape[3]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k)
    return (cols @ w.reshape(co, -1).T).reshape(n, oh, ow, co).transpose(0, 3, 1, 2)


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_maxpool(x, k):
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3)).max(axis=(4, 5))


class T:
    """A feature map: tensor name in the graph, and its float64 value on the calibration batch."""

    def __init__(self, name, val):
        self.name, self.val = name, val

    @property
    def c(self):
        return self.val.shape[1]

    @property
    def h(self):
        return self.val.shape[2]


class Graph(GraphBuilder):
    """Builds the ONNX graph and, alongside, runs it in float64 on calibration images to fold BN statistics."""

    def __init__(self, dtype, seed):
        super().__init__(dtype)
        self.rng = np.random.default_rng(seed)
        self.params = 0

    def param(self, name, array):
        self.params += array.size
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=self.np_dtype), name))
        return name

    def conv2d(self, prefix, x, c2, k, s, p, std, mean):
        """Conv2d with He-normal weights, then the folded BN that makes each output channel ~ N(mean, std^2).

        The per-channel statistics are measured on the calibration batch and quantised before use, so the
        weights are a pure function of the seed (tiny float differences between BLAS builds cannot leak in)."""
        w = self.rng.standard_normal((c2, x.c, k, k)) * math.sqrt(2.0 / (x.c * k * k))
        y = np_conv(x.val, w, s, p)
        sd_q = round_mantissa(y.std(axis=(0, 2, 3)))
        mu_q = np.round(y.mean(axis=(0, 2, 3)) / sd_q * 64) / 64 * sd_q
        scale = std / sd_q
        w = w * scale.reshape(-1, 1, 1, 1)
        b = mean - mu_q * scale
        y = y * scale.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
        out = self.op("Conv", [x.name, self.param(f"{prefix}.weight", w), self.param(f"{prefix}.bias", b)],
                      stem=f"{prefix}_out", kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
        return out, y

    def conv(self, prefix, x, c2, k=1, s=1, p=None):
        """YOLOv5 Conv: Conv2d + BatchNorm2d (folded) + SiLU."""
        p = k // 2 if p is None else p
        gain = self.rng.uniform(BN_GAIN[0], BN_GAIN[1], c2)
        beta = self.rng.normal(BN_BETA[0], BN_BETA[1], c2)
        y, val = self.conv2d(f"{prefix}.conv", x, c2, k, s, p, gain, beta)
        y = self.op("Mul", [y, self.op("Sigmoid", [y])], stem=f"{prefix}_silu")
        return T(y, np_silu(val))

    def add(self, a, b):
        return T(self.op("Add", [a.name, b.name]), a.val + b.val)

    def concat(self, parts):
        return T(self.op("Concat", [p.name for p in parts], axis=1), np.concatenate([p.val for p in parts], axis=1))

    def bottleneck(self, prefix, x, c2, shortcut):
        y = self.conv(f"{prefix}.cv1", x, c2, 1, 1)
        y = self.conv(f"{prefix}.cv2", y, c2, 3, 1)
        return self.add(x, y) if shortcut and x.c == c2 else y

    def c3(self, prefix, x, c2, n, shortcut=True):
        c_ = int(c2 * 0.5)
        a = self.conv(f"{prefix}.cv1", x, c_, 1, 1)
        b = self.conv(f"{prefix}.cv2", x, c_, 1, 1)
        for i in range(n):
            a = self.bottleneck(f"{prefix}.m.{i}", a, c_, shortcut)
        return self.conv(f"{prefix}.cv3", self.concat([a, b]), c2, 1, 1)

    def sppf(self, prefix, x, c2, k):
        c_ = x.c // 2
        x = self.conv(f"{prefix}.cv1", x, c_, 1, 1)
        pools = [x]
        for _ in range(3):
            y = self.op("MaxPool", [pools[-1].name], kernel_shape=[k, k], strides=[1, 1], pads=[k // 2] * 4)
            pools.append(T(y, np_maxpool(pools[-1].val, k)))
        return self.conv(f"{prefix}.cv2", self.concat(pools), c2, 1, 1)

    def upsample(self, x, s):
        y = self.op("Resize", [x.name, "", self.const("scales", [1.0, 1.0, float(s), float(s)], np.float32)],
                    mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return T(y, x.val.repeat(s, axis=2).repeat(s, axis=3))

    def detect(self, prefix, xs, nc, anchors, strides, size):
        """Detect head with the export-time decode: rows [1, sum(na*ny*nx), 5+nc]."""
        na, no = len(anchors[0]) // 2, nc + 5
        rows = []
        for i, (x, stride) in enumerate(zip(xs, strides)):
            bias = np.zeros((na, no))
            bias[:, 4] = math.log(8 / (640 / stride) ** 2)  # obj (8 objects per 640 image)
            bias[:, 5:] = math.log(0.6 / (nc - 0.99))  # cls
            y, _ = self.conv2d(f"{prefix}.m.{i}", x, na * no, 1, 1, 0, DETECT_LOGIT_STD, bias.reshape(-1))
            ny = nx = size // stride
            t = self.op("Reshape", [y, self.const("shape", [1, na, no, ny, nx], np.int64)])
            t = self.op("Transpose", [t], perm=[0, 1, 3, 4, 2])
            t = self.op("Sigmoid", [t])
            parts = self.name("split")
            xy, wh, conf = f"{parts}_xy", f"{parts}_wh", f"{parts}_conf"
            self.nodes.append(helper.make_node("Split", [t, self.const("split", [2, 2, nc + 1], np.int64)],
                                               [xy, wh, conf], name=parts, axis=4))
            gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            grid = np.stack([gx, gy], axis=-1).reshape(1, 1, ny, nx, 2) - 0.5
            anchor_grid = np.asarray(anchors[i], dtype=np.float64).reshape(1, na, 1, 1, 2)
            two = self.const("two", 2.0)
            xy = self.op("Mul", [self.op("Add", [self.op("Mul", [xy, two]), self.const("grid", grid)]),
                                 self.const("stride", float(stride))])
            wh = self.op("Mul", [wh, two])
            wh = self.op("Mul", [self.op("Mul", [wh, wh]), self.const("anchor_grid", anchor_grid)])
            t = self.op("Concat", [xy, wh, conf], axis=4)
            rows.append(self.op("Reshape", [t, self.const("shape", [1, na * ny * nx, no], np.int64)]))
        return self.op("Concat", rows, out="output0", axis=1)


def build(variant, size, seed, fp16):
    gd, gw = VARIANTS[variant]
    nc = len(COCO)
    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    g = Graph(dtype, seed)
    x = T("images", calibration_images(seed, CALIB_SIZE))
    layers, out = [], None
    for i, (f, n, m, args) in enumerate(BACKBONE + HEAD):
        n = max(round(n * gd), 1) if n > 1 else n
        prefix = f"model.{i}"
        src = [x if j == -1 else layers[j] for j in ([f] if isinstance(f, int) else f)]
        if m in ("Conv", "C3", "SPPF"):
            c2 = make_divisible(args[0] * gw, 8)
            if m == "Conv":
                x = g.conv(prefix, src[0], c2, *args[1:])
            elif m == "C3":
                x = g.c3(prefix, src[0], c2, n, *args[1:])
            else:
                x = g.sppf(prefix, src[0], c2, args[1])
        elif m == "Upsample":
            x = g.upsample(src[0], args[1])
        elif m == "Concat":
            x = g.concat(src)
        elif m == "Detect":
            strides = [CALIB_SIZE // s.h for s in src]
            out = g.detect(prefix, src, nc, ANCHORS, strides, size)
        layers.append(x)
    assert strides == [8, 16, 32], strides

    meta = {
        "names": coco_names_meta(COCO),
        "imgsz": f"[{size}, {size}]",
        "stride": "32",
        "task": "detect",
        "description": f"Synthetic YOLOv5{variant} (v6.0+ architecture) with random weights (seed {seed}): "
                       "for speed benchmarks only, detects nothing",
        "seed": str(seed),
        "precision": "fp16" if fp16 else "fp32",
    }
    model, out_shape = finish_model(g.nodes, g.inits, f"yolov5{variant}_synthetic", "images", [1, 3, size, size], out,
                                    dtype, "kestrel-yolov5-synthetic", meta)
    rows = 3 * sum((size // s) ** 2 for s in (8, 16, 32))
    if out_shape != [1, rows, 5 + nc]:
        raise SystemExit(f"unexpected output shape {out_shape}")
    return model, out_shape, g.params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=640, help="square input size, a multiple of 32 (default 640)")
    ap.add_argument("--seed", type=int, default=0, help="numpy default_rng seed for the weights (default 0)")
    ap.add_argument("--fp16", action="store_true", help="float16 weights, activations, input and output")
    args = ap.parse_args()
    if args.size % 32 or args.size <= 0:
        raise SystemExit("--size must be a positive multiple of 32")
    if args.seed < 0:
        raise SystemExit("--seed must be >= 0")
    model, out_shape, params = build(args.variant, args.size, args.seed, args.fp16)
    data = model.SerializeToString(deterministic=True)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out}: yolov5{args.variant} synthetic, {params} params, input [1, 3, {args.size}, {args.size}], "
          f"output {out_shape}, {'fp16' if args.fp16 else 'fp32'}, seed {args.seed}, "
          f"sha256 {hashlib.sha256(data).hexdigest()}", file=sys.stderr)


if __name__ == "__main__":
    main()
