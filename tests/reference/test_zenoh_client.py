"""The Zenoh output in client mode, and `messages`:

- a daemon in `mode = "client"` whose router is not there yet starts anyway (its pipeline publishes), and once a
  router appears (an eclipse-zenoh session in router mode, here) it opens its session: the router's
  subscriber gets its detections and its status, which says `"mode": "client"`, and its hello answers a
  query;
- `messages = ["status"]` publishes status and answers the status query, and puts no detections or hello."""
import json
import os
import subprocess
import time

import zenoh

from conftest import free_port, synthetic_daemon_config, terminate

HANG_S = 120  # deadline of every wait on a condition: a hang guard, not a speed bound


def write_config(tmp_path, zenoh_section):
    cfg = tmp_path / "k.toml"
    cfg.write_text(synthetic_daemon_config(f'kind = "file"\npath = "{tmp_path}/out.jsonl"',
                                           f"enabled = true\nmulticast_scouting = false\n{zenoh_section}"))
    return cfg


def start(kestrel_bin, cfg):
    return subprocess.Popen([str(kestrel_bin), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))


def wait_for(what, cond, d):
    deadline = time.monotonic() + HANG_S
    while not cond():
        assert d.poll() is None, f"daemon exited ({d.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"hang guard: no {what} in {HANG_S} s"
        time.sleep(0.05)


def lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def session(mode, listen=None, connect=None):
    c = zenoh.Config()
    c.insert_json5("mode", json.dumps(mode))
    c.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        c.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        c.insert_json5("connect/endpoints", json.dumps([connect]))
    return zenoh.open(c)


def test_a_client_starts_without_its_router_and_publishes_once_it_appears(tmp_path, kestrel_bin):
    port = free_port()
    prefix = f"kestrel/client-{os.getpid()}"
    cfg = write_config(tmp_path, f'mode = "client"\nconnect = ["tcp/127.0.0.1:{port}"]\nkey_prefix = "{prefix}"')
    d = start(kestrel_bin, cfg)
    out = tmp_path / "out.jsonl"
    try:
        # No router: the pipeline runs all the same.
        wait_for("frames published without a router", lambda: len(lines(out)) >= 30, d)
        got = []
        with session("router", listen=f"tcp/127.0.0.1:{port}") as router:
            sub = router.declare_subscriber(f"{prefix}/**", lambda s: got.append(
                (str(s.key_expr), json.loads(s.payload.to_bytes()))))
            wait_for("detections and a status through the router",
                     lambda: {k.rsplit("/", 1)[1] for k, _ in got} >= {"detections", "status"}, d)
            hellos = [json.loads(r.ok.payload.to_bytes()) for r in router.get(f"{prefix}/hello", timeout=10)
                      if r.ok is not None]
            sub.undeclare()
        rc, err = terminate(d)
    finally:
        if d.poll() is None:
            d.kill()
    assert rc == 0, err
    assert len(hellos) == 1 and hellos[0]["type"] == "hello" and hellos[0]["zenoh_key"] == prefix, hellos
    status = next(m for k, m in got if k.endswith("/status"))
    assert status["zenoh"]["mode"] == "client" and status["zenoh"]["sessions"] >= 1, status
    # Frames made before the router came were counted as sent to no one.
    assert status["zenoh"]["unmatched"] >= 30, status
    seqs = [m["seq"] for k, m in got if k.endswith("/detections")]
    assert seqs == sorted(set(seqs)), seqs


def test_messages_selects_what_is_published(tmp_path, kestrel_bin):
    port = free_port()
    prefix = f"kestrel/msgs-{os.getpid()}"
    cfg = write_config(tmp_path, f'listen = ["tcp/127.0.0.1:{port}"]\nkey_prefix = "{prefix}"\n'
                                 'messages = ["status"]')
    d = start(kestrel_bin, cfg)
    out = tmp_path / "out.jsonl"
    try:
        wait_for("frames published", lambda: len(lines(out)) >= 5, d)
        got = []
        with session("peer", connect=f"tcp/127.0.0.1:{port}") as station:
            sub = station.declare_subscriber(f"{prefix}/**", lambda s: got.append(str(s.key_expr)))
            wait_for("two status samples", lambda: got.count(f"{prefix}/status") >= 2, d)
            n_frames = len(lines(out))
            wait_for("30 more frames", lambda: len(lines(out)) >= n_frames + 30, d)
            status_replies = [r.ok for r in station.get(f"{prefix}/status", timeout=10)]
            hello_replies = [r for r in station.get(f"{prefix}/hello", timeout=2)]
            sub.undeclare()
        rc, err = terminate(d)
    finally:
        if d.poll() is None:
            d.kill()
    assert rc == 0, err
    assert set(got) == {f"{prefix}/status"}, sorted(set(got))
    assert len(status_replies) == 1 and status_replies[0] is not None, status_replies
    assert json.loads(status_replies[0].payload.to_bytes())["type"] == "status"
    assert hello_replies == [], hello_replies
