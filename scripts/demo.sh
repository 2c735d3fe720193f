#!/usr/bin/env bash
# The demo: set everything up (first run: a few minutes), then detect objects on real photos.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
printf '\n== kestrel detect on Debian darknet sample photos (YOLOv3-tiny COCO, 416x416, CPU)\n' >&2
target/release/kestrel detect .cache/darknet/{person,dog,horses,eagle,giraffe}.jpg | python3 scripts/show_detections.py
printf '\nRaw JSON: target/release/kestrel detect IMAGE...   (see README.md)\n' >&2
