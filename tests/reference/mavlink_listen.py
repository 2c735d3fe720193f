#!/usr/bin/env python3
"""Independent MAVLink decoder for tests/inprocess/mavlink.rs (not a pytest file).

Binds UDP 127.0.0.1:PORT, prints `READY <port>` once listening, then decodes every datagram with pymavlink's
own parser (common dialect, MAVLink 1 and 2 frames) for SECONDS seconds and prints one JSON object per line:

  {"t_ns": CLOCK_MONOTONIC ns at receipt, "name": "LANDING_TARGET", "id": 149, "sysid": 1, "compid": 191,
   "seq": 0, "wire": 2 (MAVLink version of the frame), "crc_ok": true, "fields": {...}}

pymavlink checks each frame's CRC (with the message's CRC_EXTRA) and its length; a frame that fails is printed
as {"name": "BAD_DATA", "crc_ok": false, "reason": ..., "bytes": n}. The last line is a summary:

  {"summary": true, "datagrams": n, "bytes": n, "messages": n, "bad_messages": n, "receive_errors": n,
   "leftover_bytes": n}

where receive_errors is pymavlink's own count of bad frames and garbage bytes it skipped.
"""

import argparse
import json
import os
import socket
import sys
import time

os.environ.setdefault("MAVLINK20", "1")
from pymavlink.dialects.v20 import common as mavlink  # noqa: E402


def jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return list(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    sock.settimeout(0.05)
    mav = mavlink.MAVLink(None, srcSystem=255, srcComponent=0)
    mav.robust_parsing = True  # bad frames come back as MAVLink_bad_data instead of raising

    out = sys.stdout
    print(f"READY {args.port}", file=out, flush=True)
    end = time.monotonic() + args.seconds
    datagrams = nbytes = messages = bad = 0
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        t_ns = time.monotonic_ns()
        datagrams += 1
        nbytes += len(data)
        for m in mav.parse_buffer(data) or []:
            if isinstance(m, mavlink.MAVLink_bad_data):
                bad += 1
                rec = {"t_ns": t_ns, "name": "BAD_DATA", "crc_ok": False, "reason": m.reason, "bytes": len(m.data)}
            else:
                messages += 1
                hdr = m.get_header()
                fields = {k: jsonable(v) for k, v in m.to_dict().items() if k != "mavpackettype"}
                rec = {
                    "t_ns": t_ns,
                    "name": m.get_type(),
                    "id": m.get_msgId(),
                    "sysid": m.get_srcSystem(),
                    "compid": m.get_srcComponent(),
                    "seq": m.get_seq(),
                    "wire": 2 if m.get_msgbuf()[0] == mavlink.PROTOCOL_MARKER_V2 else 1,
                    "payload_len": hdr.mlen,
                    "crc_ok": True,
                    "fields": fields,
                }
            print(json.dumps(rec), file=out, flush=True)
    summary = {
        "summary": True,
        "datagrams": datagrams,
        "bytes": nbytes,
        "messages": messages,
        "bad_messages": bad,
        "receive_errors": mav.total_receive_errors,
        "leftover_bytes": len(mav.buf) - mav.buf_index,
    }
    print(json.dumps(summary), file=out, flush=True)


if __name__ == "__main__":
    main()
