#!/usr/bin/env python3
"""Kestrel's pipeline beside the threaded Python pipeline people write today, on the same models, frames and
ONNX Runtime thread budget. Reports numbers and never judges them: it exits 0 whatever the speeds, and non-zero
only when something is broken (a missing file, a failing Kestrel run).

The Python side is the usual two-thread script: "prep" takes a frame (stamping its capture time), decodes the
JPEG with cv2.imdecode, letterboxes it (Ultralytics-style, pad 114), converts BGR→RGB, HWC→CHW, /255, and puts
it in a queue.Queue(maxsize=2); "infer" takes it, runs the session, decodes the YOLO output (objectness × class
score > 0.25), runs class-wise NMS (IoU 0.45, at most 300 boxes) and maps the boxes back to the source image.
Both sides use a CPU session with --threads intra-op threads, one inter-op thread and spinning off.

For each repetition and model, back to back: `kestrel bench --reps 1` (its own bare run and pipeline), Python
bare (session.run on one fixed prepared tensor), Python threaded. Ratios are taken within a repetition; cells
are median [min–max] over the repetitions. The first 3 frames of each pipeline run are not measured.

Run from anywhere (the full comparison: 5 repetitions of 60 frames, three models):
    .cache/venv/bin/python benches/python_threaded.py [--reps 5] [--n 60] [--model M]... [--threads 2]
        [--frames .cache/bench/1080p] [--json raw.json]

Columns:
    Kestrel pipeline / Kestrel bare       Kestrel's pipeline fps over its bare session.run fps
    Python threaded / Python bare         the Python pipeline's fps over bare Python session.run fps
    Kestrel pipeline / Python threaded    the two pipelines' fps: how many frames Kestrel publishes per Python one
    Kestrel bare / Python bare            bare inference fps of the two: the same ONNX Runtime work (Kestrel's
                                          bare run also decodes the output to candidates), so near 1
    age at infer p50 / p99 ms             a frame's age when its inference starts (capture → session.run),
                                          p50 and p99 over the measured frames of a run (freshness)
"""
import argparse
import json
import os
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reference"))
from yolo_reference import candidates, letterbox  # noqa: E402

MODELS = ["yolov3-tiny-416.onnx", "yolov5n-synthetic-640.onnx", "yolov5s-synthetic-640.onnx"]
KESTREL = ROOT / "target" / "release" / "kestrel"
CONF, IOU, MAX_DET, SKIP = 0.25, 0.45, 300, 3


def fail(msg):
    sys.exit(f"python_threaded: error: {msg}")


def make_session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def prepare(jpeg, h, w, dtype):
    img, geometry = letterbox(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), h, w)
    x = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))[None].astype(dtype) / dtype(255)
    return x, geometry


def postprocess(out, g):
    boxes, scores, classes = candidates(out, CONF)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores, classes, CONF, IOU, top_k=MAX_DET), dtype=int)
    b = (boxes[keep] - [g["left"], g["top"], g["left"], g["top"]]) / [g["sx"], g["sy"], g["sx"], g["sy"]]
    return np.clip(b, 0, [g["w"], g["h"], g["w"], g["h"]]), scores[keep], classes[keep]


def python_bare(session, x, n):
    feed = {session.get_inputs()[0].name: x}
    t = time.perf_counter()
    for _ in range(n):
        session.run(None, feed)
    return n / (time.perf_counter() - t)


def python_threaded(session, frames, n, h, w, dtype):
    """fps over n frames after the first SKIP, and the ages (ms) at inference start of those frames."""
    q, stop, name = queue.Queue(maxsize=2), threading.Event(), session.get_inputs()[0].name
    ages, done = [], []

    def prep():
        i = 0
        while not stop.is_set():
            captured = time.monotonic_ns()
            x, g = prepare(frames[i % len(frames)], h, w, dtype)
            q.put((captured, x, g))
            i += 1

    def infer():
        for _ in range(SKIP + n):
            captured, x, g = q.get()
            ages.append((time.monotonic_ns() - captured) / 1e6)
            postprocess(session.run(None, {name: x})[0], g)
            done.append(time.perf_counter())

    threads = [threading.Thread(target=prep, daemon=True), threading.Thread(target=infer, daemon=True)]
    for t in threads:
        t.start()
    threads[1].join()
    stop.set()
    while threads[0].is_alive():  # unblock a pending q.put
        try:
            q.get(timeout=0.05)
        except queue.Empty:
            pass
    return n / (done[-1] - done[SKIP - 1]), ages[SKIP:]


def kestrel_bench(model, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [str(KESTREL), "--log", "warn", "bench", "--model", str(model), "--frames", str(args.frames),
               "--reps", "1", "--n", str(args.n), "--threads", str(args.threads), "--json", str(out)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0 or not out.is_file():
            fail(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stderr.strip()}")
        row = json.loads(out.read_text())["rows"][0]
    keys = ["age_at_infer_p50_ms", "age_at_infer_p99_ms", "capture_to_publish_p50_ms", "capture_to_publish_p99_ms",
            "preprocess_ms"]
    return dict(bare_fps=row["bare_fps"]["median"], pipeline_fps=row["pipeline_fps"]["median"],
                **{k: row[k]["median"] for k in keys})


def spread(values, digits):
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", type=Path, help="ONNX model (repeatable; default: the three)")
    ap.add_argument("--frames", type=Path, default=ROOT / ".cache/bench/1080p", help="directory of JPEG frames")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--n", type=int, default=60, help="frames per measurement")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", type=Path, help="also write the raw per-repetition numbers here")
    args = ap.parse_args()
    if args.reps < 1 or args.n < 1 or args.threads < 1:
        fail("--reps, --n and --threads must be at least 1")
    models = [m.resolve() for m in args.model or [ROOT / "models" / m for m in MODELS]]
    args.frames = args.frames.resolve()
    for m in models:
        if not m.is_file():
            fail(f"no model {m}")
    files = sorted(p for p in args.frames.glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        fail(f"no .jpg frames in {args.frames} (scripts/setup.sh makes them)")
    frames = [np.fromfile(p, dtype=np.uint8) for p in files]
    for p, f in zip(files, frames):
        if cv2.imdecode(f, cv2.IMREAD_COLOR) is None:
            fail(f"cannot decode {p}")
    if not KESTREL.is_file():
        print("building target/release/kestrel", file=sys.stderr)
        if subprocess.run(["cargo", "build", "--release"], cwd=ROOT).returncode != 0:
            fail("cargo build --release failed")

    setups = {}
    for m in models:
        session = make_session(m, args.threads)
        inp = session.get_inputs()[0]
        h, w = inp.shape[2:]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        x, _ = prepare(frames[0], h, w, dtype)
        for _ in range(3):  # warm-up, as Kestrel's bench does
            session.run(None, {inp.name: x})
        setups[m] = (session, x, h, w, dtype)

    raw = {m.name: [] for m in models}
    for r in range(args.reps):
        for m in models:
            session, x, h, w, dtype = setups[m]
            k = kestrel_bench(m, args)
            bare = python_bare(session, x, args.n)
            fps, ages = python_threaded(session, frames, args.n, h, w, dtype)
            p50, p95, p99 = np.percentile(ages, [50, 95, 99])
            py = dict(bare_fps=bare, pipeline_fps=fps, age_at_infer_p50_ms=p50, age_at_infer_p95_ms=p95,
                      age_at_infer_p99_ms=p99)
            raw[m.name].append(dict(kestrel=k, python=py))
            print(f"rep {r + 1}/{args.reps} {m.name}: Kestrel bare {k['bare_fps']:.1f} pipeline "
                  f"{k['pipeline_fps']:.1f} fps | Python bare {bare:.1f} threaded {fps:.1f} fps", file=sys.stderr)

    print("| model | Kestrel pipeline / Kestrel bare | Python threaded / Python bare | Kestrel pipeline / Python "
          "threaded | Kestrel bare / Python bare | age at infer p50 / p99 ms: Kestrel | age at infer p50 / p99 ms: "
          "Python |")
    print("|---|---|---|---|---|---|---|")
    for name, reps in raw.items():
        col = lambda side, key: np.array([rep[side][key] for rep in reps])  # noqa: E731
        k_pipe, k_bare = col("kestrel", "pipeline_fps"), col("kestrel", "bare_fps")
        p_pipe, p_bare = col("python", "pipeline_fps"), col("python", "bare_fps")
        cells = [spread(c, 3) for c in (k_pipe / k_bare, p_pipe / p_bare, k_pipe / p_pipe, k_bare / p_bare)]
        cells += [" / ".join(spread(col(side, f"age_at_infer_{p}_ms"), 1) for p in ("p50", "p99"))
                  for side in ("kestrel", "python")]
        print(f"| {name} | {' | '.join(cells)} |")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    print(f"\nmedian [min–max] over {args.reps} interleaved repetitions of {args.n} frames; {cpu}, "
          f"{os.cpu_count()} cores; ONNX Runtime {ort.__version__} (Python); {args.threads} intra-op threads; "
          f"command: {shlex.join(sys.orig_argv)}")
    if args.json:
        args.json.write_text(json.dumps(dict(reps=args.reps, n=args.n, threads=args.threads, models=raw), indent=2))


if __name__ == "__main__":
    main()
