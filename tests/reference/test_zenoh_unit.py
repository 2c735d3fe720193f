"""The Zenoh output under the service's restrictions (tests/reference/unit_sandbox.py emulates the unit's
RestrictAddressFamilies=, SystemCallFilter=, NoNewPrivileges= and MemoryDenyWriteExecute=):

- the stock unit (AF_UNIX only) refuses Zenoh: the daemon exits at start, saying the address family is not
  supported, so the drop-in is needed;
- with systemd/zenoh.conf, a daemon publishes over IPv4 and over IPv6 loopback endpoints, and an unrestricted
  `kestrel subscribe --zenoh` receives its detections; without AF_INET (or AF_INET6) that endpoint fails;
- AF_NETLINK: Zenoh lists the interfaces through it to choose the multicast-scouting interface. Without it,
  Zenoh finds none ("Unable to find active, non-loopback multicast interface"); with it, it finds one exactly
  when this host has an UP, multicast, non-loopback interface (read from /sys/class/net here)."""
import os
import pathlib
import socket
import subprocess

import pytest

from conftest import ROOT, free_port, synthetic_daemon_config, terminate

SANDBOX = ROOT / "tests/reference/unit_sandbox.py"
DROP_IN = ROOT / "systemd/zenoh.conf"
NO_INTERFACE = "Unable to find active, non-loopback multicast interface"


def config(tmp_path, listen, scouting=False, name="k.toml"):
    cfg = tmp_path / name
    cfg.write_text(synthetic_daemon_config('kind = "none"', f"""enabled = true
listen = ["{listen}"]
key_prefix = "kestrel/unit-{os.getpid()}"
multicast_scouting = {"true" if scouting else "false"}"""))
    return cfg


def sandboxed(kestrel_bin, cfg, drop_in=True, families=None):
    args = ["/usr/bin/python3", str(SANDBOX)]
    if drop_in:
        args += ["--drop-in", str(DROP_IN)]
    if families is not None:
        args += ["--families", ",".join(families)]
    return subprocess.Popen(args + ["--", str(kestrel_bin), "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, RUST_LOG="warn"))


def stop(d):
    return terminate(d)[1]


def receive(kestrel_bin, endpoint, n=3):
    """Detections of the sandboxed daemon at `endpoint`, through an unrestricted `kestrel subscribe`."""
    out = subprocess.run([str(kestrel_bin), "subscribe", "--zenoh", "--connect", endpoint, "--key",
                          f"kestrel/unit-{os.getpid()}", "--detections-only", "--count", str(n),
                          "--timeout-ms", "60000"], capture_output=True, text=True, timeout=120)
    return out


def test_the_stock_unit_has_no_network_for_zenoh(tmp_path, kestrel_bin):
    d = sandboxed(kestrel_bin, config(tmp_path, f"tcp/127.0.0.1:{free_port()}"), drop_in=False)
    _, err = d.communicate(timeout=120)
    assert d.returncode not in (0, None), err
    assert "cannot open the Zenoh session" in err and "Address family not supported" in err, err


@pytest.mark.parametrize("family,host,name", [(socket.AF_INET, "127.0.0.1", "AF_INET"),
                                              (socket.AF_INET6, "::1", "AF_INET6")])
def test_the_drop_in_lets_zenoh_through_and_each_family_is_needed(tmp_path, kestrel_bin, family, host, name):
    port = free_port(family, host)
    endpoint = f"tcp/{host}:{port}" if family == socket.AF_INET else f"tcp/[{host}]:{port}"
    cfg = config(tmp_path, endpoint)
    d = sandboxed(kestrel_bin, cfg)
    try:
        got = receive(kestrel_bin, endpoint)
    finally:
        err = stop(d)
    assert got.returncode == 0, (got.stderr, err)
    lines = [l for l in got.stdout.splitlines() if '"detections"' in l]
    assert len(lines) == 3, (got.stdout, err)
    assert "Operation not permitted" not in err, err

    without = [f for f in ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK") if f != name]
    d = sandboxed(kestrel_bin, cfg, families=without)
    _, err = d.communicate(timeout=120)
    assert d.returncode not in (0, None) and "Address family not supported" in err, err


def multicast_interface():
    """Whether this host has an UP, multicast, non-loopback interface (what Zenoh's scouting looks for)."""
    for dev in pathlib.Path("/sys/class/net").iterdir():
        flags = int((dev / "flags").read_text(), 16)
        if flags & 0x1 and flags & 0x1000 and not flags & 0x8:  # IFF_UP, IFF_MULTICAST, not IFF_LOOPBACK
            return True
    return False


def scouting_log(tmp_path, kestrel_bin, families):
    """The daemon's log for its first seconds with multicast scouting on, under `families`."""
    port = free_port()
    d = sandboxed(kestrel_bin, config(tmp_path, f"tcp/127.0.0.1:{port}", scouting=True, name="scout.toml"),
                  families=families)
    try:
        got = receive(kestrel_bin, f"tcp/127.0.0.1:{port}", n=1)  # running: past the session's start
    finally:
        err = stop(d)
    assert got.returncode == 0, (got.stderr, err)
    return err


def test_af_netlink_is_what_finds_the_scouting_interface(tmp_path, kestrel_bin):
    with_netlink = scouting_log(tmp_path, kestrel_bin, ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"])
    without = scouting_log(tmp_path, kestrel_bin, ["AF_UNIX", "AF_INET", "AF_INET6"])
    assert NO_INTERFACE in without, without
    assert (NO_INTERFACE in with_netlink) == (not multicast_interface()), with_netlink
