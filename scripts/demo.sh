#!/usr/bin/env bash
# The demo: set everything up, then run the daemon on the bundled clip (text output, live fps) and, beside it,
# a subscriber on its detection socket (what flight-control code would see). Lines are prefixed with who
# printed them. Ends after 225 frames (15 s), or Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
K=target/release/kestrel
SOCK=.cache/demo/detections.sock      # examples/kestrel.toml publishes here
printf '\n== daemon: kestrel run --config examples/kestrel.toml   |   subscriber: kestrel subscribe --socket %s\n' "$SOCK" >&2
$K run --config examples/kestrel.toml --max-frames 225 2>&1 | sed -u 's/^/daemon     | /' &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
$K subscribe --socket "$SOCK" --detections-only --text 2>&1 | sed -u 's/^/subscriber | /' || true
wait $DAEMON
