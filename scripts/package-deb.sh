#!/usr/bin/env bash
# Build kestrel_<version>-1_<arch>.deb with cargo-deb (Cargo.toml [package.metadata.deb]) from an already
# built binary: amd64 from target/release (scripts/setup.sh builds it), arm64 from
# target/aarch64-unknown-linux-gnu/release (scripts/build-aarch64.sh). The package carries ONNX Runtime's CPU
# build for its architecture (with its licence notices), the YOLOv3-tiny model, the unit, the config.
#   scripts/package-deb.sh [amd64|arm64]...   (default: amd64)   -> target/debian/*.deb
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ORT_VERSION=1.31.1
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0 >&2
[ $# -gt 0 ] || set -- amd64
for arch in "$@"; do
  case "$arch" in
    amd64|x86_64) ortarch=x86_64; dir=target/release; target=() ;;
    arm64|aarch64) ortarch=aarch64; dir=target/aarch64-unknown-linux-gnu/release
      target=(--target aarch64-unknown-linux-gnu) ;;
    *) echo "unknown architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
  esac
  [ -x "$dir/kestrel" ] || { echo "$dir/kestrel is not built" >&2; exit 1; }
  [ -s models/yolov3-tiny-416.onnx ] || { echo "models/yolov3-tiny-416.onnx missing: scripts/make-models.sh" >&2; exit 1; }
  [ -s models/yolov3-tiny-416.golden.json ] || { echo "models/yolov3-tiny-416.golden.json missing: scripts/setup.sh" >&2; exit 1; }
  scripts/fetch-onnxruntime.sh --arch $ortarch
  # Staged outside target/*/release so that it is not found "beside the executable" by local runs.
  stage=target/deb-assets; rm -rf "$stage"; mkdir -p "$stage"
  cp ".cache/onnxruntime/$ORT_VERSION/$ortarch/libonnxruntime.so.$ORT_VERSION" "$stage/"
  # ONNX Runtime's licence and third-party notices, from the same (sha256-checked) wheel.
  wheel=$(ls .cache/downloads/onnxruntime-$ORT_VERSION-*_$ortarch.whl)
  python3 - "$wheel" "$stage/ThirdPartyNotices-onnxruntime.txt" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(b"ONNX Runtime (libonnxruntime, /usr/lib/kestrel) is MIT-licensed:\n\n")
    f.write(z.read("onnxruntime/LICENSE"))
    f.write(b"\n\n")
    f.write(z.read("onnxruntime/ThirdPartyNotices.txt"))
PY
  # --strip: the packaged binary without debug info (the release profile keeps line tables in target/).
  cargo deb --no-build --strip "${target[@]}" --output target/debian/ >&2
done
ls -l target/debian/*.deb
