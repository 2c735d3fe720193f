#!/usr/bin/env bash
# The full test suite: set-up, formatting and lint gates, Rust unit + integration tests (release build,
# shared with the binary the Python tests run), then the independent Python reference tests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
printf '\n== cargo fmt --check\n' >&2
cargo fmt --all -- --check
printf '\n== cargo clippy --all-targets -D warnings\n' >&2
cargo clippy --release --locked --all-targets -- -D warnings
printf '\n== kestrel bench (small; reports numbers, never fails on speed)\n' >&2
target/release/kestrel --log warn bench --reps 2 --n 10 --ep cpu --precision fp32,fp16 --json target/bench-ci.json
bash -n scripts/gpu-check.sh   # the GPU check cannot run here (no GPU); at least it parses
printf '\n== cargo test (unit + integration)\n' >&2
cargo test --release --locked
printf '\n== V4L2 camera tests in a VM (QEMU software emulation, Debian kernel, vivid driver; ~1.5 min)\n' >&2
HOST_CHECK="python3 $ROOT/tests/vm/check.py" tests/vm/run.sh
printf '\n== aarch64: cross build (Debian rustc-web), glibc <= 2.35, tests under qemu-aarch64 (~8 min)\n' >&2
scripts/setup-cross.sh
scripts/build-aarch64.sh --test
printf '\n== .deb packages (amd64, arm64): contents; amd64 install, systemd-analyze, purge\n' >&2
rm -f target/debian/kestrel_*.deb
scripts/package-deb.sh amd64 arm64
tests/deb/check.sh
printf '\n== Python reference tests (OpenCV Darknet importer, independent reference detector, converter)\n' >&2
PY=$(scripts/python-env.sh)
cd tests/reference
KESTREL_BIN="$ROOT/target/release/kestrel" "$PY" -m pytest -q -p no:cacheprovider .
