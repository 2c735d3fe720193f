"""The converted ONNX model agrees with OpenCV's own Darknet importer (an independent implementation of
Darknet's layers and YOLO head) on real photos."""
import numpy as np
import onnxruntime as ort
import pytest
import cv2

from conftest import PHOTOS, photo


def opencv_rows(net, blob):
    """OpenCV's YOLO head output, reordered to our row order: per head, anchor-major then grid y, x.
    OpenCV orders rows cell-major (y, x, anchor), gives boxes normalised to 0..1 and class scores multiplied
    by objectness."""
    net.setInput(blob)
    parts = []
    for out in net.forward(net.getUnconnectedOutLayersNames()):
        n = int(round((out.shape[0] / 3) ** 0.5))
        parts.append(out.reshape(n, n, 3, -1).transpose(2, 0, 1, 3).reshape(3 * n * n, -1))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def opencv_net(darknet_src, tmp_path_factory):
    # OpenCV zeroes class scores below the [yolo] layer's `thresh` (default 0.2); thresh=0 turns that
    # post-processing off so every raw value can be compared. Nothing else in the cfg changes.
    cfg = (darknet_src / "yolov3-tiny.cfg").read_text().replace("[yolo]", "[yolo]\nthresh=0")
    path = tmp_path_factory.mktemp("cfg") / "yolov3-tiny-thresh0.cfg"
    path.write_text(cfg)
    return cv2.dnn.readNetFromDarknet(str(path), str(darknet_src / "yolov3-tiny.weights"))


@pytest.mark.parametrize("name", PHOTOS)
def test_raw_output_matches_opencv_darknet_importer(name, model416, opencv_net):
    img = cv2.imread(str(photo(name)))
    blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (416, 416), swapRB=True, crop=False).astype(np.float32)
    ours = ort.InferenceSession(str(model416), providers=["CPUExecutionProvider"]).run(None, {"images": blob})[0][0]
    assert ours.shape == (2535, 85)
    ref = opencv_rows(opencv_net, blob)
    ours_cv = ours.copy()
    ours_cv[:, :4] /= 416.0
    ours_cv[:, 5:] *= ours_cv[:, 4:5]
    err = np.abs(ours_cv - ref)
    assert err[:, :4].max() * 416 < 1e-2, f"box error {err[:, :4].max() * 416} px"
    assert err[:, 4:].max() < 1e-4, f"objectness/class max error {err[:, 4:].max()}"
    assert ours[:, 4].max() > 0.5, "the photo should contain something confident"


def test_fp16_model_tracks_fp32(root, model416):
    img = cv2.imread(str(photo("person.jpg")))
    blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (416, 416), swapRB=True, crop=False).astype(np.float32)
    fp32 = ort.InferenceSession(str(model416), providers=["CPUExecutionProvider"]).run(None, {"images": blob})[0][0]
    fp16_model = root / "models/yolov3-tiny-416-fp16.onnx"
    fp16 = ort.InferenceSession(str(fp16_model), providers=["CPUExecutionProvider"]).run(
        None, {"images": blob.astype(np.float16)})[0][0].astype(np.float32)
    assert np.abs(fp16[:, 4:] - fp32[:, 4:]).max() < 0.03
    assert np.abs(fp16[:, :4] - fp32[:, :4]).max() < 2.0
