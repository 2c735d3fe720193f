"""Kestrel's Zenoh output ([zenoh] in the config) end to end, on loopback only (multicast scouting off
everywhere): real `kestrel run` daemons connect to Python eclipse-zenoh sessions of this test's; what arrives is
decoded with the independent decoder examples/clients/kestrel_client.py and checked against each daemon's own
record of what it published, its [output] file (JSON Lines of every published frame; `publish_ns` is
CLOCK_MONOTONIC, the clock of time.monotonic_ns(), so arrival times here and times there compare directly).

- bad [zenoh] settings: refused with exit 78 naming the field, by `check-config` and by `run`;
- [zenoh] listen: a daemon listens where told (stations, `kestrel subscribe --zenoh` among them, connect to it)
  and, with the default listen = [], nowhere;
- a link cut, or silenced (open but carrying nothing: only the lease can tell), and restored through a TCP proxy
  of this test's: the pipeline runs on at its rate, delivery resumes within 2 s with fresh frames only, and
  `status` accounts for the outage;
- a fleet of three daemons (two JSON, one binary) connected to a listening ground station: every hello by query,
  detections in order and identical to the daemon's record, status at >= 1 Hz with counters that add up;
  the example ground station (examples/clients/zenoh_ground_station.py) against the same fleet; liveliness
  tokens that go within 2 s of a SIGKILL and come back on restart; and a second subscriber that stops reading
  (a FIFO never read) slowing neither any daemon's pipeline nor delivery to the ground station.

The source paces frames (fps_hz = 30): rates are compared with a baseline measured in the same run, and waits are
on conditions (what has arrived), with deadlines that only guard against hangs."""
import ast
import collections
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zenoh

from conftest import CONST_MODEL, ROOT, free_port, need, synthetic_daemon_config

CLIENT = ROOT / "examples/clients/kestrel_client.py"
GROUND_STATION = ROOT / "examples/clients/zenoh_ground_station.py"
MODEL = CONST_MODEL
FPS = 30.0  # [source] fps_hz
STATUS_MS = 1000  # [zenoh] status_interval_ms
RECONNECT_MS = 500  # [zenoh] reconnect_ms
LEASE_MS = 3000  # [zenoh] lease_ms
HANG_S = 120  # deadline of every wait on a condition: a hang guard, not a speed bound
JSON_ENC, BINARY_ENC = "application/json", "application/octet-stream;kestrel-v1"
# Zenoh's default TX queue: 2 batches of at most 64 KiB per priority. Once a connection's socket stops taking
# bytes, a publisher's queue for it is full after at most this many more bytes of samples.
ZENOH_TX_QUEUE_BYTES = 2 * 65535


def load_client():
    spec = importlib.util.spec_from_file_location("kestrel_client", need(CLIENT, "Python client"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kc = load_client()
Rec = collections.namedtuple("Rec", "t_ns key kind encoding payload")  # a sample as it arrived


def now_ns():
    return time.monotonic_ns()


def as_rec(sample):
    return Rec(now_ns(), str(sample.key_expr), sample.kind, str(sample.encoding), sample.payload.to_bytes())


def endpoint(port):
    return f"tcp/127.0.0.1:{port}"


def zenoh_config(listen=(), connect=(), gossip=True):
    """A peer's config: loopback endpoints only, no multicast scouting (and no gossip where asked)."""
    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("listen/endpoints", json.dumps(list(listen)))
    conf.insert_json5("connect/endpoints", json.dumps(list(connect)))
    conf.insert_json5("scouting/multicast/enabled", "false")
    if not gossip:
        conf.insert_json5("scouting/gossip/enabled", "false")
    return conf


def decode(rec, labels=()):
    """A sample's payload decoded by kestrel_client as its encoding says: the protocol-v1 JSON object, or the
    binary payload of docs/protocol.md without the socket's 4-byte length prefix."""
    if rec.encoding == JSON_ENC:
        return kc.decode_json(rec.payload)
    assert rec.encoding == BINARY_ENC, f"{rec.key}: encoding {rec.encoding!r}"
    return kc.decode_binary(rec.payload, list(labels))


def wait_until(cond, what, daemons=(), timeout=HANG_S, poll=0.02):
    """cond()'s first true value; fails when a daemon exits meanwhile or after `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        for d in daemons:
            if d.proc.poll() is not None:
                pytest.fail(f"{d.prefix} exited ({d.proc.returncode}) while waiting for {what}:\n{d.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n" + "\n".join(f"{d.prefix}:\n{d.tail()}" for d in daemons))
        time.sleep(poll)


class Station:
    """A ground station: a Python zenoh peer listening on a loopback port, subscribed to kestrel/** and to the
    liveliness of kestrel/** (with history); it keeps every sample and every liveliness change with its
    CLOCK_MONOTONIC arrival time."""

    def __init__(self, gossip=True):
        self.port = free_port()
        self.endpoint = endpoint(self.port)
        self.lock = threading.Lock()
        self.samples, self.alive = [], []
        self.session = zenoh.open(zenoh_config(listen=[self.endpoint], gossip=gossip))
        self.sub = self.session.declare_subscriber("kestrel/**", self._on_sample)
        self.live = self.session.liveliness().declare_subscriber("kestrel/**", self._on_alive, history=True)

    def _on_sample(self, s):
        rec = as_rec(s)
        with self.lock:
            self.samples.append(rec)

    def _on_alive(self, s):
        rec = (now_ns(), str(s.key_expr), s.kind)
        with self.lock:
            self.alive.append(rec)

    def received(self, key, since_ns=0, until_ns=None):
        with self.lock:
            return [r for r in self.samples if r.key == key and r.t_ns >= since_ns
                    and (until_ns is None or r.t_ns < until_ns)]

    def liveliness(self, key, kind, since_ns=0):
        with self.lock:
            return [t for t, k, kd in self.alive if k == key and kd == kind and t >= since_ns]

    def query(self, selector):
        """Replies to session.get(selector): [Rec]."""
        out = []
        for reply in self.session.get(selector, timeout=10):
            assert reply.ok is not None, f"{selector}: error reply {reply.err.payload.to_bytes()!r}"
            out.append(as_rec(reply.ok))
        return out

    def close(self):
        self.session.close()


def daemon_config(out, zenoh_section):
    """The daemons' config here: as the other tests', with the self-test at its default (on)."""
    return synthetic_daemon_config(f'kind = "file"\npath = "{out}"', zenoh_section, fps_hz=FPS, selftest=True)


class Daemon:
    """`kestrel run` publishing under kestrel/t-<pid>-<index> to the given connect endpoints; its stderr drained
    by a thread; its [output] file is its record of every frame it published."""

    def __init__(self, kestrel_bin, tmp, index, fmt, connect, listen=None):
        self.bin, self.fmt = kestrel_bin, fmt
        self.prefix = f"kestrel/t-{os.getpid()}-{index}"
        self.out = tmp / f"out{index}.jsonl"
        self.config = tmp / f"kestrel{index}.toml"
        self.config.write_text(daemon_config(self.out, f"""enabled = true
mode = "peer"
connect = {json.dumps(connect)}
key_prefix = "{self.prefix}"
format = "{fmt}"
status_interval_ms = {STATUS_MS}
multicast_scouting = false
reconnect_ms = {RECONNECT_MS}
lease_ms = {LEASE_MS}""" + ("" if listen is None else f"\nlisten = {json.dumps(listen)}")))
        self.proc, self.log = None, []

    def key(self, what):
        return f"{self.prefix}/{what}"

    def start(self):
        self.log = []
        self.proc = subprocess.Popen([str(self.bin), "run", "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
        log, stderr = self.log, self.proc.stderr
        threading.Thread(target=lambda: [log.append(line) for line in stderr], daemon=True).start()

    def tail(self):
        return "".join(self.log[-30:])

    def frames(self):
        """Every frame in the [output] file so far (a line still being written is left out)."""
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().split("\n")[:-1]]

    def published(self, t0_ns, t1_ns):
        return [f for f in self.frames() if t0_ns <= f["publish_ns"] < t1_ns]

    def fps(self, t0_ns, t1_ns):
        """The pipeline's published frames per second over [t0, t1), from its own record."""
        return len(self.published(t0_ns, t1_ns)) / ((t1_ns - t0_ns) / 1e9)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        """SIGTERM; the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def detections(station, daemon, labels=(), since_ns=0, until_ns=None):
    """[(arrival ns, decoded detections message)] of a daemon, in arrival order."""
    out = []
    for r in station.received(daemon.key("detections"), since_ns, until_ns):
        m = decode(r, labels)
        assert m["type"] == "detections", (r.key, m)
        out.append((r.t_ns, m))
    return out


def statuses(station, daemon, since_ns=0):
    out = []
    for r in station.received(daemon.key("status"), since_ns):
        m = decode(r)
        assert m["type"] == "status", (r.key, m)
        out.append((r.t_ns, m))
    return out


def record(daemon):
    """The daemon's [output] file by (seq, capture_ns), each frame as kestrel_client normalises it."""
    return {(f["seq"], f["capture_ns"]): kc.decode_json(json.dumps(f)) for f in daemon.frames()}


# ------------------------------------------------------------------------------------------ bad configuration

VALID = 'enabled = true\nconnect = ["tcp/127.0.0.1:7447"]\nmulticast_scouting = false\nkey_prefix = "kestrel/ok"'
BAD = {  # case: (the [zenoh] section, the field the error must name)
    "connect_not_a_host": (VALID.replace('"tcp/127.0.0.1:7447"', '"tcp/not a host"'), "zenoh.connect"),
    "connect_nonsense": (VALID.replace('"tcp/127.0.0.1:7447"', '"nonsense"'), "zenoh.connect"),
    "listen_nonsense": (VALID + '\nlisten = ["nonsense"]', "zenoh.listen"),
    "mode_router": (VALID + '\nmode = "router"', "zenoh.mode"),
    "key_prefix_star": (VALID.replace('"kestrel/ok"', '"kestrel/*"'), "zenoh.key_prefix"),
    "key_prefix_double_star": (VALID.replace('"kestrel/ok"', '"kestrel/**"'), "zenoh.key_prefix"),
}


def test_a_valid_zenoh_section_passes_check_config(kestrel_bin, tmp_path):
    """The control for the refusals below: the same configuration with the valid [zenoh] section they are made
    from is accepted, so an exit 78 there is the bad field's doing."""
    cfg = tmp_path / "ok.toml"
    cfg.write_text(daemon_config(tmp_path / "out.jsonl", VALID))
    r = subprocess.run([str(kestrel_bin), "check-config", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_zenoh_settings_exit_78_naming_the_field(kestrel_bin, tmp_path, case):
    """An unparsable endpoint, an unknown mode, a key prefix with wildcards: `check-config` and `run` both exit
    78 (EX_CONFIG) with a message naming the [zenoh] field, and `run` does so without starting."""
    section, field = BAD[case]
    cfg = tmp_path / f"{case}.toml"
    cfg.write_text(daemon_config(tmp_path / "out.jsonl", section))
    for cmd in ("check-config", "run"):
        try:
            r = subprocess.run([str(kestrel_bin), cmd, "--config", str(cfg)], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "RUST_LOG": "warn"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"`kestrel {cmd}` with {case} still running after 60 s")
        assert r.returncode == 78, f"kestrel {cmd} ({case}): rc {r.returncode}\n{r.stderr}"
        assert field in r.stderr, f"kestrel {cmd} ({case}): {field} not named in\n{r.stderr}"
    assert not (tmp_path / "out.jsonl").exists(), "`run` published frames with a bad [zenoh] section"


def tcp_sockets():
    """Established IPv4 TCP sockets: [(local port, remote port, tx_queue, rx_queue, inode)] (/proc/net/tcp)."""
    out = []
    for line in open("/proc/net/tcp").readlines()[1:]:
        f = line.split()
        if f[3] != "01":
            continue
        tx, rx = (int(x, 16) for x in f[4].split(":"))
        out.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), tx, rx, int(f[9])))
    return out


def socket_inodes(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def proc_address(hexaddr):
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order; x86 and arm64: little-endian)."""
    raw = bytes.fromhex(hexaddr)
    return str(ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))))


def listening(pid):
    """The (address, port) of every TCP socket of a process's in the LISTEN state (IPv4 and IPv6)."""
    mine, out = socket_inodes(pid), set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(path).readlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[9]) in mine:
                addr, port = f[1].rsplit(":", 1)
                out.add((proc_address(addr), int(port, 16)))
    return out


def test_daemon_listens_where_configured_and_nowhere_else(kestrel_bin, tmp_path):
    """[zenoh] listen, the other direction: a daemon with listen = ["tcp/127.0.0.1:P"] and no connect listens on
    P alone, and stations that connect to it get its hello (by query), its liveliness token and its detections
    (binary, equal to its record): a Python peer, and `kestrel subscribe --zenoh --connect` (one JSON object per
    message, each with the daemon's key). A second daemon with the default listen = [] that connects to the first
    listens on no port at all: it opens nothing to the network it was not told to."""
    need(MODEL, "generated model")
    port = free_port()
    a = Daemon(kestrel_bin, tmp_path, 7, "binary", [], listen=[endpoint(port)])
    b = Daemon(kestrel_bin, tmp_path, 8, "json", [endpoint(port)])
    got = []
    session = None

    def b_connected():  # its zenoh session is up: it holds a connection to the first daemon
        mine = socket_inodes(b.proc.pid)
        return any(rport == port and inode in mine for _, rport, _, _, inode in tcp_sockets())

    try:
        a.start()
        b.start()
        session = zenoh.open(zenoh_config(connect=[endpoint(port)], gossip=False))
        sub = session.declare_subscriber(a.key("detections"), lambda s: got.append(as_rec(s)))
        wait_until(lambda: len(got) >= 10, "10 detections from the listening daemon", [a, b])
        hello = [decode(as_rec(r.ok)) for r in session.get(a.key("hello"), timeout=10) if r.ok]
        tokens = [str(r.ok.key_expr) for r in session.liveliness().get("kestrel/**", timeout=10) if r.ok]
        cli = subprocess.run([str(kestrel_bin), "subscribe", "--zenoh", "--connect", endpoint(port), "--key",
                              a.prefix, "--count", "5"], capture_output=True, text=True, timeout=60)
        wait_until(b_connected, "the second daemon connected to the first", [a, b])
        listen_a, listen_b = listening(a.proc.pid), listening(b.proc.pid)
        sub.undeclare()
    finally:
        if session is not None:
            session.close()
        rcs = a.stop(), b.stop()
    assert rcs == (0, 0), f"exit codes {rcs}:\n{a.tail()}\n{b.tail()}"

    assert listen_a == {("127.0.0.1", port)}, f"the daemon told to listen on 127.0.0.1:{port} listens on {listen_a}"
    assert len(hello) == 1 and hello[0]["zenoh_key"] == a.prefix and hello[0]["format"] == "binary", hello
    assert a.key("alive") in tokens, tokens
    mine = record(a)
    dets = [decode(r, hello[0]["labels"]) for r in got]
    assert all(r.encoding == BINARY_ENC for r in got)
    assert [m["seq"] for m in dets] == sorted({m["seq"] for m in dets})
    for m in dets:
        assert mine[(m["seq"], m["capture_ns"])] == m, f"seq {m['seq']} differs from the daemon's record"

    assert cli.returncode == 0, f"kestrel subscribe --zenoh: rc {cli.returncode}\n{cli.stderr}"
    msgs = [json.loads(line) for line in cli.stdout.splitlines()]
    assert msgs and all(m["key"] == a.prefix for m in msgs), cli.stdout[:2000]
    cli_dets = [m for m in msgs if m["type"] == "detections"]
    assert len(cli_dets) == 5 and any(m["type"] == "hello" for m in msgs), [m["type"] for m in msgs]
    for m in cli_dets:
        want = mine[(m["seq"], m["capture_ns"])]
        assert [x["label"] for x in m["detections"]] == [x["label"] for x in want["detections"]], m["seq"]
    assert listen_b == set(), f"a daemon with listen = [] listens on {listen_b} (address, port)"


# ------------------------------------------------------------------------------------------------ link faults

class Proxy:
    """A TCP proxy from a loopback port to another (threads). cut(): every proxied connection closed and the
    listening socket too (connections refused until restore()); silence(): the listening socket closed, and the
    proxied connections stay open but carry nothing any more (what each side sends is read and dropped: a link
    that went out of range, which only a lease can notice); restore(): listening again on the same port (after
    silence(), the silent connections are closed first)."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.port = free_port()
        self.endpoint = endpoint(self.port)
        self.lock = threading.Lock()
        self.conns, self.accepted = [], 0
        self.silent = None
        self.restore()

    def restore(self):
        if self.silent is not None:
            self._close(self.silent)
            self.silent = None
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.settimeout(0.05)
        self.listener, self.stopping = ls, threading.Event()
        self.acceptor = threading.Thread(target=self._accept, args=(ls, self.stopping), daemon=True)
        self.acceptor.start()

    def _accept(self, ls, stopping):
        while not stopping.is_set():
            try:
                down, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                down.close()
                continue
            down.settimeout(None)
            up.settimeout(None)
            pair = [down, up]
            with self.lock:
                self.conns.append(pair)
                self.accepted += 1
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b, pair), daemon=True).start()

    def _pump(self, a, b, pair):
        try:
            while data := a.recv(65536):
                if self.silent is None or pair not in self.silent:
                    b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _stop_listening(self):
        self.stopping.set()
        self.acceptor.join(timeout=10)
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        return conns

    @staticmethod
    def _close(conns):
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self):
        """The number of connections cut."""
        conns = self._stop_listening()
        self._close(conns)
        return len(conns)

    def silence(self):
        """The number of connections silenced."""
        self.silent = self._stop_listening()
        return len(self.silent)


CUT_S = 3.0  # a few reconnect periods
SILENT_S = LEASE_MS / 1000 + 2.0  # long enough for the lease to notice


def link_fault(kestrel_bin, tmp_path, silent):
    """One daemon connected to a station (no gossip: the proxy is the only way) through a Proxy; after a
    baseline the proxy cuts (or silences) the link, then restores it. Checks what holds for either fault and
    returns what the caller checks further."""
    need(MODEL, "generated model")
    station = Station(gossip=False)
    proxy = Proxy(station.port)
    d = Daemon(kestrel_bin, tmp_path, 9, "json", [proxy.endpoint])
    det_key, outage_s = d.key("detections"), SILENT_S if silent else CUT_S
    try:
        d.start()
        first = wait_until(lambda: station.received(det_key), "first detection through the proxy", [d])[0]
        # a baseline of CUT_S, and a status from before the fault
        t_a = first.t_ns
        wait_until(lambda: now_ns() - t_a > CUT_S * 1e9 and statuses(station, d, t_a), "baseline", [d])
        t_fault = now_ns()
        n = proxy.silence() if silent else proxy.cut()
        t_fault_done = now_ns()
        assert n == 1, f"{n} proxied connections at the fault (the daemon should hold one)"
        time.sleep(outage_s)
        assert d.proc.poll() is None, f"the daemon exited during the outage:\n{d.tail()}"
        t_restore = now_ns()
        proxy.restore()
        first_new = wait_until(lambda: station.received(det_key, t_restore), "detections after the restore", [d])[0]
        st = wait_until(lambda: statuses(station, d, first_new.t_ns), "a status after the reconnect", [d])[0][1]
        # a little more delivery, for the no-replay check over several frames
        wait_until(lambda: len(station.received(det_key, t_restore)) >= 10, "10 detections after the restore", [d])
    finally:
        rc = d.stop()
        proxy.cut()
        station.close()
    assert rc == 0, f"daemon exit code {rc} after SIGTERM:\n{d.tail()}"

    base_fps = d.fps(t_a, t_fault)
    down_fps = d.fps(t_fault_done, t_restore)
    assert base_fps > 0 and down_fps >= 0.9 * base_fps, f"pipeline {down_fps:.1f} fps while down, {base_fps:.1f} before"
    during = station.received(det_key, t_fault_done + 50_000_000, t_restore)
    assert not during, f"{len(during)} detections reached the station while the link was down"

    before = detections(station, d, until_ns=t_fault)
    after = detections(station, d, since_ns=t_restore)
    seqs_before, seqs_after = [m["seq"] for _, m in before], [m["seq"] for _, m in after]
    assert seqs_before == sorted(set(seqs_before)) and seqs_after == sorted(set(seqs_after)), "seq not increasing"
    assert seqs_after[0] > seqs_before[-1]
    assert proxy.accepted >= 2, f"{proxy.accepted} connections through the proxy: the reconnect went elsewhere"
    mine = record(d)
    for _, m in before + after:
        assert mine[(m["seq"], m["capture_ns"])] == m, f"seq {m['seq']} differs from the daemon's record"

    reconnect_s = (first_new.t_ns - t_restore) / 1e9
    assert reconnect_s < 2.0, f"first detection {reconnect_s:.2f} s after the restore (reconnect_ms {RECONNECT_MS})"
    t_first, m_first = after[0]
    age_s = (t_first - m_first["capture_ns"]) / 1e9
    assert 0 <= age_s < 0.5, f"the first detection after the restore was captured {age_s:.3f} s before it arrived"
    frames = d.frames()
    during_outage = [f["seq"] for f in frames if f["publish_ns"] < t_restore and f["seq"] > seqs_before[-1]]
    assert during_outage, "the daemon published nothing during the outage"
    assert m_first["seq"] > max(during_outage), (m_first["seq"], max(during_outage))
    stale = [m["seq"] for _, m in after if m["capture_ns"] < t_restore - 100_000_000]
    assert not stale, f"frames captured during the outage delivered after the restore: seq {stale}"

    z = st["zenoh"]
    assert z["key_prefix"] == d.prefix and z["mode"] == "peer" and z["sessions"] >= 1, z
    assert z["matching"] is True and z["down_ms"] is None and z["outages"] >= 1, z
    assert z["last_outage"] is not None, z
    _, st_before = [s for s in statuses(station, d) if s[0] < t_fault][-1]
    grew = z["unmatched"] - st_before["zenoh"]["unmatched"]
    missed = z["last_outage"]["missed"]
    assert abs(grew - missed) <= 2, f"unmatched grew by {grew} over the outage, last_outage.missed {missed}"
    print(f"{'silent' if silent else 'cut'}: {base_fps:.1f} fps before, {down_fps:.1f} while down; back "
          f"{reconnect_s:.2f} s after the restore, first frame {age_s * 1e3:.0f} ms old, seq {seqs_before[-1]} -> "
          f"{m_first['seq']}; status {z}")
    return dict(station=station, daemon=d, z=z, frames=frames, t_fault=t_fault, t_fault_done=t_fault_done,
                t_restore=t_restore, t_first=t_first, last_before=seqs_before[-1], first_after=m_first["seq"])


def test_link_cut_and_restored(kestrel_bin, tmp_path):
    """The daemon connects to the station through a TCP proxy, which cuts the link (closes the connection and
    refuses new ones) for CUT_S, then listens again. While down the daemon keeps running at its rate (its
    [output] file) and nothing reaches the station; within 2 s of the restore detections arrive again through the
    proxy, the first of them fresh (captured < 0.5 s before it arrived) and past every frame published during the
    outage, and no frame captured during the outage is delivered afterwards (no replay). The next `status`
    counts the outage: outages >= 1, `unmatched` grew by last_outage.missed, which is the number of frames the
    daemon published between the last one delivered before the cut and the first one after (within 5: those put
    into the dying link count as sent), and last_outage.ms is the outage as seen from here (within 250 ms)."""
    r = link_fault(kestrel_bin, tmp_path, silent=False)
    z, frames = r["z"], r["frames"]
    undelivered = [f for f in frames if r["last_before"] < f["seq"] < r["first_after"]]
    missed = z["last_outage"]["missed"]
    assert abs(missed - len(undelivered)) <= 5, (
        f"last_outage.missed {missed}, but {len(undelivered)} frames published between seq {r['last_before']} "
        f"(last delivered before the cut) and {r['first_after']} (first after)")
    outage_ms = z["last_outage"]["ms"]
    lo, hi = (r["t_restore"] - r["t_fault_done"]) / 1e6 - 250, (r["t_first"] - r["t_fault"]) / 1e6 + 250
    assert lo <= outage_ms <= hi, f"last_outage.ms {outage_ms}, outage seen here {lo + 250:.0f}..{hi - 250:.0f} ms"


def test_silent_link_loss_is_noticed_within_the_lease(kestrel_bin, tmp_path):
    """As above, but the proxy silences the link instead (the connection stays open and carries nothing: a link
    out of range) for lease_ms + 2 s. Besides what holds for a cut: the daemon notices within lease_ms (+ 1 s)
    of the silence (the start of its outage, last_outage.ms before it matched again, which is just before the
    first new detection arrived), the station drops the daemon's liveliness token within as long, and
    last_outage.missed is the number of frames the daemon published during its outage (within 5)."""
    r = link_fault(kestrel_bin, tmp_path, silent=True)
    z, d, station = r["z"], r["daemon"], r["station"]
    outage_ns = z["last_outage"]["ms"] * 1_000_000
    noticed_s = (r["t_first"] - outage_ns - r["t_fault"]) / 1e9
    assert -0.25 <= noticed_s <= LEASE_MS / 1000 + 1.0, (
        f"the daemon's outage began {noticed_s:.2f} s after the link went silent (lease_ms {LEASE_MS})")
    gone = station.liveliness(d.key("alive"), zenoh.SampleKind.DELETE, r["t_fault"])
    assert gone, "the station never saw the daemon's liveliness token go"
    gone_s = (gone[0] - r["t_fault"]) / 1e9
    assert gone_s <= LEASE_MS / 1000 + 1.0, f"token gone {gone_s:.2f} s after the link went silent"
    in_outage = [f for f in r["frames"] if r["t_first"] - outage_ns <= f["publish_ns"] < r["t_first"]]
    missed = z["last_outage"]["missed"]
    assert abs(missed - len(in_outage)) <= 5, f"last_outage.missed {missed}, {len(in_outage)} frames in the outage"


# ------------------------------------------------------------------------------------------------------ fleet

STALLER = r"""
import sys, threading, time, zenoh
port = int(sys.argv[1])
conf = zenoh.Config()
conf.insert_json5("listen/endpoints", '["tcp/127.0.0.1:%d#so_rcvbuf=4096"]' % port)
conf.insert_json5("scouting/multicast/enabled", "false")
conf.insert_json5("scouting/gossip/enabled", "false")
session = zenoh.open(conf)
sub = session.declare_subscriber("kestrel/**", zenoh.handlers.FifoChannel(2))
stall = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stall.set()), daemon=True).start()
print("ready", flush=True)
seen = set()
while not stall.is_set():
    s = sub.try_recv()
    if s is None:
        time.sleep(0.002)
    elif str(s.key_expr) not in seen:
        seen.add(str(s.key_expr))
        print("first", s.key_expr, flush=True)
print("stalled", flush=True)
threading.Event().wait()  # the FIFO is never read again: once full, zenoh stops reading the connections
"""


class Staller:
    """A second subscriber in its own process (its own zenoh runtime): a peer listening on a loopback port
    with a small socket receive buffer, subscribed to kestrel/** through a FIFO of 2 samples that it reads until
    told to stall, then never again. The daemons connect to it with a small send buffer
    (`#so_sndbuf=4096` on the endpoint), so that once it stops reading the connections back up within a second
    or so rather than after megabytes of kernel buffer."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = endpoint(self.port) + "#so_sndbuf=4096"
        self.proc = subprocess.Popen([sys.executable, "-c", STALLER, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=lambda: [self.lines.append(line.strip()) for line in self.proc.stdout],
                         daemon=True).start()
        wait_until(lambda: "ready" in self.lines, "staller ready", timeout=60)

    def seen(self):
        return {line.split()[1] for line in list(self.lines) if line.startswith("first ")}

    def stall(self):
        self.proc.stdin.write("stall\n")
        self.proc.stdin.flush()
        wait_until(lambda: "stalled" in self.lines, "staller stalled", timeout=60)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def backlog(daemon, staller):
    """[(bytes the daemon's kernel holds unacknowledged, bytes waiting unread at the staller)] for each of the
    daemon's connections to the staller."""
    mine = socket_inodes(daemon.proc.pid)
    socks = tcp_sockets()
    out = []
    for lport, rport, tx, _, inode in socks:
        if rport == staller.port and inode in mine:
            unread = [rx for lp, rp, _, rx, _ in socks if lp == staller.port and rp == lport]
            out.append((tx, unread[0] if unread else 0))
    return out


class Fleet:
    def __init__(self, station, staller, daemons, t_ready):
        self.station, self.staller, self.daemons, self.t_ready = station, staller, daemons, t_ready

    def labels(self):
        """Each daemon's labels from its hello (by query)."""
        out = {}
        for r in self.station.query("kestrel/*/hello"):
            out[r.key.rsplit("/", 1)[0]] = decode(r)["labels"]
        return out


@pytest.fixture(scope="module")
def fleet(kestrel_bin, tmp_path_factory):
    """Three daemons (JSON, binary, JSON) connected to a listening station and to the staller; ready when both
    have detections from each. At the end every daemon must exit 0 on SIGTERM."""
    need(MODEL, "generated model")
    tmp = tmp_path_factory.mktemp("zenoh-fleet")
    station = Station()
    staller = Staller()
    daemons = [Daemon(kestrel_bin, tmp, i, fmt, [station.endpoint, staller.endpoint])
               for i, fmt in enumerate(["json", "binary", "json"])]
    codes = {}
    try:
        for d in daemons:
            d.start()
        wait_until(lambda: all(station.received(d.key("detections")) for d in daemons),
                   "detections from every daemon at the station", daemons)
        wait_until(lambda: all(d.key("detections") in staller.seen() for d in daemons),
                   "detections from every daemon at the staller", daemons)
        yield Fleet(station, staller, daemons, now_ns())
    finally:
        for d in daemons:
            codes[d.prefix] = (d.stop(), d.tail())
        staller.close()
        station.close()
    bad = {p: c for p, c in codes.items() if c[0] != 0}
    assert not bad, f"exit codes after SIGTERM: {bad}"


def test_fleet_hello_detections_and_status(fleet):
    """Every daemon answers `get kestrel/*/hello` with its hello (zenoh_key = its prefix, format = its
    [zenoh] format, in that encoding) and `get <prefix>/status` with its latest status; its detections arrive in
    strictly increasing seq, decoded by kestrel_client equal to the frames in its own record, >= 90 % of what it
    published meanwhile; its status arrives at >= 1 Hz (every gap < 1.5 s) with zenoh counters that add up: sent +
    unmatched + behind grows by the frames it published between two statuses, and while the station is there
    matching is true and nothing is unmatched, failed or in outage."""
    station, daemons = fleet.station, fleet.daemons
    hellos = {r.key: r for r in station.query("kestrel/*/hello")}
    assert set(hellos) == {d.key("hello") for d in daemons}, sorted(hellos)
    for d in daemons:
        r = hellos[d.key("hello")]
        assert r.encoding == (JSON_ENC if d.fmt == "json" else BINARY_ENC), (d.prefix, r.encoding)
        h = decode(r)
        assert h["type"] == "hello" and h["zenoh_key"] == d.prefix and h["format"] == d.fmt, h
        assert h["labels"] and all(isinstance(x, str) for x in h["labels"]), h
    labels = fleet.labels()

    # A window of at least 5 status periods from when the fleet was ready.
    t0 = fleet.t_ready
    wait_until(lambda: all(len(statuses(station, d, t0)) >= 6 for d in daemons), "6 statuses from each", daemons)
    t1 = now_ns()
    for d in daemons:
        sts = statuses(station, d, t0)
        times = [t for t, _ in sts]
        gaps = [(b - a) / 1e9 for a, b in zip(times, times[1:])]
        assert all(g < 1.5 for g in gaps), f"{d.prefix}: status gaps {gaps}"
        assert len(gaps) / ((times[-1] - times[0]) / 1e9) >= 0.9, f"{d.prefix}: status gaps {gaps}"
        for r in station.received(d.key("status"), t0):
            assert r.encoding == (JSON_ENC if d.fmt == "json" else BINARY_ENC), (d.prefix, r.encoding)
        for _, m in sts:
            z = m["zenoh"]
            assert z["key_prefix"] == d.prefix and z["mode"] == "peer", z
            assert z["sessions"] >= 2, f"{d.prefix}: {z['sessions']} sessions, but station and staller are there"
            assert z["matching"] is True and z["down_ms"] is None and z["outages"] == 0, z
            assert z["last_outage"] is None and z["put_errors"] == 0, z
        published = [f["publish_ns"] for f in d.frames()]
        for (_, a), (_, b) in zip(sts, sts[1:]):
            za, zb = a["zenoh"], b["zenoh"]
            assert zb["sent"] > za["sent"] and zb["unmatched"] == za["unmatched"], (za, zb)
            counted = sum(zb[k] - za[k] for k in ("sent", "unmatched", "behind"))
            there = sum(1 for p in published if a["time_ns"] < p <= b["time_ns"])
            assert abs(counted - there) <= 2, f"{d.prefix}: counters grew by {counted}, {there} frames published"

        recs = station.received(d.key("detections"), t0, t1)
        assert all(r.encoding == (JSON_ENC if d.fmt == "json" else BINARY_ENC) for r in recs), d.prefix
        dets = [m for _, m in detections(station, d, labels[d.prefix], t0, t1)]
        seqs = [m["seq"] for m in dets]
        assert seqs == sorted(set(seqs)), f"{d.prefix}: seq not strictly increasing"
        mine = record(d)
        for m in dets:
            assert mine.get((m["seq"], m["capture_ns"])) == m, f"{d.prefix} seq {m['seq']}: not as recorded"
            assert m["detections"], f"{d.prefix} seq {m['seq']}: no detections from the constant model"
        in_range = [k for k in mine if seqs[0] <= k[0] <= seqs[-1]]
        assert len(seqs) >= 0.9 * len(in_range), f"{d.prefix}: {len(seqs)} of {len(in_range)} frames arrived"

    latest = {r.key: decode(r) for r in station.query("kestrel/*/status")}
    assert set(latest) == {d.key("status") for d in daemons}, sorted(latest)
    for d in daemons:
        m = latest[d.key("status")]
        assert m["type"] == "status" and m["zenoh"]["key_prefix"] == d.prefix, m
        assert now_ns() - m["time_ns"] < 3 * STATUS_MS * 1e6, "the queried status is not the latest"


def test_ground_station_example(fleet):
    """examples/clients/zenoh_ground_station.py (at most ten lines of code), connected to the station as a zenoh
    client, prints each daemon's detections: one line per frame naming the daemon's key, seqs increasing, the
    labels (class<id> for the binary daemon) and scores of the frame with that seq in the daemon's record. With
    --connect it holds no UDP socket (no multicast scouting), and Ctrl-C (SIGINT) ends it with exit 0."""
    path = need(GROUND_STATION, "ground-station example")
    tree = ast.parse(path.read_text())
    doc_lines = set()
    if ast.get_docstring(tree) is not None:
        doc_lines = set(range(tree.body[0].lineno, tree.body[0].end_lineno + 1))
    code = [line for i, line in enumerate(path.read_text().splitlines(), 1)
            if i not in doc_lines and line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 10, f"{len(code)} lines of code in the example:\n" + "\n".join(code)

    station, daemons = fleet.station, fleet.daemons
    p = subprocess.Popen([sys.executable, str(path), "--connect", station.endpoint], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines, err = [], []
    threading.Thread(target=lambda: [lines.append(line.rstrip("\n")) for line in p.stdout], daemon=True).start()
    threading.Thread(target=lambda: [err.append(line) for line in p.stderr], daemon=True).start()
    try:
        def enough():
            if p.poll() is not None:
                pytest.fail(f"the example exited ({p.returncode}):\n{''.join(err)}")
            keys = collections.Counter(line.split()[0] for line in list(lines))
            return all(keys[d.key("detections")] >= 10 for d in daemons)
        wait_until(enough, "10 lines per daemon from the example", daemons)
        mine = socket_inodes(p.pid)
        udp = [line.split()[1] for path in ("/proc/net/udp", "/proc/net/udp6")
               for line in open(path).readlines()[1:] if int(line.split()[9]) in mine]
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode == 0, f"the example's exit code after SIGINT: {p.returncode}\n{''.join(err)}"
    assert not udp, f"the example holds UDP sockets {udp} although it was given --connect"
    by_key = collections.defaultdict(list)
    for line in list(lines):
        key, seq, *dets = line.split()
        by_key[key].append((int(seq), [tuple(x.rsplit(":", 1)) for x in dets]))
    assert set(by_key) == {d.key("detections") for d in daemons}, sorted(by_key)
    for d in daemons:
        printed = by_key[d.key("detections")]
        seqs = [s for s, _ in printed]
        assert seqs == sorted(set(seqs)), f"{d.prefix}: seqs printed out of order: {seqs}"
        frames = {f["seq"]: f for f in d.frames()}
        for seq, dets in printed:
            want = [(x["label"] if d.fmt == "json" else f"class{x['class_id']}", f"{x['score']:.3f}")
                    for x in frames[seq]["detections"]]
            assert dets == want, f"{d.prefix} seq {seq}: printed {dets}, published {want}"


def test_liveliness_goes_on_sigkill_and_returns_on_restart(fleet):
    """Each daemon's liveliness token <prefix>/alive is there (PUT); SIGKILL one and the station sees it go
    (DELETE) within 2 s while the others stay; restart it with the same config and the token comes back (PUT),
    its hello is answered again and its detections flow again."""
    station, daemons = fleet.station, fleet.daemons
    for d in daemons:
        assert station.liveliness(d.key("alive"), zenoh.SampleKind.PUT), f"no liveliness token for {d.prefix}"
    victim, others = daemons[1], [daemons[0], daemons[2]]
    t_kill = now_ns()
    victim.kill()
    gone = wait_until(lambda: station.liveliness(victim.key("alive"), zenoh.SampleKind.DELETE, t_kill),
                      f"DELETE of {victim.key('alive')}", others)[0]
    assert (gone - t_kill) / 1e9 < 2.0, f"token gone {(gone - t_kill) / 1e9:.2f} s after SIGKILL"
    for d in others:
        assert not station.liveliness(d.key("alive"), zenoh.SampleKind.DELETE), f"{d.prefix}'s token went too"

    t_start = now_ns()
    victim.start()
    back = wait_until(lambda: station.liveliness(victim.key("alive"), zenoh.SampleKind.PUT, t_start),
                      f"PUT of {victim.key('alive')} after the restart", daemons)[0]
    assert back > gone
    wait_until(lambda: len(station.received(victim.key("detections"), t_start)) >= 5,
               "detections after the restart", daemons)
    assert victim.key("hello") in {r.key for r in station.query("kestrel/*/hello")}


BASE_S = 4.0  # the window of each rate measurement


def test_a_stalled_subscriber_slows_no_daemon(fleet):
    """A second subscriber stops reading (its FIFO is never read again). First the daemons' connections to it
    must back up (bytes unacknowledged in the daemon's kernel and unread at the subscriber's), then after time
    for each daemon's zenoh TX queue to fill (2 x 64 KiB at the byte rate of its detection samples measured in the
    baseline, +1 s), each daemon's pipeline rate (its [output] file) and the rate of its detections at the station
    over BASE_S must be >= 90 % of the baseline measured just before, with no stalled subscriber; its status must
    keep arriving (gaps < 1.5 s) throughout."""
    station, staller, daemons = fleet.station, fleet.staller, fleet.daemons
    t0 = now_ns()
    time.sleep(BASE_S)
    t1 = now_ns()
    base = {}
    for d in daemons:
        recs = station.received(d.key("detections"), t0, t1)
        base[d.prefix] = (d.fps(t0, t1), len(recs) / ((t1 - t0) / 1e9), sum(len(r.payload) for r in recs) /
                          ((t1 - t0) / 1e9))
        assert base[d.prefix][0] > 0 and base[d.prefix][1] > 0, (d.prefix, base[d.prefix])

    t_stall = now_ns()
    staller.stall()
    for _ in range(2):  # twice, 0.5 s apart: a connection that is backed up, not one caught mid-send
        wait_until(lambda: all(any(tx > 0 and rx > 0 for tx, rx in backlog(d, staller)) for d in daemons),
                   "the daemons' connections to the stalled subscriber to back up", daemons, timeout=60)
        time.sleep(0.5)
    hold = max(ZENOH_TX_QUEUE_BYTES / b for _, _, b in base.values()) + 1.0
    time.sleep(hold)
    t2 = now_ns()
    time.sleep(BASE_S)
    t3 = now_ns()
    for d in daemons:
        assert d.proc.poll() is None, f"{d.prefix} exited:\n{d.tail()}"
        fps0, rx0, _ = base[d.prefix]
        fps1 = d.fps(t2, t3)
        rx1 = len(station.received(d.key("detections"), t2, t3)) / ((t3 - t2) / 1e9)
        assert fps1 >= 0.9 * fps0, f"{d.prefix}: pipeline {fps1:.1f} fps with a stalled subscriber, {fps0:.1f} before"
        assert rx1 >= 0.9 * rx0, f"{d.prefix}: station got {rx1:.1f}/s with a stalled subscriber, {rx0:.1f} before"
        times = [t for t, _ in statuses(station, d, t_stall)]
        gaps = [(b - a) / 1e9 for a, b in zip([t_stall] + times, times + [t3])]
        assert all(g < 1.5 for g in gaps), f"{d.prefix}: status gaps with a stalled subscriber {gaps}"
        print(f"{d.prefix} ({d.fmt}): pipeline {fps0:.1f} -> {fps1:.1f} fps, station {rx0:.1f} -> {rx1:.1f}/s, "
              f"backlog {backlog(d, staller)}, held {hold:.1f} s, last status {statuses(station, d)[-1][1]['zenoh']}")
