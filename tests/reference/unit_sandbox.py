#!/usr/bin/python3
"""Run a command under the restrictions of systemd/kestrel.service and its drop-ins that a process can put on
itself without systemd as PID 1: RestrictAddressFamilies= (socket(2)/socketpair(2) of another family fail with
EAFNOSUPPORT, as under systemd), SystemCallFilter= with SystemCallErrorNumber=EPERM, NoNewPrivileges=yes and
MemoryDenyWriteExecute=yes (PR_SET_MDWE). The network settings (PrivateNetwork=, IPAddressAllow=) need
systemd's cgroup BPF and are not emulated.

    unit_sandbox.py [--drop-in FILE]... [--families AF_A,AF_B] -- COMMAND [ARG...]

As in systemd, the RestrictAddressFamilies= lines of the unit and its drop-ins add up (an empty one resets
the list); `--families` overrides them all. Needs Debian's python3-seccomp (the system python: /usr/bin/python3) and systemd-analyze."""
import argparse
import ctypes
import errno
import os
import pathlib
import socket
import sys

import seccomp  # python3-seccomp

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/deb"))
import sandbox  # noqa: E402  (its systemd syscall-group expansion)

UNIT = ROOT / "systemd/kestrel.service"


def settings(files):
    """The RestrictAddressFamilies= and the SystemCallFilter= words of `files`, in order."""
    families, filters = [], []
    for path in files:
        for line in open(path):
            line = line.strip()
            if line.startswith("RestrictAddressFamilies="):
                words = line.split("=", 1)[1].split()
                families = families + words if words else []
            elif line.startswith("SystemCallFilter="):
                filters += [(not w.startswith("~"), w.lstrip("~")) for w in line.split("=", 1)[1].split()]
    return families, filters


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--drop-in", action="append", default=[])
    ap.add_argument("--families")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        sys.exit(__doc__)
    families, filters = settings([UNIT, *a.drop_in])
    if a.families is not None:
        families = [f for f in a.families.split(",") if f]
    allowed_families = {getattr(socket, name) for name in families}
    allowed = set()
    for allow, group in filters:
        names = sandbox.expand(group) if group.startswith("@") else {group}
        allowed = allowed | names if allow else allowed - names

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("PR_SET_NO_NEW_PRIVS")
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise OSError("PR_SET_MDWE (Linux >= 6.3 needed)")
    fam = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for call in ("socket", "socketpair"):
        for family in range(64):  # every AF_* is below AF_MAX (46 on Linux 6.x)
            if family not in allowed_families:
                fam.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), call, seccomp.Arg(0, seccomp.EQ, family))
    calls = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in sorted(allowed | {"execve"}):  # execve: to start the command (the unit's filter has it too)
        try:
            calls.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # not a system call on this architecture
    fam.load()  # first: the system-call filter does not allow loading another one
    calls.load()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
