#!/usr/bin/env python3
"""Read Kestrel's detection socket (docs/protocol.md) and print one JSON object per message.

    kestrel_client.py [--socket PATH] [--format json|binary] [--file PATH] [--count N]

Standard library only. `--format` asks the server for JSON Lines (the usual default) or the binary
framing; `--file` reads a recorded stream in that format instead (a binary file starts directly with binary
frames). `--count N` stops after N `detections` messages. Detections are printed normalised (the same in both
formats): type, seq, capture_ns, width, height and detections with class_id, label, score, box and
angle_x/angle_y when present; other messages as they are.
"""
import argparse
import json
import socket
import struct
import sys

MAX_PAYLOAD = 4 << 20  # readers must accept frames up to 4 MiB
TYPES = {1: "hello", 2: "detections", 3: "status", 4: "missed", 5: "error", 6: "format"}


def f32(x):
    """The shortest decimal that is the same float32: what the JSON encoder writes, so both formats agree."""
    want = struct.pack("<f", x)
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack("<f", y) == want:
            return y
    return x


def detection(class_id, label, score, box, angles=None):
    d = {"class_id": class_id, "label": label, "score": f32(score), "box": [f32(v) for v in box]}
    if angles is not None:
        d["angle_x"], d["angle_y"] = f32(angles[0]), f32(angles[1])
    return d


def detections(seq, capture_ns, width, height, dets):
    return {"type": "detections", "seq": seq, "capture_ns": capture_ns, "width": width, "height": height,
            "detections": dets}


def decode_json(line):
    m = json.loads(line)
    if m.get("v", 1) != 1:
        sys.exit(f"unsupported protocol version {m['v']}")
    if m["type"] != "detections":
        return m
    dets = [detection(d["class_id"], d["label"], d["score"], d["box"],
                      (d["angle_x"], d["angle_y"]) if "angle_x" in d else None) for d in m["detections"]]
    return detections(m["seq"], m["capture_ns"], m["width"], m["height"], dets)


def decode_binary(p, labels):
    kind, version, h = struct.unpack_from("<BBH", p, 0)  # a payload too short: struct.error
    if version != 1:
        sys.exit(f"unsupported protocol version {version}")
    if kind != 2:
        return json.loads(p[h:]) if kind in TYPES else None  # JSON-carrying message, or unknown: skip
    r, count, seq, capture_ns = struct.unpack_from("<HHQQ", p, 4)
    width, height = struct.unpack_from("<II", p, 40)
    dets = []
    for i in range(count):  # record i starts at H + i*R; bytes beyond the known fields are ignored
        class_id, flags, score, x1, y1, x2, y2, ax, ay = struct.unpack_from("<HHfffffff", p, h + i * r)
        label = labels[class_id] if class_id < len(labels) else f"class{class_id}"
        dets.append(detection(class_id, label, score, (x1, y1, x2, y2), (ax, ay) if flags & 1 else None))
    return detections(seq, capture_ns, width, height, dets)


def read_exact(stream, n):
    data = stream.read(n)  # a buffered reader returns fewer than n bytes only at the end of the stream
    if len(data) < n:
        raise EOFError
    return data


def messages(stream, fmt=None):
    """Yield decoded messages. `fmt` is the framing the stream starts in (None: find out, as a server's
    default may be either: JSON starts with '{"ty', a binary frame with its length, below 4 MiB); it changes
    after a `format` message."""
    head = b""
    if fmt is None:
        head = stream.read(4)
        fmt = "json" if head == b'{"ty' else "binary"
    labels = []
    while True:
        if fmt == "json":
            line, head = head + stream.readline(), b""
            if not line:
                return
            m = decode_json(line)
        else:
            size, head = head + stream.read(4 - len(head)), b""
            if not size:
                return
            (n,) = struct.unpack("<I", size + read_exact(stream, 4 - len(size)))
            if n > MAX_PAYLOAD:
                sys.exit(f"binary frame of {n} bytes exceeds 4 MiB")
            m = decode_binary(read_exact(stream, n), labels)
        if m is None or m.get("type") not in TYPES.values():
            continue  # a message type this client does not know: skip it
        if m["type"] == "hello":
            labels = m["labels"]
        if m["type"] == "format":
            fmt = m["format"]  # this was the last message in the old framing
        yield m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/run/kestrel/detections.sock")
    ap.add_argument("--format", choices=["json", "binary"], default="json")
    ap.add_argument("--file", help="read a recorded stream in --format instead of the socket")
    ap.add_argument("--count", type=int, default=0, help="stop after N detections messages (0: never)")
    a = ap.parse_args()
    if a.file:
        stream, start = open(a.file, "rb"), a.format
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(a.socket)
        sock.sendall(b'{"format":"%s"}\n' % a.format.encode())  # ask for it, whatever the server's default
        stream, start = sock.makefile("rb"), None  # it starts in the server's default: messages() finds out
    seen = 0
    try:
        for m in messages(stream, start):
            print(json.dumps(m), flush=True)
            seen += m["type"] == "detections"
            if m["type"] == "error" or (a.count and seen >= a.count):
                break
    except (EOFError, struct.error):
        sys.exit("corrupt stream: it ended inside a frame, or a payload is shorter than its header says")


if __name__ == "__main__":
    main()
