"""End to end: `kestrel run` with [intrinsics] and [mavlink] on the sample photos. The daemon sends to a UDP port
of this test's, which keeps every datagram and when it came; then an independent decoder (pymavlink,
tests/reference/mavlink_listen.py) gets them byte for byte and must find LANDING_TARGET messages with a valid CRC
whose angles match the ones the daemon publishes for the same frames on its socket (and pinhole geometry computed
here from the box), and HEARTBEATs at 1 Hz for as long as the MAVLink sink lived.

The run lasts until enough has arrived, however long the daemon's start-up (ONNX Runtime, the model, the self-test
and warm-up inferences) takes on this host; the heartbeats expected are counted from the sink's own lifetime."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from conftest import ROOT, free_port

HEARTBEAT, LANDING_TARGET = 0, 149
HEARTBEAT_HZ = 1.0  # [mavlink] heartbeat_hz, the default


def msg_id(datagram):
    """The message id of the MAVLink frame a datagram carries (the sink sends one frame per datagram), or None.
    Only to know when enough has arrived: the decoding that is checked is pymavlink's."""
    if len(datagram) >= 10 and datagram[0] == 0xFD:  # MAVLink 2
        return int.from_bytes(datagram[7:10], "little")
    if len(datagram) >= 6 and datagram[0] == 0xFE:  # MAVLink 1
        return datagram[5]
    return None


class Inbox:
    """The datagrams sent to a UDP port, each with its CLOCK_MONOTONIC arrival time, gathered by a thread."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.got = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if self.done.is_set():  # nothing left queued
                    return
                continue
            t_ns = time.monotonic_ns()
            with self.lock:
                self.got.append((t_ns, data))

    def count(self, mid):
        with self.lock:
            return sum(1 for _, d in self.got if msg_id(d) == mid)

    def close(self):
        """Stop once nothing is queued any more; returns [(t_ns, datagram)] in arrival order."""
        self.done.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the UDP reader did not stop"
        self.sock.close()
        return self.got


def decode(datagrams):
    """Hand the datagrams, in order, to mavlink_listen.py; returns its messages and its summary."""
    port = free_port(kind=socket.SOCK_DGRAM)
    # It listens for 3 s after READY; the datagrams are sent at once and take it milliseconds to decode.
    listener = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/reference/mavlink_listen.py"), "--port", str(port), "--seconds", "3"],
        stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().startswith("READY"), "listener did not start"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
    out, _ = listener.communicate(timeout=60)
    assert listener.returncode == 0, out
    msgs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return msgs[:-1], msgs[-1]


def test_daemon_sends_landing_targets_matching_its_detections(tmp_path, kestrel_bin):
    inbox = Inbox()
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
endpoint = "udpout:127.0.0.1:{inbox.port}"
target_class = "dog"
target_num = 2
""")
    d = subprocess.Popen([str(kestrel_bin), "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, RUST_LOG="warn,kestrel=info"))
    log = []
    drain = threading.Thread(target=lambda: [log.append(l) for l in d.stderr], daemon=True)
    drain.start()
    # At least 8 frames (person.jpg has a dog in each: one LANDING_TARGET per frame) and 4 heartbeats. The
    # deadline is a hang guard only.
    deadline = time.monotonic() + 300
    while inbox.count(LANDING_TARGET) < 8 or inbox.count(HEARTBEAT) < 4:
        if d.poll() is not None:
            drain.join(timeout=10)
            raise AssertionError(f"daemon exited ({d.returncode}) before enough was sent:\n{''.join(log)}")
        if time.monotonic() > deadline:
            d.kill()
            d.wait()
            drain.join(timeout=10)
            raise AssertionError(f"{inbox.count(LANDING_TARGET)} landing targets, {inbox.count(HEARTBEAT)} "
                                 f"heartbeats in 300 s:\n{''.join(log)}")
        time.sleep(0.05)
    term_ns = time.monotonic_ns()
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=60)
    exit_ns = time.monotonic_ns()
    drain.join(timeout=10)
    err = "".join(log)
    assert d.returncode == 0, err
    received = inbox.close()

    msgs, summary = decode(received)
    assert summary["summary"] and summary["bad_messages"] == 0 and summary["receive_errors"] == 0, summary
    assert summary["datagrams"] == len(received) and summary["leftover_bytes"] == 0, (summary, len(received))
    lts = [m for m in msgs if m["name"] == "LANDING_TARGET"]
    hbs = [m for m in msgs if m["name"] == "HEARTBEAT"]
    assert all(m["crc_ok"] for m in lts + hbs)
    assert len(lts) + len(hbs) == len(msgs), [m["name"] for m in msgs]
    frames = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert len(frames) >= 8 and len(lts) == len(frames), (len(frames), len(lts))

    # Heartbeats: the first as the sink starts, then one per period until it is dropped, which is after the
    # SIGTERM and before the exit; ±1 for where the ends fall.
    hb_ns = [t for t, dgram in received if msg_id(dgram) == HEARTBEAT]
    assert len(hb_ns) == len(hbs) >= 4, (len(hb_ns), len(hbs))
    at_least = (term_ns - hb_ns[0]) / 1e9
    at_most = (exit_ns - hb_ns[0]) / 1e9
    lo, hi = math.floor(at_least * HEARTBEAT_HZ), math.floor(at_most * HEARTBEAT_HZ) + 2
    assert lo <= len(hbs) <= hi, (
        f"{len(hbs)} heartbeats from a sink alive {at_least:.2f}..{at_most:.2f} s at {HEARTBEAT_HZ} Hz")
    gaps = [(b - a) / 1e9 for a, b in zip(hb_ns, hb_ns[1:])]
    assert all(abs(g - 1 / HEARTBEAT_HZ) < 0.25 for g in gaps), f"heartbeat gaps {gaps}"

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
