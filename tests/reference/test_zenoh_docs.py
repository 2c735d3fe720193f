"""The Zenoh documentation says what runs: the ground-station example in README.md and docs/protocol.md is the
code of examples/clients/zenoh_ground_station.py (which test_zenoh.py runs against daemons) and is at most ten
lines, and the README's `[zenoh]` example is a valid configuration."""
import re
import subprocess

from conftest import ROOT

EXAMPLE = ROOT / "examples/clients/zenoh_ground_station.py"


def example_code():
    """The example's code: the file without its shebang and docstring."""
    text = EXAMPLE.read_text()
    return text.split('"""', 2)[2].strip("\n")


def documented(path):
    text = path.read_text()
    m = re.search(r"<!-- zenoh-ground-station -->\n```python\n(.*?)\n```", text, re.S)
    assert m, f"{path}: no ground-station example"
    return m.group(1)


def test_the_documented_example_is_the_tested_one():
    code = example_code()
    lines = [l for l in code.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(lines) <= 10, code
    for doc in ("README.md", "docs/protocol.md"):
        assert documented(ROOT / doc) == code, doc


def test_the_readme_zenoh_config_is_valid(tmp_path, kestrel_bin):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```toml\n(\[zenoh\]\n.*?)```", text, re.S)
    assert m, "README: no [zenoh] example"
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[model]\npath = "{ROOT}/tests/fixtures/generated/v5_const.onnx"\n'
                   '[source]\nkind = "synthetic"\n' + m.group(1))
    out = subprocess.run([str(kestrel_bin), "check-config", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bad = cfg.read_text().replace('mode = "peer"', 'mode = "router"')
    cfg.write_text(bad)
    out = subprocess.run([str(kestrel_bin), "check-config", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 78 and "zenoh.mode" in out.stderr, (out.returncode, out.stderr)
