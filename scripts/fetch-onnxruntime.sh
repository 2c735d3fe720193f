#!/usr/bin/env bash
# Fetch the official ONNX Runtime wheel from PyPI with `pip download`, check its sha256, and extract
# libonnxruntime.so.<version> into the project cache: .cache/onnxruntime/<version>/<arch>/.
# Idempotent: does nothing when the library is already there and intact.
#   usage: scripts/fetch-onnxruntime.sh [--arch x86_64|aarch64] [--dest DIR]
set -euo pipefail
VERSION=1.31.1
ARCH=$(uname -m)
DEST=
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
# The wheel is the CPython 3.11 build; the library inside does not depend on the Python version.
case "$ARCH" in
  x86_64|amd64) ARCH=x86_64; PLATFORM=manylinux_2_28_x86_64
    WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f ;;
  aarch64|arm64) ARCH=aarch64; PLATFORM=manylinux_2_28_aarch64
    WHEEL_SHA256=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3 ;;
  *) echo "unsupported architecture: $ARCH (x86_64 or aarch64)" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${DEST:-$ROOT/.cache/onnxruntime/$VERSION/$ARCH}
LIB=$DEST/libonnxruntime.so.$VERSION
if [ -s "$LIB" ] && [ -s "$LIB.sha256" ] && (cd "$DEST" && sha256sum --quiet -c "libonnxruntime.so.$VERSION.sha256"); then
  echo "ONNX Runtime $VERSION ($ARCH) already in $DEST" >&2; exit 0
fi
PIP=$(command -v pip3 || command -v pip || true)
[ -n "$PIP" ] || { echo "pip is needed (apt-get install python3-pip)" >&2; exit 1; }
DL=$ROOT/.cache/downloads; mkdir -p "$DL" "$DEST"
WHEEL=$DL/onnxruntime-$VERSION-cp311-cp311-$PLATFORM.whl
if ! [ -s "$WHEEL" ] || ! echo "$WHEEL_SHA256  $WHEEL" | sha256sum --quiet -c; then
  rm -f "$WHEEL"
  "$PIP" download --quiet --no-deps --only-binary=:all: --platform "$PLATFORM" --python-version 3.11 \
    --implementation cp --abi cp311 -d "$DL" "onnxruntime==$VERSION"
fi
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --quiet -c || { echo "sha256 mismatch for $WHEEL" >&2; exit 1; }
python3 - "$WHEEL" "$DEST" "$VERSION" <<'PY'
import sys, zipfile, os, shutil
wheel, dest, version = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(os.path.join(dest, os.path.basename(name) + ".tmp"), "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(os.path.join(dest, os.path.basename(name) + ".tmp"), os.path.join(dest, os.path.basename(name)))
PY
(cd "$DEST" && sha256sum "libonnxruntime.so.$VERSION" > "libonnxruntime.so.$VERSION.sha256")
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "ONNX Runtime $VERSION ($ARCH) -> $LIB" >&2
