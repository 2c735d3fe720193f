#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian/Ubuntu with Rust installed: system packages, ONNX Runtime,
# the Python tooling venv, the detector models, sample photos, test fixtures, and the release build.
# Re-running is cheap: every step checks what is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export SUDO
step() { printf '\n== %s\n' "$*" >&2; }

step "system packages"
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v cc >/dev/null || need+=(gcc)
command -v cmake >/dev/null || need+=(cmake)            # builds the vendored libjpeg-turbo (turbojpeg-sys)
[ "$(uname -m)" != x86_64 ] || command -v nasm >/dev/null || need+=(nasm)  # its x86 SIMD
# the v4l crate generates its V4L2 bindings with bindgen, which needs libclang
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
# the unit's seccomp restrictions, emulated for the Zenoh drop-in's test (tests/reference/unit_sandbox.py)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import seccomp' 2>/dev/null || need+=(python3-seccomp)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

step "ONNX Runtime"
scripts/fetch-onnxruntime.sh

step "models (Darknet YOLOv3-tiny COCO -> ONNX)"
scripts/make-models.sh

step "sample photos (Debian's darknet package)"
PHOTOS=.cache/darknet
if ! [ -s $PHOTOS/person.jpg ]; then
  mkdir -p $PHOTOS .cache/downloads
  if [ -s /usr/share/darknet/data/person.jpg ]; then
    cp /usr/share/darknet/data/*.jpg $PHOTOS/
  else
    # Only the package's data is used: download the .deb and unpack it, don't install it (its OpenCV deps).
    (cd .cache/downloads && { ls darknet_*.deb >/dev/null 2>&1 || apt-get download darknet >&2 || \
      { $SUDO apt-get update -q >&2 && apt-get download darknet >&2; }; })
    tmp=$(mktemp -d); dpkg-deb -x .cache/downloads/darknet_*.deb "$tmp"
    cp "$tmp"/usr/share/darknet/data/*.jpg $PHOTOS/; rm -rf "$tmp"
  fi
fi
ls $PHOTOS >&2

step "calibration and evaluation photos for kestrel compress/evaluate (scikit-image, Debian opencv-doc)"
scripts/fetch-compress-frames.sh

step "test fixtures"
"$(scripts/python-env.sh)" tests/fixtures/make_fixtures.py

step "demo clip and benchmark frames"
"$(scripts/python-env.sh)" scripts/make-media.py

step "build (release)"
cargo build --release --locked >&2

step "golden detections for the precision self-test (FP32 model, CPU provider)"
# Three photos beside the model and its reference detections: `kestrel run` checks the provider/precision in
# use against them at start; the .deb ships both.
mkdir -p models/golden
for p in person.jpg dog.jpg horses.jpg; do cmp -s $PHOTOS/$p models/golden/$p || cp $PHOTOS/$p models/golden/; done
if ! [ -s models/yolov3-tiny-416.golden.json ] || [ models/yolov3-tiny-416.golden.json -ot models/yolov3-tiny-416.onnx ]; then
  target/release/kestrel golden --model models/yolov3-tiny-416.onnx models/golden/*.jpg >&2
fi
echo "set-up complete: $ROOT/target/release/kestrel" >&2
