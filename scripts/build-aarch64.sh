#!/usr/bin/env bash
# Build the aarch64 (Jetson) binary on an x86-64 Debian/Ubuntu machine without Docker or rustup targets:
# Debian's rustc-web with its aarch64 standard library and the aarch64 GNU toolchain (scripts/setup-cross.sh
# installs them). Checks that the binary needs at most glibc 2.35 (Ubuntu 22.04 / JetPack 6) and that it
# runs (`--version`) under qemu-aarch64.
#   scripts/build-aarch64.sh [--setup] [--test] [cargo build args…]
#     --setup  install the toolchain first (apt; needs root or sudo)
#     --test   also run the tests that can run under qemu-aarch64 (see the end of this script)
# Output: target/aarch64-unknown-linux-gnu/release/kestrel
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
MAX_GLIBC=${MAX_GLIBC:-2.35}
setup=0 test=0
while [ $# -gt 0 ]; do
  case "$1" in
    --setup) setup=1; shift ;;
    --test) test=1; shift ;;
    *) break ;;
  esac
done
[ $setup = 0 ] || scripts/setup-cross.sh
# Debian's packaged toolchain (rustc-web installs /usr/bin/rustc and /usr/bin/cargo). A rustup toolchain
# with the aarch64 target works too: CARGO=cargo RUSTC=rustc scripts/build-aarch64.sh
CARGO=${CARGO:-/usr/bin/cargo}
export RUSTC=${RUSTC:-/usr/bin/rustc}
for tool in "$CARGO" "$RUSTC" aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup-cross.sh" >&2; exit 1; }
done
"$RUSTC" --print target-libdir --target $TARGET >/dev/null 2>&1 && \
  [ -d "$("$RUSTC" --print target-libdir --target $TARGET)" ] || {
  echo "$RUSTC has no $TARGET standard library: install libstd-rust-web-dev:arm64 (scripts/setup-cross.sh)" >&2; exit 1; }
echo "== $("$RUSTC" --version) -> $TARGET" >&2
# libjpeg-turbo (vendored, cmake) and anything else built with cc use the cross compiler.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
"$CARGO" build --release --locked --target $TARGET "$@"
BIN=target/$TARGET/release/kestrel
file "$BIN" 2>/dev/null | sed 's/^/   /' >&2 || true

# glibc: the newest symbol version the binary needs must exist on the Jetson.
need=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "== needs glibc $need (limit $MAX_GLIBC)" >&2
if [ "$(printf '%s\n%s\n' "$need" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
  echo "error: $BIN needs glibc $need, newer than $MAX_GLIBC" >&2
  aarch64-linux-gnu-objdump -T "$BIN" | grep "GLIBC_$need" >&2
  exit 1
fi

if command -v qemu-aarch64 >/dev/null; then
  echo "== $BIN --version under $(qemu-aarch64 --version | head -1)" >&2
  qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib "$BIN" --version
else
  echo "(qemu-aarch64 not installed: not run)" >&2
fi

if [ $test = 1 ]; then
  # Under qemu-aarch64 (runner in .cargo/config.toml): the library's unit tests and, of the in-process test
  # binary (tests/inprocess), the suites on fixture models and protocol vectors (exact_models::, golden::: tiny
  # constant-output ONNX models through ONNX Runtime's aarch64 build), then ONE real-model inference
  # (tests/inprocess/photos.rs, person.jpg) within a budget made from this host's emulation speed, which
  # varies 10-20x between hosts. Not here: the tests that start the kestrel binary as a child process
  # (tests/processes: an aarch64 child cannot be exec'd without binfmt_misc), tests/inprocess/mavlink.rs and
  # tests/inprocess/pipeline.rs (latency and freshness bounds: properties of the code, checked on x86-64),
  # tests/alloc.rs (80 s here for a property of the Rust code, checked on x86-64) and the other real-model
  # photos (the same code path as the one run here; all of them run on x86-64).
  scripts/fetch-onnxruntime.sh --arch aarch64
  ORT_AARCH64=$ROOT/.cache/onnxruntime/1.31.1/aarch64/libonnxruntime.so.1.31.1
  NATIVE=$ROOT/target/release/kestrel
  for f in "$ORT_AARCH64" "$NATIVE" models/yolov3-tiny-416.onnx tests/fixtures/generated/conv_speed_416.onnx \
           .cache/darknet/person.jpg .cache/darknet/dog.jpg .cache/darknet/horses.jpg; do
    [ -e "$f" ] || { echo "missing $f (run scripts/setup.sh first)" >&2; exit 1; }
  done
  now() { date +%s.%N; }
  echo "== tests under qemu-aarch64: unit tests, fixture models, protocol vectors" >&2
  "$CARGO" test --release --locked --target $TARGET --lib
  "$CARGO" test --release --locked --target $TARGET --test inprocess -- exact_models:: golden::

  echo "== emulation speed of this host: a small convolutional network on 3 photos, native vs qemu-aarch64" >&2
  PHOTOS=(.cache/darknet/person.jpg .cache/darknet/dog.jpg .cache/darknet/horses.jpg)
  FIXTURE=tests/fixtures/generated/conv_speed_416.onnx   # ~1/40 of YOLOv3-tiny's multiply-adds
  native=$("$NATIVE" --log warn detect --threads 1 --warmup 1 --model $FIXTURE "${PHOTOS[@]}")
  real=$("$NATIVE" --log warn detect --threads 1 --warmup 1 --model models/yolov3-tiny-416.onnx .cache/darknet/person.jpg)
  t0=$(now)
  emulated=$(qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib "$BIN" \
    --log warn detect --ort-lib "$ORT_AARCH64" --threads 1 --warmup 1 --model $FIXTURE "${PHOTOS[@]}")
  t1=$(now)
  # budget: the emulated process start-up (ORT load, one warm-up) as measured, plus the native YOLOv3-tiny
  # inference times the slowdown measured on the small network, all times 10, at least 120 s: a host that
  # emulates 10x slower gets a 10x larger budget. (Decoding and letterboxing are no guide: they slowed 9x
  # where ONNX Runtime's convolutions slowed 260x.)
  read -r budget summary < <(python3 - "$native" "$emulated" "$real" "$t0" "$t1" <<'PY'
import json, statistics, sys
native, emulated, real = ([json.loads(l) for l in a.splitlines() if l.strip()] for a in sys.argv[1:4])
t0, t1 = float(sys.argv[4]), float(sys.argv[5])
infer = lambda r: r["times_ms"]["infer"]
n = statistics.median(infer(r) for r in native)
e = statistics.median(infer(r) for r in emulated)
slowdown = e / max(n, 1e-3)
startup_s = (t1 - t0) - sum(r["times_ms"]["total"] for r in emulated) / 1e3
infer_native_ms = infer(real[0])
predicted_s = max(startup_s, 0.0) + slowdown * infer_native_ms / 1e3
budget = max(120, round(10 * predicted_s))
print(budget, f"small network median {n:.2f} ms native, {e:.0f} ms emulated ({slowdown:.0f}x); emulated "
      f"process start-up {startup_s:.1f} s; YOLOv3-tiny {infer_native_ms:.1f} ms native -> about "
      f"{predicted_s:.0f} s emulated; budget {budget} s")
PY
)
  [ -n "${budget:-}" ] || { echo "FAIL: could not measure the emulation speed" >&2; exit 1; }
  echo "   $summary" >&2
  echo "== one real-model inference under qemu-aarch64 (tests/inprocess/photos.rs person.jpg, budget ${budget} s)" >&2
  "$CARGO" test --release --locked --target $TARGET --test inprocess --no-run
  t0=$(now); rc=0
  timeout "$budget" "$CARGO" test --release --locked --target $TARGET --test inprocess -- \
    --exact photos::person_jpg_has_a_person_a_dog_and_a_horse || rc=$?
  took=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}')
  if [ $rc = 124 ]; then
    echo "FAIL: the real-model inference under qemu-aarch64 ran out of its budget (${budget} s; $summary)" >&2
    exit 1
  fi
  [ $rc = 0 ] || { echo "FAIL: tests/inprocess/photos.rs under qemu-aarch64 (exit $rc)" >&2; exit $rc; }
  echo "   real-model inference under qemu-aarch64: ${took} s of its ${budget} s budget" >&2
fi
