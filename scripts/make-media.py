#!/usr/bin/env python3
"""Make the demo clip and the benchmark frames from Debian's darknet photos (run by scripts/setup.sh).

- .cache/demo/clip.mjpeg: a short MJPEG stream (concatenated JPEGs, as MJPEG cameras send), 960x540, made by
  panning and zooming across each photo (motion, so detections move from frame to frame).
- .cache/bench/1080p/*.jpg: each photo scaled and centre-cropped to 1920x1080, JPEG quality 90 (the
  benchmark's default frames; upscaled photos are smoother than camera frames, so they decode a little faster).
Deterministic; idempotent (skips outputs that exist).
"""
import os
import sys

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ["person.jpg", "dog.jpg", "horses.jpg", "eagle.jpg", "giraffe.jpg", "kite.jpg"]


def photo(name):
    for d in ("/usr/share/darknet/data", os.path.join(ROOT, ".cache/darknet")):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return cv2.imread(p)
    sys.exit(f"photo {name} not found: run scripts/setup.sh")


def cover(img, w, h):
    """Scale to cover w x h, then centre-crop."""
    s = max(w / img.shape[1], h / img.shape[0])
    r = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_LINEAR)
    y, x = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return r[y:y + h, x:x + w]


def clip(path, w=960, h=540, frames_per_photo=45):
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        for name in PHOTOS[:5]:
            base = cover(photo(name), w, h)
            for t in range(frames_per_photo):
                a = t / (frames_per_photo - 1)
                zoom = 1.0 + 0.25 * a  # slow zoom in while panning
                cw, ch = w / zoom, h / zoom
                x0, y0 = (w - cw) * a, (h - ch) * (0.5 - 0.5 * np.cos(np.pi * a)) * 0.5
                m = np.array([[zoom, 0, -x0 * zoom], [0, zoom, -y0 * zoom]], dtype=np.float64)
                frame = cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
                assert ok
                out.write(jpg.tobytes())
    os.replace(tmp, path)


def bench_frames(d):
    os.makedirs(d, exist_ok=True)
    for i, name in enumerate(PHOTOS):
        p = os.path.join(d, f"{i:02d}-{name}")
        if not os.path.exists(p):
            cv2.imwrite(p + ".tmp.jpg", cover(photo(name), 1920, 1080), [cv2.IMWRITE_JPEG_QUALITY, 90])
            os.replace(p + ".tmp.jpg", p)


def main():
    demo = os.path.join(ROOT, ".cache/demo")
    os.makedirs(demo, exist_ok=True)
    if not os.path.exists(os.path.join(demo, "clip.mjpeg")):
        clip(os.path.join(demo, "clip.mjpeg"))
    bench_frames(os.path.join(ROOT, ".cache/bench/1080p"))
    print("demo clip and benchmark frames ready", file=sys.stderr)


if __name__ == "__main__":
    main()
