"""The example clients of the detection socket (examples/clients/: Python, standard library only; C99, binary
format) against docs/protocol.md: the golden vectors (tests/golden/stream.{bin,jsonl}), forward-compatible and
corrupt input, and a live daemon serving examples/images.toml in both formats at once."""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT, need

PY_CLIENT = ROOT / "examples/clients/kestrel_client.py"
C_CLIENT = ROOT / "examples/clients/kestrel_client.c"
GOLDEN_BIN = ROOT / "tests/golden/stream.bin"
GOLDEN_JSONL = ROOT / "tests/golden/stream.jsonl"


def py_client(*args, timeout=30, check=True):
    r = subprocess.run([sys.executable, str(need(PY_CLIENT, "Python client")), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"kestrel_client.py {args}: rc {r.returncode}\n{r.stderr}"
    return r


def py_messages(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="session")
def c_client(tmp_path_factory):
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc) on PATH: install gcc or clang")
    exe = tmp_path_factory.mktemp("cclient") / "kestrel_client"
    r = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                        str(need(C_CLIENT, "C client"))], capture_output=True, text=True)
    assert r.returncode == 0, f"cc failed:\n{r.stderr}"
    return exe


def run_c(exe, *args, timeout=30):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


C_DET = re.compile(r"(\S+) (\d+\.\d{3}) \[([-\d.]+) ([-\d.]+) ([-\d.]+) ([-\d.]+)\]( ax=([-\d.]+) ay=([-\d.]+))?$")


def c_detections(line):
    """`seq=41 t=… 1280x720 n=2 | person 0.875 [412.5 200.0 530.2 610.0] ax=0.1250 ay=-0.2500 | …` → dict."""
    head, *dets = line.split(" | ")
    m = re.fullmatch(r"seq=(\d+) t=(\d+) (\d+)x(\d+) n=(\d+)", head)
    assert m, f"bad detections line: {line!r}"
    seq, t, w, h, n = map(int, m.groups())
    out = []
    for d in dets:
        dm = C_DET.fullmatch(d)
        assert dm, f"bad detection {d!r} in {line!r}"
        out.append({"label": dm[1], "score": float(dm[2]), "box": [float(dm[i]) for i in range(3, 7)],
                    "angles": (float(dm[8]), float(dm[9])) if dm[7] else None})
    assert len(out) == n, line
    return {"seq": seq, "capture_ns": t, "width": w, "height": h, "detections": out}


# ------------------------------------------------------------------------------------------- golden vectors

def test_python_client_decodes_the_golden_vectors_identically_in_both_formats():
    binary = py_messages(py_client("--file", need(GOLDEN_BIN, "golden vector"), "--format", "binary").stdout)
    jsonl = py_messages(py_client("--file", need(GOLDEN_JSONL, "golden vector"), "--format", "json").stdout)
    assert [m["type"] for m in binary] == ["hello", "detections", "detections", "detections", "missed", "status"]
    assert len(binary) == len(jsonl)
    for b, j in zip(binary, jsonl):
        if b["type"] == "hello":  # the only difference: each hello names the format it is sent in
            assert (b.pop("format"), j.pop("format")) == ("binary", "json")
        assert b == j
    hello, d41, d42, d43, missed, status = binary
    assert hello["labels"] == ["person", "car", "dog"]
    assert [d41["seq"], d42["seq"], d43["seq"]] == [41, 42, 43]
    assert (d41["capture_ns"], d41["width"], d41["height"]) == (81236207890123, 1280, 720)
    assert d41["detections"] == [
        {"class_id": 0, "label": "person", "score": 0.875, "box": [412.5, 200.0, 530.25, 610.0],
         "angle_x": 0.125, "angle_y": -0.25},
        {"class_id": 2, "label": "dog", "score": 0.5, "box": [0.0, 360.0, 64.0, 720.0],
         "angle_x": -0.5, "angle_y": 0.0625},
    ]
    assert d42["detections"] == [
        {"class_id": 0, "label": "person", "score": 0.875, "box": [412.5, 200.0, 530.25, 610.0]}]
    assert d43["detections"] == []
    assert missed == {"type": "missed", "v": 1, "count": 3}
    assert (status["health"], status["reason"]) == ("camera_lost", "camera lost 2.4 s ago; reconnecting")


def test_c_client_decodes_the_golden_binary_stream(c_client):
    r = run_c(c_client, "-f", need(GOLDEN_BIN, "golden vector"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6, r.stdout
    assert lines[0] == "hello labels=3 model=models/yolov3-tiny-416.onnx"
    d41, d42, d43 = (c_detections(l) for l in lines[1:4])
    assert lines[1].startswith("seq=41 t=81236207890123 1280x720 n=2 | person 0.875 [412.5 200.0 530.")
    assert [d41["seq"], d42["seq"], d43["seq"]] == [41, 42, 43]
    person, dog = d41["detections"]
    assert person == {"label": "person", "score": 0.875, "box": pytest.approx([412.5, 200.0, 530.25, 610.0], abs=0.051),
                      "angles": (0.125, -0.25)}
    assert dog == {"label": "dog", "score": 0.5, "box": [0.0, 360.0, 64.0, 720.0], "angles": (-0.5, 0.0625)}
    assert d42["detections"] == [{"label": "person", "score": 0.875,
                                  "box": pytest.approx([412.5, 200.0, 530.25, 610.0], abs=0.051), "angles": None}]
    assert d43["detections"] == [] and lines[3].endswith("n=0")
    assert lines[4] == "missed count=3"
    assert lines[5] == 'status health=camera_lost reason="camera lost 2.4 s ago; reconnecting"'
    assert run_c(c_client, "-f", GOLDEN_BIN, "-n", "2").stdout.splitlines() == lines[:3]


# --------------------------------------------------------------------- newer servers and corrupt streams

def frames(data):
    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        out.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return out


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


def newer_stream():
    """The golden stream as a later v1 server might send it: a frame of an unknown type before each message,
    detections with a longer header (H = 76) and longer records (R = 40) carrying unknown bytes."""
    out = b""
    for p in frames(GOLDEN_BIN.read_bytes()):
        out += frame(bytes([9, 1, 4, 0]) + b"future")
        if p[0] == 2:
            h, r, count = struct.unpack_from("<HHH", p, 2)
            recs = [p[h + i * r:h + (i + 1) * r] + b"\xee" * 8 for i in range(count)]
            p = p[:2] + struct.pack("<HH", h + 8, r + 8) + p[6:h] + b"\xee" * 8 + b"".join(recs)
        out += frame(p)
    return out


def test_clients_skip_unknown_types_and_use_header_and_record_lengths(tmp_path, c_client):
    newer = tmp_path / "newer.bin"
    newer.write_bytes(newer_stream())
    assert py_client("--file", newer, "--format", "binary").stdout == \
        py_client("--file", GOLDEN_BIN, "--format", "binary").stdout
    assert run_c(c_client, "-f", newer).stdout == run_c(c_client, "-f", GOLDEN_BIN).stdout
    jsonl = tmp_path / "newer.jsonl"
    jsonl.write_text('{"type":"telemetry","v":1,"x":[1,2]}\n' + GOLDEN_JSONL.read_text())
    assert py_client("--file", jsonl).stdout == py_client("--file", GOLDEN_JSONL).stdout


def test_corrupt_or_truncated_streams_end_with_an_error_not_a_crash(tmp_path, c_client):
    golden = GOLDEN_BIN.read_bytes()
    first = frames(golden)[0]
    cases = {
        "huge_length": struct.pack("<I", 0xFFFFFFFF) + golden[4:],
        "over_4mib": frame(first) + struct.pack("<I", (4 << 20) + 1) + b"\0" * 64,
        "truncated_frame": golden[:len(first) + 4 + 40],
        "truncated_length": golden[:len(first) + 4 + 2],
        "records_beyond_payload": frame(first) + frame(bytes([2, 1, 68, 0, 32, 0, 200, 0]) + b"\0" * 60),
    }
    for name, data in cases.items():
        f = tmp_path / f"{name}.bin"
        f.write_bytes(data)
        r = run_c(c_client, "-f", f)
        assert r.returncode == 1 and r.stderr.startswith("kestrel_client: "), (name, r.returncode, r.stderr)
        p = py_client("--file", f, "--format", "binary", check=False)
        assert p.returncode == 1, (name, p.returncode, p.stderr)
    # a length of exactly 4 MiB is legal (and this one is a frame of an unknown type: skipped)
    f = tmp_path / "big.bin"
    f.write_bytes(golden + frame(bytes([9, 1, 4, 0]) + b"\0" * ((4 << 20) - 4)) + golden)
    r = run_c(c_client, "-f", f)
    assert r.returncode == 0 and r.stdout == run_c(c_client, "-f", GOLDEN_BIN).stdout * 2, r.stderr
    assert py_client("--file", f, "--format", "binary").stdout == \
        py_client("--file", GOLDEN_BIN, "--format", "binary").stdout * 2


# ------------------------------------------------------------------------------------------- live daemon

FRAMES = 14  # two loops of the 7 images in .cache/darknet at 10 fps


def serve_clients(kestrel_bin, c_client, tmp_path, config, frames):
    """Start `kestrel run` on a socket, run the three clients at once until each has `frames` detections
    messages, SIGTERM the daemon (it must exit 0 and remove its socket) and return the clients' stdout."""
    need(ROOT / ".cache/darknet/person.jpg", "darknet photos")
    sock = tmp_path / "k.sock"
    log = open(tmp_path / "daemon.log", "w+")
    daemon = subprocess.Popen(
        [str(kestrel_bin), "run", "--config", str(config), "--socket", str(sock), "--fps", "10"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})

    def daemon_log():
        log.seek(0)
        return log.read()[-3000:]

    try:
        t0 = time.monotonic()
        while not sock.exists():
            assert daemon.poll() is None, f"daemon exited ({daemon.returncode}) before its socket:\n{daemon_log()}"
            assert time.monotonic() - t0 < 20, f"no socket at {sock} after 20 s:\n{daemon_log()}"
            time.sleep(0.05)
        py = [sys.executable, str(PY_CLIENT), "--socket", str(sock), "--count", str(frames)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        clients = {  # all at once, on one daemon
            "py-json": subprocess.Popen(py + ["--format", "json"], **pipes),
            "py-binary": subprocess.Popen(py + ["--format", "binary"], **pipes),
            "c": subprocess.Popen([str(c_client), "-s", str(sock), "-n", str(frames)], **pipes),
        }
        out = {}
        for name, p in clients.items():
            try:
                stdout, stderr = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                pytest.fail(f"{name} client got no {frames} detections in 60 s:\n{daemon_log()}")
            assert p.returncode == 0, f"{name} client: rc {p.returncode}\n{stderr}\n{daemon_log()}"
            out[name] = stdout
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            pytest.fail("daemon did not exit within 20 s of SIGTERM")
    assert rc == 0, f"daemon exit code {rc} after SIGTERM:\n{daemon_log()}"
    assert not sock.exists(), "socket file left behind after SIGTERM"
    return out


def test_live_daemon_serves_all_clients_in_both_formats(kestrel_bin, model416, c_client, tmp_path):
    out = serve_clients(kestrel_bin, c_client, tmp_path, ROOT / "examples/images.toml", FRAMES)

    # Python, JSON Lines: hello with the model's 80 COCO labels, then detections (and status) messages.
    msgs = {fmt: py_messages(out[f"py-{fmt}"]) for fmt in ("json", "binary")}
    hello = msgs["json"][0]
    assert hello["type"] == "hello" and hello["format"] == "json", hello
    coco = hello["labels"]
    assert len(coco) == 80 and coco[:3] == ["person", "bicycle", "car"] and coco[16:18] == ["dog", "horse"]
    # Python, binary: maybe a JSON hello (the server drops what it had queued but not started when the
    # switch comes), the `format` switch, then a binary hello.
    types = [m["type"] for m in msgs["binary"]]
    switch = types.index("format")
    assert set(types[:switch]) <= {"hello"} and msgs["binary"][switch]["format"] == "binary", types
    assert msgs["binary"][switch + 1]["type"] == "hello" and msgs["binary"][switch + 1]["format"] == "binary"
    assert msgs["binary"][switch + 1]["labels"] == coco

    def check(name, dets):
        """≥ FRAMES detections messages, seq strictly increasing, plausible detections, the photos' animals."""
        assert len(dets) >= FRAMES, f"{name}: {len(dets)} detections messages"
        seqs = [d["seq"] for d in dets]
        assert seqs == sorted(set(seqs)), f"{name}: seq not strictly increasing: {seqs}"
        seen = set()
        for d in dets:
            assert d["width"] > 0 and d["height"] > 0 and d["capture_ns"] > 0
            for x in d["detections"]:
                assert x["label"] in coco, f"{name}: label {x['label']!r}"
                assert 0 < x["score"] <= 1, f"{name}: score {x['score']}"
                x1, y1, x2, y2 = x["box"]
                assert -1 <= x1 <= x2 <= d["width"] + 1 and -1 <= y1 <= y2 <= d["height"] + 1, (name, x)
                seen.add(x["label"])
        # person.jpg: person, dog, horse; dog.jpg: dog, bicycle, …
        assert {"person", "dog", "horse"} <= seen, f"{name}: saw only {sorted(seen)}"
        return {d["seq"]: d for d in dets}

    by_fmt = {fmt: check(f"py-{fmt}", [m for m in msgs[fmt] if m["type"] == "detections"]) for fmt in msgs}
    c_lines = out["c"].splitlines()
    assert c_lines[0].startswith("hello labels=80 model="), c_lines[0]
    c = check("c", [c_detections(l) for l in c_lines if l.startswith("seq=")])

    # The same frame decodes to the same values in both formats and in both languages.
    common = by_fmt["json"].keys() & by_fmt["binary"].keys()
    assert common, "the two Python clients saw no frame in common"
    for seq in common:
        assert by_fmt["json"][seq] == by_fmt["binary"][seq], f"seq {seq} differs between JSON and binary"
    common = by_fmt["json"].keys() & c.keys()
    assert common, "the Python and C clients saw no frame in common"
    for seq in common:
        j, k = by_fmt["json"][seq], c[seq]
        assert (j["capture_ns"], j["width"], j["height"]) == (k["capture_ns"], k["width"], k["height"])
        assert [x["label"] for x in j["detections"]] == [x["label"] for x in k["detections"]]
        for x, y in zip(j["detections"], k["detections"]):
            assert y["score"] == pytest.approx(x["score"], abs=0.0006) and y["angles"] is None
            assert y["box"] == pytest.approx(x["box"], abs=0.051)


def test_live_daemon_with_binary_by_default(kestrel_bin, model416, c_client, tmp_path):
    """`[publish] format = "binary"`: new connections start in binary; the clients find that out from the first
    bytes, the JSON client asks for JSON and gets the switch (in binary), the binary ones get no switch."""
    config = tmp_path / "binary.toml"
    config.write_text(
        f'[source]\nkind = "images"\npath = "{ROOT}/.cache/darknet"\nfps_hz = 10.0\n'
        f'[model]\npath = "{ROOT}/models/yolov3-tiny-416.onnx"\n[output]\nkind = "none"\n'
        '[publish]\nformat = "binary"\n')
    out = serve_clients(kestrel_bin, c_client, tmp_path, config, 3)
    as_json = py_messages(out["py-json"])
    types = [m["type"] for m in as_json]
    switch = types.index("format")
    assert set(types[:switch]) <= {"hello"} and as_json[switch]["format"] == "json", types
    assert as_json[switch + 1]["type"] == "hello" and as_json[switch + 1]["format"] == "json"
    binary = py_messages(out["py-binary"])
    assert binary[0]["type"] == "hello" and binary[0]["format"] == "binary"
    assert "format" not in [m["type"] for m in binary]
    for msgs in (as_json, binary):
        assert len([m for m in msgs if m["type"] == "detections"]) == 3
    lines = out["c"].splitlines()
    assert lines[0].startswith("hello labels=80 ") and sum(line.startswith("seq=") for line in lines) == 3
