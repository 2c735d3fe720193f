#!/usr/bin/python3
"""Run the installed daemon roughly as kestrel.service would, without systemd as PID 1 (the build machine has
none): as user kestrel with groups kestrel + video, no_new_privs, W^X (PR_SET_MDWE, what
MemoryDenyWriteExecute=yes does on Linux >= 6.3), and a seccomp filter built from this machine's systemd sets
exactly as the unit states them (SystemCallFilter=@system-service ~@privileged, SystemCallErrorNumber=EPERM).
NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID point at this script. Passes when the daemon becomes READY,
publishes detections on its socket (group kestrel), pings the watchdog, and stops with STOPPING=1 and exit 0 on
SIGTERM, with no "Operation not permitted" in its log. The mount/namespace settings (ProtectSystem=, …) are not
emulated here.

Needs root and Debian's python3-seccomp (the system python: /usr/bin/python3).
usage: sandbox.py  (after the .deb is installed)
"""
import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time

import seccomp  # python3-seccomp

UNIT = "/usr/lib/systemd/system/kestrel.service"


def expand(group, seen=None):
    """The syscalls of a systemd syscall group, nested groups expanded (systemd-analyze syscall-filter)."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], check=True, capture_output=True, text=True)
    names = set()
    for line in out.stdout.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            names |= expand(line, seen)
        else:
            names.add(line)
    return names


def unit_filter():
    """The unit's SystemCallFilter= lines, in order: [(allow?, group), ...]."""
    rules = []
    for line in open(UNIT):
        line = line.strip()
        if line.startswith("SystemCallFilter="):
            for word in line.split("=", 1)[1].split():
                rules.append((not word.startswith("~"), word.lstrip("~")))
    assert rules and rules[0][0], f"expected an allow list first in {UNIT}: {rules}"
    return rules


def fail(msg, log=""):
    print(f"sandbox check FAILED: {msg}\n{log}", file=sys.stderr)
    sys.exit(1)


def main():
    rules = unit_filter()
    allowed = set()
    for allow, group in rules:
        names = expand(group) if group.startswith("@") else {group}
        allowed = allowed | names if allow else allowed - names
    print(f"   filter {' '.join(('' if a else '~') + g for a, g in rules)}: {len(allowed)} system calls allowed",
          file=sys.stderr)

    user = pwd.getpwnam("kestrel")
    groups = [grp.getgrnam("kestrel").gr_gid] + [g.gr_gid for g in grp.getgrall() if g.gr_name == "video"]
    work = tempfile.mkdtemp(prefix="kestrel-sandbox-")
    os.chmod(work, 0o755)
    run = os.path.join(work, "run")
    cache = os.path.join(work, "cache")
    for d in (run, cache):
        os.mkdir(d, 0o750)
        os.chown(d, user.pw_uid, user.pw_gid)
    sock_path = os.path.join(run, "detections.sock")
    config = os.path.join(work, "kestrel.toml")
    with open(config, "w") as f:
        f.write(f"""
[source]
kind = "synthetic"
format = "jpeg"
width = 640
height = 480
fps_hz = 5.0
[model]
path = "/usr/share/kestrel/models/yolov3-tiny-416.onnx"
[runtime]
ort_lib = "/usr/lib/kestrel/libonnxruntime.so.1.31.1"
warmup_runs = 1
[output]
kind = "none"
[publish]
socket = "{sock_path}"
group = "kestrel"
""")
    notify_path = os.path.join(work, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    os.chmod(notify_path, 0o666)
    notify.settimeout(0.2)

    log_path = os.path.join(work, "stderr.log")
    log = open(log_path, "w")
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(groups)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            libc = __import__("ctypes").CDLL(None, use_errno=True)
            if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                raise OSError("PR_SET_NO_NEW_PRIVS")
            if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
                raise OSError("PR_SET_MDWE (Linux >= 6.3 needed)")
            f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(1))  # SystemCallErrorNumber=EPERM
            for name in sorted(allowed):
                try:
                    f.add_rule(seccomp.ALLOW, name)
                except (RuntimeError, ValueError, OSError):
                    pass  # not a system call on this architecture
            f.load()
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": cache,
                "NOTIFY_SOCKET": notify_path,
                "WATCHDOG_USEC": "2000000",
                "WATCHDOG_PID": str(os.getpid()),
                "RUST_LOG": "warn,kestrel=info",
            }
            os.dup2(log.fileno(), 2)
            os.execve("/usr/bin/kestrel", ["kestrel", "run", "--config", config], env)
        except BaseException as e:  # noqa: BLE001 - report anything from the child, then leave
            print(f"sandbox child: {e!r}", file=sys.stderr)
            os._exit(100)

    notes = []

    def pump(until, what, reap=True):
        """Collect notifications until `until` or `what()`; returns the child's wait status if it exited."""
        while time.monotonic() < until:
            try:
                data = notify.recv(4096).decode()
                notes.extend((time.monotonic(), l) for l in data.splitlines())
            except socket.timeout:
                pass
            done, status = os.waitpid(pid, os.WNOHANG) if reap else (0, 0)
            if done:
                return status
            if what():
                return None
        return None

    t0 = time.monotonic()
    status = pump(t0 + 120, lambda: any(l == "READY=1" for _, l in notes))
    if not any(l == "READY=1" for _, l in notes):
        fail(f"no READY=1 (exit status {status})", open(log_path).read())
    print(f"   READY=1 after {time.monotonic() - t0:.1f} s", file=sys.stderr)

    # Detections on the socket (as a member of the socket's group would read them).
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(sock_path)
    c.settimeout(30)
    buf = b""
    published_ns = []
    while len(published_ns) < 3:
        chunk = c.recv(65536)
        if not chunk:
            fail("socket closed", open(log_path).read())
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg.get("type") == "detections":
                published_ns.append(msg["publish_ns"])
    c.close()
    frames = len(published_ns)
    st = os.stat(sock_path)
    if grp.getgrgid(st.st_gid).gr_name != "kestrel" or (st.st_mode & 0o777) != 0o660:
        fail(f"socket group/mode {grp.getgrgid(st.st_gid).gr_name} {oct(st.st_mode & 0o777)}")
    # While frames flow the watchdog is fed every WATCHDOG_USEC/4 for as long as the last frame is less than
    # WATCHDOG_USEC/2 old. With frames `interval` apart (measured above: this host's pace with the real model)
    # there are two pings in 2 * (interval + 0.5 s) + 0.5 s at the latest; at 5 fps here, 2.5 s hold about five.
    watchdog_s = 2.0
    interval = max((b - a) / 1e9 for a, b in zip(published_ns, published_ns[1:]))
    window = max(2.5, 2 * (interval + watchdog_s / 4) + watchdog_s / 4)
    first = len(notes)

    def pings_since():
        return sum(1 for _, l in notes[first:] if l == "WATCHDOG=1")

    pump(time.monotonic() + window, lambda: pings_since() >= 2)
    pings = pings_since()
    if pings < 2:
        fail(f"{pings} WATCHDOG=1 in {window:.1f} s while frames flow {interval:.2f} s apart", open(log_path).read())
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    pump(time.monotonic() + 0.5, lambda: False, reap=False)
    text = open(log_path).read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        fail(f"exit code {code}", text)
    if not any(l == "STOPPING=1" for _, l in notes):
        fail("no STOPPING=1", text)
    if "not permitted" in text.lower() or "EPERM" in text:
        fail("a denied operation in the log", text)
    # The packaged golden detections are found beside the packaged model and reproduced on the CPU provider.
    if "self-test passed: 3 images" not in text:
        fail("no passed precision self-test in the log", text)
    print(f"   {frames} detections messages on the socket, {pings} watchdog pings, STOPPING=1, exit 0; "
          f"status lines: {[l for _, l in notes if l.startswith('STATUS=')][:6]}", file=sys.stderr)
    print("sandbox check PASSED", file=sys.stderr)


if __name__ == "__main__":
    main()
