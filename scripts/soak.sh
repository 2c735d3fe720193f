#!/usr/bin/env bash
# Memory soak: run the daemon over N frames (default 20000) of synthetic 1080p JPEG frames, as fast as it
# goes, and report resident memory (VmRSS from /proc) after warm-up and at the end.
#   usage: scripts/soak.sh [FRAMES] [MODEL]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FRAMES=${1:-20000}
MODEL=${2:-$ROOT/models/yolov3-tiny-416.onnx}
CFG=$(mktemp --suffix=.toml)
trap 'rm -f "$CFG"' EXIT
cat > "$CFG" <<TOML
[source]
kind = "synthetic"
width = 1920
height = 1080
format = "jpeg"
fps_hz = 0.0
frames = $FRAMES
[model]
path = "$MODEL"
[output]
kind = "none"
[metrics]
log_interval_ms = 30000
TOML
"$ROOT/target/release/kestrel" run --config "$CFG" &
PID=$!
rss() { awk '/^VmRSS/{print $2}' /proc/$PID/status 2>/dev/null || echo 0; }
sleep 20; START=$(rss); T0=$(date +%s)
echo "soak: pid $PID, RSS after 20 s warm-up: $START kB" >&2
MAX=$START; LAST=$START
while kill -0 $PID 2>/dev/null; do
  r=$(rss); [ "$r" -gt 0 ] && LAST=$r && [ "$r" -gt "$MAX" ] && MAX=$r
  sleep 5
done
wait $PID
echo "soak: $FRAMES frames in $(( $(date +%s) - T0 + 20 )) s; RSS warm $START kB, last $LAST kB, max $MAX kB, growth $(( LAST - START )) kB (max-warm $(( MAX - START )) kB)"
