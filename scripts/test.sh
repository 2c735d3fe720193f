#!/usr/bin/env bash
# The full test suite: set-up, formatting and lint gates, Rust unit + integration tests (release build,
# shared with the binary the Python tests run), the VM camera tests, the aarch64 build and its tests under
# qemu-aarch64, the packages, then the independent Python reference tests.
# Prints the machine it runs on first and, at the end (also when a part fails), how long each part took.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
printf '== machine: %s; %s cores; %s GiB; kernel %s\n' "${cpu:-$(uname -m)}" "$(nproc)" \
  "$(awk '/^MemTotal/{printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(uname -sr)" >&2

PARTS=()
suite_t0=$(date +%s.%N)
report() {
  local rc=$?
  printf '\n== time per part (%s)\n' "${cpu:-$(uname -m)}" >&2
  local p
  for p in "${PARTS[@]}"; do printf '   %s\n' "$p" >&2; done
  awk -v a="$suite_t0" -v b="$(date +%s.%N)" -v rc="$rc" \
    'BEGIN{printf "   %-72s %7.1f s%s\n", "total", b - a, rc == 0 ? "" : "  (FAILED)"}' >&2
}
trap report EXIT
# part NAME CMD...: run CMD as one timed part of the suite
part() {
  local name=$1; shift
  printf '\n== %s\n' "$name" >&2
  local t0 rc=0; t0=$(date +%s.%N)
  "$@" || rc=$?
  PARTS+=("$(awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$name" -v rc="$rc" \
    'BEGIN{printf "%-72s %7.1f s%s", n, b - a, rc == 0 ? "" : "  (FAILED, exit " rc ")"}')")
  return $rc
}

part "set-up (packages, ONNX Runtime, models, fixtures, release build)" scripts/setup.sh
part "cargo fmt --check" cargo fmt --all -- --check
part "cargo clippy --all-targets -D warnings" cargo clippy --release --locked --all-targets -- -D warnings
# The build without the Zenoh output (cargo feature `zenoh`, on by default) still compiles, lint-clean.
part "cargo clippy --no-default-features (no Zenoh)" \
  cargo clippy --release --locked --all-targets --no-default-features -- -D warnings
part "kestrel bench (small; reports numbers, never fails on speed)" \
  target/release/kestrel --log warn bench --reps 2 --n 10 --ep cpu --precision fp32,fp16 --json target/bench-ci.json
bash -n scripts/gpu-check.sh   # the GPU check cannot run here (no GPU); at least it parses
# The pure per-frame maths must not need ONNX Runtime: no `ort` in its dependency tree, and its tests pass
# with no runtime library to be found.
vision_alone() {
  if cargo tree --locked -p kestrel-vision -e normal,build --prefix none | grep -qE '^ort(-sys)? '; then
    echo "kestrel-vision depends on ort" >&2; return 1
  fi
  env -u ORT_DYLIB_PATH cargo test --release --locked -p kestrel-vision
}
part "kestrel-vision without ONNX Runtime" vision_alone
part "cargo test (unit + integration)" cargo test --release --locked
part "V4L2 camera tests in a VM (QEMU software emulation, vivid)" \
  env HOST_CHECK="python3 $ROOT/tests/vm/check.py" tests/vm/run.sh
part "aarch64 cross toolchain" scripts/setup-cross.sh
part "aarch64: cross build, glibc <= 2.35, tests under qemu-aarch64" scripts/build-aarch64.sh --test
# (`set -e` does not apply inside a part, which runs in a `||` list: each step is chained with &&)
debs() {
  rm -f target/debian/kestrel_*.deb && scripts/package-deb.sh amd64 arm64 && tests/deb/check.sh
}
part ".deb packages (amd64, arm64): contents; amd64 install, sandbox, purge" debs
pyref() {
  local py
  py=$(scripts/python-env.sh) &&
    (cd tests/reference && KESTREL_BIN="$ROOT/target/release/kestrel" "$py" -m pytest -q -p no:cacheprovider .)
}
part "Python reference tests (OpenCV, independent detector, clients, parity)" pyref
