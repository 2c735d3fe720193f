#!/usr/bin/env bash
# The compression benchmark of README "Making a model lighter": `kestrel compress` of the trained YOLOv3-tiny
# on this machine's CPU provider, (1) with its defaults (per-layer search, whole-model check, tightening), then
# (2) at fixed ranks of the largest layers, where the report also compares HOSVD factors at the same ranks and
# the random probe's own search. Reports only; never fails on a number. Writes target/bench-compress/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
K=target/release/kestrel
OUT=target/bench-compress
mkdir -p "$OUT"
common=(--model models/yolov3-tiny-416.onnx --calibration .cache/frames/calibration --eval .cache/frames/eval)
sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1 | tee "$OUT/cpu.txt"
run() {
  local name=$1; shift
  echo "== $name: kestrel compress $*" | tee "$OUT/$name.txt"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" "$K" --log warn compress "${common[@]}" --out "$OUT/$name.onnx" \
    --report "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/$name.txt" | grep -vE '^\| conv' || true
}
run defaults
run conv33-256 --ranks conv_33=256:512 --require-faster false --min-fidelity 0.01
run conv33-384 --ranks conv_33=384:768 --require-faster false --min-fidelity 0.01
run big3-half --ranks conv_33=256:512,conv_28=128:256,conv_41=128:256 --require-faster false --min-fidelity 0.01
# Structured pruning (README "Structured pruning"): the per-group search with the data-aware order (its report
# compares L1 at the same channel counts and one uniform ratio at the same fidelity), then pruning followed by
# Tucker, then --method zeros with a package. Then speed against MACs on the synthetic YOLOv5s (random weights:
# speed only), at uniform ratios with the L1 order.
run prune --method prune --min-fidelity 0.9
run prune-uniform-0.25 --method prune --uniform-ratio 0.25 --no-compare
run prune-tucker --method prune,tucker --min-fidelity 0.9
run zeros --method zeros --zeros-ratio 0.5 --package
mkdir -p "$OUT/v5s-frames/calibration" "$OUT/v5s-frames/eval"
for f in $(ls .cache/frames/calibration | head -4); do ln -sf "$ROOT/.cache/frames/calibration/$f" "$OUT/v5s-frames/calibration/"; done
for f in $(ls .cache/frames/eval | head -3); do ln -sf "$ROOT/.cache/frames/eval/$f" "$OUT/v5s-frames/eval/"; done
for r in 0.25 0.5 0.75; do
  name=v5s-prune-$r
  echo "== $name" | tee "$OUT/$name.txt"
  "$K" --log warn compress --model models/yolov5s-synthetic-640.onnx --calibration "$OUT/v5s-frames/calibration" \
    --eval "$OUT/v5s-frames/eval" --out "$OUT/$name.onnx" --report "$OUT/$name.json" --method prune \
    --uniform-ratio "$r" --importance l1 --no-compare --fps-rounds 8 2>&1 | tee -a "$OUT/$name.txt" \
    | grep -vE '^\| (conv|model)' || true
done
