#!/usr/bin/env bash
# Real photos for `kestrel compress` and `kestrel evaluate`, from package registries only, into .cache/frames/:
#   calibration/  scikit-image's sample photos (PyPI wheel) and most of OpenCV's sample photos (Debian's
#                 opencv-doc), each also as a centre crop: the layers' inputs are captured on these;
#   eval/         Debian darknet's photos and the OpenCV samples with the most objects, each also as four corner
#                 crops and a centre crop (the model sees other scales and framings, so each crop is another
#                 frame): the held-out frames of the fidelity check (the original's detections are their truth).
# The two sets share no photo, and no scene (near-duplicate pairs such as leuvenA/leuvenB and
# basketball1/basketball2 stay on one side). Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/.cache/frames
CAL=$OUT/calibration EVAL=$OUT/eval DL=$ROOT/.cache/downloads
SKIMAGE=(astronaut.png camera.png chelsea.png coffee.png motorcycle_left.png motorcycle_right.png rocket.jpg
  grass.png gravel.png brick.png clock_motion.png hubble_deep_field.jpg)
OCV_CAL=(aero1.jpg aero3.jpg apple.jpg baboon.jpg board.jpg butterfly.jpg chicky_512.png home.jpg leuvenA.jpg
  leuvenB.jpg orange.jpg squirrel_cls.jpg starry_night.jpg box_in_scene.png ela_original.jpg
  licenseplate_motion.jpg fruits.jpg)
OCV_EVAL=(basketball1.png basketball2.png building.jpg messi5.jpg smarties.png stuff.jpg aloeL.jpg)
STAMP=$OUT/.complete-2
[ -f "$STAMP" ] && exit 0
rm -rf "$CAL" "$EVAL"
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
# Crops (OpenCV from the venv): centre 60 % for calibration; four corners at 70 % and the centre at 60 % for
# evaluation. PNG, so no second lossy compression.
"$PY" - "$CAL" "$EVAL" <<'PY'
import os, sys, cv2
def crops(path, boxes):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    stem = os.path.splitext(path)[0]
    for name, (x0, y0, x1, y1) in boxes.items():
        cv2.imwrite(f"{stem}.crop-{name}.png", img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)])
centre = {"centre": (0.2, 0.2, 0.8, 0.8)}
corners = {"tl": (0, 0, 0.7, 0.7), "tr": (0.3, 0, 1, 0.7), "bl": (0, 0.3, 0.7, 1), "br": (0.3, 0.3, 1, 1)}
cal, ev = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(cal)):
    crops(os.path.join(cal, f), centre)
for f in sorted(os.listdir(ev)):
    crops(os.path.join(ev, f), {**centre, **corners})
PY
touch "$STAMP"
echo "frames: $(ls "$CAL" | wc -l) calibration, $(ls "$EVAL" | wc -l) evaluation in $OUT" >&2
