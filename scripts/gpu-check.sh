#!/usr/bin/env bash
# GPU check: one short run on a machine with an NVIDIA GPU and a GPU build of ONNX Runtime >= 1.31 (the PyPI
# `onnxruntime-gpu` wheel, or JetPack's build; TensorRT optional). It checks, with the release binary:
#   1. which execution providers the loaded ONNX Runtime has, the CUDA driver/GPU and TensorRT kestrel sees;
#   2. `--require-ep cuda` (and tensorrt) runs on that provider; detections of a photo on each provider;
#   3. IoBinding (pinned host memory) gives the plain path's detections on CUDA;
#   4. the precision self-test (FP32 CPU golden detections) on cuda fp32, cuda fp16 (FP16 model) and
#      tensorrt fp16 (engine built from the FP32 model);
#   5. `kestrel build-engine` twice (build, then "already cached"), with its timings;
#   6. `kestrel bench --ep <available> --precision fp32,fp16`, interleaved;
# and prints a table of the checks and the bench table. Exit status: the number of failed checks.
#
#   scripts/gpu-check.sh [--ort-lib PATH] [--kestrel PATH] [--reps N] [--n N]
#
# Needs: target/release/kestrel (or --kestrel), models/yolov3-tiny-416{,-fp16}.onnx, .cache/darknet photos and
# .cache/bench/1080p frames (scripts/setup.sh makes them all). ONNX Runtime: --ort-lib, else $ORT_DYLIB_PATH,
# else an installed `onnxruntime-gpu` Python package. Takes ~2 min on a desktop GPU plus the TensorRT builds
# (minutes on a Jetson).
set -uo pipefail
cd "$(dirname "$0")/.."

KESTREL=target/release/kestrel
ORT_LIB=${ORT_DYLIB_PATH:-}
REPS=3
N=60
while [ $# -gt 0 ]; do
  case "$1" in
    --ort-lib) ORT_LIB=$2; shift 2 ;;
    --kestrel) KESTREL=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --n) N=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$ORT_LIB" ]; then
  ORT_LIB=$(python3 - <<'EOF' 2>/dev/null
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")), key=len)
print(libs[-1] if libs else "")
EOF
)
fi
[ -n "$ORT_LIB" ] && [ -f "$ORT_LIB" ] || { echo "gpu-check: no ONNX Runtime GPU library (pass --ort-lib)" >&2; exit 2; }
[ -x "$KESTREL" ] || { echo "gpu-check: $KESTREL missing (cargo build --release)" >&2; exit 2; }
export ORT_DYLIB_PATH=$ORT_LIB
export RUST_LOG=${RUST_LOG:-warn,kestrel=info}

WORK=$(mktemp -d /tmp/kestrel-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export CACHE_DIRECTORY=$WORK/cache
PHOTO=.cache/darknet/person.jpg
[ -f /usr/share/darknet/data/person.jpg ] && PHOTO=/usr/share/darknet/data/person.jpg
PHOTOS_DIR=$(dirname "$PHOTO")
M32=models/yolov3-tiny-416.onnx
M16=models/yolov3-tiny-416-fp16.onnx

declare -a RESULTS=()
FAILED=0
check() { # name, status (0 = pass), detail
  local s=PASS
  [ "$2" -eq 0 ] || { s=FAIL; FAILED=$((FAILED + 1)); }
  RESULTS+=("| $1 | $s | $3 |")
}

echo "== machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "(no nvidia-smi)"; fi
echo "ONNX Runtime: $ORT_LIB"
python3 -c "import onnxruntime as o; print('providers:', o.get_available_providers())" 2>/dev/null || true

# detections of one photo on one provider: prints the labels, logs to $WORK/<name>.log
detect() { # name, extra args...
  local name=$1; shift
  "$KESTREL" detect --model "$M32" "$@" "$PHOTO" >"$WORK/$name.json" 2>"$WORK/$name.log"
}
labels() { python3 -c "import json,sys; print(' '.join(d['label'] for d in json.load(open(sys.argv[1]))['detections']))" "$1"; }

EPS=cpu
for ep in cuda tensorrt; do
  if detect "require-$ep" --ep "$ep" --require-ep "$ep"; then
    check "require_ep=$ep runs on $ep" 0 "$(grep -o "execution provider $ep ([^)]*)" "$WORK/require-$ep.log" | head -1); labels: $(labels "$WORK/require-$ep.json")"
    EPS="$ep,$EPS"
  else
    check "require_ep=$ep runs on $ep" 1 "$(grep -m1 -o 'error: .*' "$WORK/require-$ep.log" | cut -c1-200)"
  fi
done

if detect plain --ep cuda --require-ep cuda && detect bound --ep cuda --require-ep cuda --io-binding; then
  if python3 - "$WORK/plain.json" "$WORK/bound.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["detections"] for p in sys.argv[1:3])
sys.exit(0 if a == b and a else 1)
EOF
  then check "IoBinding (pinned) = plain on cuda" 0 "$(labels "$WORK/bound.json")"
  else check "IoBinding (pinned) = plain on cuda" 1 "detections differ: see $WORK/{plain,bound}.json"; fi
else
  check "IoBinding (pinned) = plain on cuda" 1 "cuda detect failed"
fi

# golden detections (FP32, CPU) and the self-test on each GPU provider/precision
mkdir -p "$WORK/models/golden"
cp "$M32" "$M16" "$WORK/models/"
for p in person.jpg dog.jpg horses.jpg; do cp "$PHOTOS_DIR/$p" "$WORK/models/golden/"; done
"$KESTREL" golden --model "$WORK/models/yolov3-tiny-416.onnx" "$WORK"/models/golden/*.jpg 2>"$WORK/golden.log"
check "golden detections (cpu fp32)" $? "$(tail -1 "$WORK/golden.log")"
selftest() { # name, model, providers, tensorrt fp16
  cat >"$WORK/$1.toml" <<EOF
[model]
path = "$WORK/models/$2"
[runtime]
execution_providers = [$3]
warmup_runs = 0
[runtime.tensorrt]
fp16 = $4
[source]
kind = "synthetic"
format = "rgb"
width = 640
height = 480
frames = 5
[output]
kind = "none"
[publish]
enabled = false
[selftest]
on_mismatch = "fail"
EOF
  timeout 1800 "$KESTREL" run --config "$WORK/$1.toml" 2>"$WORK/$1.log"
  check "self-test $1" $? "$(grep -m1 -o 'self-test [a-zA-Z]*[^\"]*' "$WORK/$1.log" | cut -c1-160)"
}
case $EPS in *cuda*) selftest cuda-fp32 yolov3-tiny-416.onnx '"cuda"' false
                     selftest cuda-fp16 yolov3-tiny-416-fp16.onnx '"cuda"' false ;; esac
case $EPS in *tensorrt*) selftest tensorrt-fp16 yolov3-tiny-416.onnx '"tensorrt"' true ;; esac

case $EPS in *tensorrt*)
  cp "$WORK/tensorrt-fp16.toml" "$WORK/build.toml"
  "$KESTREL" build-engine --config "$WORK/build.toml" --force >"$WORK/build1.txt" 2>"$WORK/build1.log"
  check "build-engine (build)" $? "$(grep -m1 'built in' "$WORK/build1.txt" | xargs); $(grep -m1 'median' "$WORK/build1.txt" | xargs)"
  "$KESTREL" build-engine --config "$WORK/build.toml" >"$WORK/build2.txt" 2>"$WORK/build2.log"
  grep -q "already cached" "$WORK/build2.txt"
  check "build-engine (cached)" $? "$(grep -m1 'total time' "$WORK/build2.txt" | xargs)"
  ;;
esac

echo "== bench: --ep $EPS --precision fp32,fp16 --reps $REPS --n $N"
"$KESTREL" bench --model "$M32" --ep "$EPS" --precision fp32,fp16 --reps "$REPS" --n "$N" \
  --json "$WORK/bench.json" >"$WORK/bench.md" 2>"$WORK/bench.log"
check "bench" $? "$(wc -l <"$WORK/bench.md") lines"

echo
echo "== checks"
echo "| check | result | detail |"
echo "|---|---|---|"
printf '%s\n' "${RESULTS[@]}"
echo
echo "== bench"
cat "$WORK/bench.md"
exit "$FAILED"
