#!/usr/bin/env bash
# Create (or update) the project's Python virtualenv at .cache/venv from scripts/requirements.txt.
# Idempotent; prints the venv's python path last.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.cache/venv
REQ=$ROOT/scripts/requirements.txt
if ! [ -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    echo "python3 -m venv failed; installing python3-venv" >&2
    ${SUDO:-} apt-get install -y -q python3-venv >&2
    python3 -m venv "$VENV"
  }
fi
STAMP=$VENV/.requirements.sha256
if ! [ -f "$STAMP" ] || [ "$(sha256sum < "$REQ")" != "$(cat "$STAMP")" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
  sha256sum < "$REQ" > "$STAMP"
fi
echo "$VENV/bin/python"
