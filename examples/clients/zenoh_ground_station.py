#!/usr/bin/env python3
"""Ground station for Kestrel's Zenoh output ([zenoh] in the daemon's config): print every drone's detections.

    zenoh_ground_station.py [--connect ENDPOINT ...]

With --connect (e.g. tcp/192.168.1.20:7447: a Zenoh router, or any peer the drones are connected to) it joins
there as a Zenoh client, and scouts for nothing else; without, it is a peer that finds the drones by multicast
scouting. Each drone puts one sample per frame on kestrel/<name>/detections; this prints one line per sample:
`<key> <seq> <label>:<score> ...`, best detection first, until Ctrl-C. The payload is decoded with
kestrel_client.py (beside this file): JSON as it is, the binary format (docs/protocol.md, without the socket's
length prefix) with class ids only (class<id>: the names are in the drone's hello, which answers
`session.get("kestrel/*/hello")`). Needs eclipse-zenoh (scripts/requirements.txt)."""
import json, os, signal, sys, zenoh
from kestrel_client import decode_binary, decode_json

client = {"mode": "client", "connect": {"endpoints": sys.argv[2:]}, "scouting": {"multicast": {"enabled": False}}}
conf = zenoh.Config.from_json5(json.dumps(client) if sys.argv[1:2] == ["--connect"] else "{}")
def show(sample):  # JSON payloads start with "{", binary ones with their type byte
    m = decode_json(p) if (p := sample.payload.to_bytes())[:1] == b"{" else decode_binary(p, [])
    print(sample.key_expr, m["seq"], *(f"{d['label']}:{d['score']:.3f}" for d in m["detections"]), flush=True)
subscriber = (session := zenoh.open(conf)).declare_subscriber("kestrel/*/detections", show)  # keep both
signal.signal(signal.SIGINT, lambda *_: os._exit(0))  # Ctrl-C: leave at once; the drones see the link close
signal.pause()
