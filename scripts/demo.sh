#!/usr/bin/env bash
# The demo: set everything up (first run: a few minutes), then run the detector daemon on the bundled clip
# (an MJPEG stream made from real photos, with motion) and show detections streaming with live fps.
# Ctrl-C stops it (exit 0); otherwise it stops after one pass of the clip.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
printf '\n== kestrel run --config examples/kestrel.toml  (YOLOv3-tiny COCO 416, CPU; Ctrl-C to stop)\n' >&2
exec target/release/kestrel run --config examples/kestrel.toml --max-frames 225
