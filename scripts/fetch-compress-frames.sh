#!/usr/bin/env bash
# Real photos for `kestrel compress` and `kestrel evaluate`, from package registries only, into .cache/frames/:
#   calibration/  scikit-image's sample photos (PyPI wheel) and OpenCV's sample photos in which the shipped
#                 YOLOv3-tiny finds nothing (Debian's opencv-doc): only the layers' inputs matter there;
#   eval/         Debian darknet's photos and the OpenCV samples in which it does find objects: the held-out
#                 frames of the fidelity check (the original's detections are their ground truth).
# The two sets share no image. Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/.cache/frames
CAL=$OUT/calibration EVAL=$OUT/eval DL=$ROOT/.cache/downloads
SKIMAGE=(astronaut.png camera.png chelsea.png coffee.png motorcycle_left.png motorcycle_right.png rocket.jpg
  grass.png gravel.png brick.png clock_motion.png hubble_deep_field.jpg)
OCV_CAL=(aero1.jpg aero3.jpg apple.jpg baboon.jpg board.jpg butterfly.jpg chicky_512.png home.jpg leuvenA.jpg
  orange.jpg squirrel_cls.jpg starry_night.jpg box_in_scene.png ela_original.jpg licenseplate_motion.jpg)
OCV_EVAL=(basketball1.png basketball2.png building.jpg fruits.jpg leuvenB.jpg messi5.jpg smarties.png stuff.jpg
  aloeL.jpg)
[ -s "$EVAL/messi5.jpg" ] && [ -s "$CAL/astronaut.png" ] && [ -s "$EVAL/person.jpg" ] && exit 0
mkdir -p "$CAL" "$EVAL" "$DL"
PY=$("$ROOT/scripts/python-env.sh")
# scikit-image 0.26.0: the images are inside the wheel (skimage/data/); not installed, only unpacked.
ls "$DL"/scikit_image-0.26.0-*.whl >/dev/null 2>&1 ||
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$DL" scikit-image==0.26.0 >&2
"$PY" - "$CAL" "$DL" "${SKIMAGE[@]}" <<'PY'
import glob, sys, zipfile
out, dl, names = sys.argv[1], sys.argv[2], sys.argv[3:]
z = zipfile.ZipFile(sorted(glob.glob(dl + "/scikit_image-0.26.0-*.whl"))[0])
for n in names:
    open(f"{out}/skimage-{n}", "wb").write(z.read("skimage/data/" + n))
PY
# Debian's opencv-doc: examples/data/. Downloaded and unpacked, not installed.
(cd "$DL" && { ls opencv-doc_*.deb >/dev/null 2>&1 || apt-get download opencv-doc >&2 ||
  { ${SUDO:-} apt-get update -q >&2 && apt-get download opencv-doc >&2; }; })
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dpkg-deb --fsys-tarfile "$DL"/opencv-doc_*.deb | tar -x -C "$tmp" ./usr/share/doc/opencv-doc/examples/data
D=$tmp/usr/share/doc/opencv-doc/examples/data
for f in "${OCV_CAL[@]}"; do cp "$D/$f" "$CAL/opencv-$f"; done
for f in "${OCV_EVAL[@]}"; do cp "$D/$f" "$EVAL/opencv-$f"; done
cp "$ROOT"/.cache/darknet/*.jpg "$EVAL/"
echo "frames: $(ls "$CAL" | wc -l) calibration, $(ls "$EVAL" | wc -l) evaluation in $OUT" >&2
