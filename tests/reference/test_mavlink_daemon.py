"""End to end: `kestrel run` with [intrinsics] and [mavlink] on the sample photos; an independent decoder
(pymavlink, tests/reference/mavlink_listen.py) on loopback receives LANDING_TARGET messages with a valid CRC
whose angles match the ones the daemon publishes for the same frames on its socket (and pinhole geometry
computed here from the box), and HEARTBEATs at 1 Hz."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daemon_sends_landing_targets_matching_its_detections(tmp_path, kestrel_bin):
    port = free_port()
    listener = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/reference/mavlink_listen.py"), "--port", str(port), "--seconds", "8"],
        stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().startswith("READY"), "listener did not start"
    fx, fy, cx, cy = 600.0, 600.0, 319.5, 239.5
    cfg = tmp_path / "k.toml"
    cfg.write_text(f"""
[source]
kind = "images"
path = "{ROOT}/.cache/darknet/person.jpg"
fps_hz = 4.0
[model]
path = "{ROOT}/models/yolov3-tiny-416.onnx"
[output]
kind = "file"
path = "{tmp_path}/out.jsonl"
[publish]
enabled = false
[intrinsics]
fx = {fx}
fy = {fy}
cx = {cx}
cy = {cy}
width = 640
height = 424
[mavlink]
enabled = true
endpoint = "udpout:127.0.0.1:{port}"
target_class = "dog"
target_num = 2
""")
    d = subprocess.Popen([str(kestrel_bin), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    d.send_signal(signal.SIGTERM)
    _, err = d.communicate(timeout=10)
    assert d.returncode == 0, err
    out, _ = listener.communicate(timeout=20)
    msgs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    summary = msgs[-1]
    assert summary["summary"] and summary["bad_messages"] == 0 and summary["receive_errors"] == 0, summary
    lts = [m for m in msgs[:-1] if m["name"] == "LANDING_TARGET"]
    hbs = [m for m in msgs[:-1] if m["name"] == "HEARTBEAT"]
    assert all(m["crc_ok"] for m in lts + hbs)
    frames = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert len(frames) >= 8 and len(lts) == len(frames), (len(frames), len(lts))
    assert len(hbs) >= 4, len(hbs)
    by_time = {f["capture_ns"] // 1000: f for f in frames}
    for m in lts:
        f = m["fields"]
        frame = by_time[f["time_usec"]]
        dog = next(d for d in frame["detections"] if d["label"] == "dog")  # best dog: first in score order
        assert (f["target_num"], f["frame"], f["distance"]) == (2, 12, 0.0)
        assert math.isclose(f["angle_x"], dog["angle_x"], abs_tol=1e-6)
        assert math.isclose(f["angle_y"], dog["angle_y"], abs_tol=1e-6)
        # pinhole geometry from the box, computed here
        x1, y1, x2, y2 = dog["box"]
        u, v = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5
        assert math.isclose(f["angle_x"], math.atan((u - cx) / fx), abs_tol=1e-5)
        assert math.isclose(f["angle_y"], math.atan((v - cy) / fy), abs_tol=1e-5)
        w = math.atan((x2 - 0.5 - cx) / fx) - math.atan((x1 - 0.5 - cx) / fx)
        assert math.isclose(f["size_x"], w, rel_tol=1e-4, abs_tol=1e-5)
