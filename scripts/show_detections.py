#!/usr/bin/env python3
"""Pretty-print `kestrel detect` JSON lines from stdin (used by scripts/demo.sh)."""
import json
import sys

for line in sys.stdin:
    r = json.loads(line)
    if "error" in r:
        print(f"{r['image']}: ERROR {r['error']}")
        continue
    t = r["times_ms"]
    print(f"{r['image']} ({r['width']}x{r['height']}): decode {t['decode']:.1f} ms, preprocess {t['preprocess']:.1f} ms, "
          f"infer {t['infer']:.1f} ms, postprocess {t['postprocess']:.2f} ms")
    for d in r["detections"]:
        print(f"  {d['label']:>10} {d['score']:.3f}  box {[round(v) for v in d['box']]}")
