#!/usr/bin/env python3
"""Host-side analysis of the VM camera test (tests/vm/guest.sh): python3 tests/vm/check.py target/vm/out

Reads what the guest left in /out (its phases and their budgets, its speed calibration, JSON Lines of published
frames, kestrel's logs, the guest's timing marks in CLOCK_MONOTONIC ns — the clock of `capture_ns`) and checks
the acceptance criteria of the V4L2 issue; prints the measured recovery times. Standard library only. Exit 0
iff every check holds. Never crashes on missing or truncated output: a phase that ran out of its budget, was
not run, or left no file is reported by name and fails the check.

Time bounds are of two kinds, and each check says which:
  design    a property of the design (frame interval, metrics interval, reconnect back-off, buffer count),
            with generous slack, independent of how fast this host emulates the guest;
  measured  the design part plus what this run measured in the same guest: per-frame stage times (each frame's
            `stages_ms`, hence the pipeline's load: work per frame over the frame interval), the driver probe
            between the bind marks, one mark's own cost, the calibration process's teardown (its exit after its
            output), kestrel's own restart times, vivid's own drops with v4l2-ctl alone.
Daemon start-up is inside no bound: the guest's sleeps start at the first published frame, and the windows
measured here start one metrics interval after it.
"""
import json
import re
import statistics
import sys
from pathlib import Path

FAILS = []
METRICS_S = 2.0          # [metrics] log_interval_ms of the camera configs: the first interval is start-up
KEEPS_UP = 0.05          # displaced share up to which the guest "keeps up" (vivid's own drops are then bounded)
EXPECTED_PHASES = ["ort", "vivid", "devices", "steady", "nv12", "faults"]


class Missing(Exception):
    """A file or mark the guest did not leave (its phase ran out, failed or did not run)."""


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
    if not ok:
        FAILS.append(name)


class Guest:
    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.dir = self.out / "guest"
        self.marks = {}
        for line in self.text("marks.txt", "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                self.marks[parts[0]] = int(parts[1])
        self.cal = {}
        for line in self.text("calibration.txt", "").splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    self.cal[parts[0]] = float(parts[1])
                except ValueError:
                    pass
        self.phases = {}
        for line in self.text("phases.txt", "").splitlines():
            p = line.split()
            if len(p) == 6:
                self.phases[p[0]] = {"start": float(p[1]), "end": float(p[2]), "elapsed": float(p[3]),
                                     "budget": int(p[4]), "status": p[5]}
        self.status = {}
        for line in self.text("exit-status.txt", "").splitlines():
            p = line.split()
            if len(p) == 2:
                self.status[p[0]] = p[1]

    def text(self, name, default=None):
        p = self.dir / name
        if not p.is_file():
            if default is None:
                raise Missing(f"file {name}")
            return default
        return p.read_text(errors="replace")

    def frames(self, name):
        """Published frames; a line a killed daemon left half-written is skipped (and said)."""
        out, bad = [], 0
        for line in self.text(name).splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
        if bad:
            print(f"   {name}: {bad} unparsable line(s) skipped")
        return out

    def mark(self, name):
        if name not in self.marks:
            raise Missing(f"mark {name}")
        return self.marks[name]

    def phase_note(self, name):
        p = self.phases.get(name)
        return f"phase {name}: {p['status']} after {p['elapsed']:.1f} s of {p['budget']} s" if p else \
            f"phase {name}: not recorded"


def ms(ns):
    return ns / 1e6


def last_metrics(log):
    """Counters from the final 'stopped after' line (frames in/out, camera counters)."""
    lines = [l for l in log.splitlines() if "stopped after" in l]
    if not lines:
        return None
    l = lines[-1]
    m = {"line": l}
    for key, pat in [("in", r"frames in (\d+)"), ("out", r"out (\d+)\)"), ("losses", r"losses (\d+)"),
                     ("restarts", r"restarts (\d+)"), ("driver_drops", r"driver drops (\d+)"), ("capture_late", r"capture late (\d+)"),
                     ("corrupt", r"corrupt (\d+)"), ("timeouts", r"dequeue timeouts (\d+)")]:
        mm = re.search(pat, l)
        m[key] = int(mm.group(1)) if mm else 0
    return m


def drops_in(line, what="driver drops"):
    """A cumulative camera counter ("driver drops", "capture late") in one metrics line (0 when not shown)."""
    mm = re.search(what + r" (\d+)", line)
    return int(mm.group(1)) if mm else 0


def first_after(fr, t_ns):
    return next((f for f in fr if f["capture_ns"] >= t_ns), None)


WORK_STAGES = ("decode", "letterbox", "infer", "postprocess")


def work_ms(f):
    """A frame's processing time (its stages, without the time it waited in a queue)."""
    st = f.get("stages_ms") or {}
    return sum(float(st.get(k, 0.0)) for k in WORK_STAGES)


def load_of(win, interval_ms, cpus):
    """The pipeline's measured load at this frame rate (reported): the busiest stage's mean time per frame, or
    the whole work per frame spread over the guest's CPUs if that is larger, over the frame interval (1 = just
    keeps up); and the share of the guest's CPU time the frame work takes."""
    means = {k: statistics.fmean(float((f.get("stages_ms") or {}).get(k, 0.0)) for f in win) for k in WORK_STAGES}
    busiest = max(means.values())
    total = sum(means.values())
    return max(busiest, total / max(cpus, 1)) / interval_ms, means, total / (max(cpus, 1) * interval_ms)


def displaced(win, interval_ms):
    """Frames the measured work displaced (measured, same run). Capture never waits: a frame that arrives while
    the one before it still occupies the pipeline replaces the queued one (latest wins, `capture_overrun`). A
    published frame whose work (its own stage times, without queueing) took w ms held the pipeline for about
    w / interval frame periods, so about max(0, w / interval - 1) later frames could not be taken. Summed over
    the published frames; on a guest with headroom this is ~0, on a starved or slow one it is what the latest-
    wins design must drop (the runs this was written with lost 0 to 0.8 times the estimate)."""
    return sum(max(0.0, work_ms(f) / interval_ms - 1.0) for f in win)


def exit_bound_ms(g, fr):
    """SIGTERM -> process gone. Design: 1 s (every thread sees the stop within its poll period, the frame in
    flight finishes). Measured here: the longest frame of the run (the one in flight), twice the calibration
    process's teardown (its exit after its output: ORT session and library teardown under this emulation; a
    daemon has more threads and pools to join) and the two marks' own cost."""
    inflight = max((work_ms(f) for f in fr), default=0.0)
    return 1000.0 + inflight + 2 * g.teardown_ms + 2 * g.mark_ms, inflight


# ---------------------------------------------------------------------------------------------------- sections
def sec_phases(g):
    print("== guest phases (elapsed / budget; budgets = fixed sleeps + a multiple of the guest's calibration)")
    if not g.dir.is_dir() or not any(g.dir.iterdir()):
        console = g.out / "console.log"
        lines = [l for l in console.read_text(errors="replace").splitlines() if l.startswith("PHASE ")] \
            if console.is_file() else []
        print("   no guest output came back (qemu killed by VM_TIMEOUT, or the output channel failed); "
              "phase lines on the console:")
        for l in lines:
            print("     " + l)
        running = [l.split()[1] for l in lines if " start at " in l]
        check("guest output came back", False,
              f"last phase started: {running[-1]}" if running else "no phase started")
        return False
    killed = g.text("guest-killed.txt", "")
    if killed:
        check("guest script within its hang guard (VM_GUEST_TIMEOUT)", False, killed.strip())
    running = g.text("phase-running.txt", "").split()
    if running:
        check(f"phase {running[0]} finished", False,
              f"started at T={running[1]} s with a budget of {running[2]} s and never recorded an end "
              "(the guest script was killed)")
    expected = EXPECTED_PHASES + (["measure"] if "measure" in g.phases else [])
    total = 0.0
    for name in expected:
        p = g.phases.get(name)
        if p is None:
            check(f"phase {name} ran", False, "not recorded in phases.txt")
            continue
        total += p["elapsed"]
        print(f"   {name:8s} {p['elapsed']:7.1f} s / {p['budget']:5d} s  {p['status']}")
        if p["status"] == "TIMEOUT":
            check(f"phase {name} within its budget", False,
                  f"TIMEOUT after {p['elapsed']:.1f} s (budget {p['budget']} s); its results below are partial")
        elif p["status"] != "ok":
            check(f"phase {name} completed", False, p["status"])
    print(f"   {'sum':8s} {total:7.1f} s")
    if "cal_s" in g.cal:
        print(f"   calibration: one ORT process with one fixture inference took {g.cal['cal_s']:.2f} s "
              f"(rc {g.cal.get('cal_rc', float('nan')):.0f}); boot to userspace {g.cal.get('boot_s', 0):.2f} s; "
              f"budgets used CAL = {g.cal.get('cal_used', 0):.2f} s")
    failed = [l.split("\t") for l in g.text("checks.txt", "").splitlines() if l.startswith("FAIL")]
    for f in failed:
        check(f"guest check ({f[1] if len(f) > 1 else '?'}): {f[-1]}", False)
    return True


def sec_ort(g):
    print("== ort: ONNX Runtime in the guest (constant-output fixture, 416x416 input)")
    d = json.loads(g.text("detect-const.json").strip().splitlines()[-1])
    dets = d.get("detections", [])
    check("ORT ran the fixture: its 5 constant detections", len(dets) == 5
          and any(x.get("label") == "c1" and abs(x.get("score", 0) - 0.8) < 1e-6 for x in dets),
          f"{len(dets)} detections, stages {d.get('times_ms')}")
    print(f"   the calibration process: {g.cal.get('cal_s', float('nan')):.2f} s in all, of which its own stages "
          f"{d.get('times_ms', {}).get('total', 0) / 1e3:.2f} s; its exit after the output (teardown) "
          f"{g.teardown_ms:.0f} ms; one mark (awk spawn) {g.mark_ms:.0f} ms")


def sec_devices(g):
    print("== kestrel devices (in the guest)")
    print("\n".join("   " + l for l in g.text("devices.txt").splitlines()[:12]))


def stream_section(g, name, fr, interval_ms):
    """Shared by steady/nv12: the window after the first metrics interval; the share published there and the
    bound it must meet: 95 % (design) of the frames the measured work left room for (measured)."""
    if not fr:
        raise Missing(f"frames in {name}.jsonl (none published)")
    launch = g.marks.get(f"{name}_launch")
    if launch is not None:
        print(f"   first frame captured {ms(fr[0]['capture_ns'] - launch) / 1e3:.2f} s after the launch "
              "(daemon start-up: not inside any bound)")
    t0 = fr[0]["capture_ns"] + int(METRICS_S * 1e9)
    t1 = g.marks.get(f"{name}_term", fr[-1]["capture_ns"])
    win = [f for f in fr if t0 <= f["capture_ns"] <= t1]
    span = win[-1]["seq"] - win[0]["seq"] + 1 if win else 0
    share = len(win) / span if span else 0.0
    load, means, demand = load_of(win, interval_ms, int(g.cal.get("guest_cpus", 2))) if win else (0.0, {}, 0.0)
    disp = displaced(win, interval_ms) / span if span else 0.0
    need = 0.95 * max(0.0, 1.0 - disp)
    print(f"   measured load {load:.2f}, {100 * demand:.0f} % of the guest's CPU time (mean ms per frame: "
          + ", ".join(f"{k} {v:.1f}" for k, v in means.items()) + f"; frame interval {interval_ms:.1f} ms, "
          f"{int(g.cal.get('guest_cpus', 2))} guest CPUs); frames displaced by the measured work "
          f"{100 * disp:.1f} % -> published share bound 95 % x {100 * (1 - disp):.1f} % = {100 * need:.1f} %")
    return win, span, share, need, disp
def sec_steady(g):
    print("== steady state: YUYV 640x480 @ 25 fps, 12 s from the first published frame")
    fr = g.frames("steady.jsonl")
    log = g.text("steady.log")
    met = last_metrics(log)
    win, span, share, need, disp = stream_section(g, "steady", fr, 40.0)
    check(f"published >= {100 * need:.0f}% of captured frames at steady state (95 % of those the measured work "
          "left room for)", share >= need,
          f"{len(win)} of {span} frames after the first {METRICS_S:.0f} s, {100 * share:.1f} %")
    caps = [f["capture_ns"] for f in fr]
    check("capture timestamps strictly increasing", all(b > a for a, b in zip(caps, caps[1:])), f"{len(caps)} frames")
    deltas = [ms(b["capture_ns"] - a["capture_ns"]) for a, b in zip(win, win[1:]) if b["seq"] == a["seq"] + 1]
    if deltas:
        med = statistics.median(deltas)
        check("frame interval matches 25 fps", 36.0 <= med <= 44.0,
              f"median {med:.1f} ms, min {min(deltas):.1f}, max {max(deltas):.1f} over {len(deltas)} intervals")
        dur = ms(win[-1]["capture_ns"] - win[0]["capture_ns"]) / 1e3
        fps = (len(win) - 1) / dur if dur else 0.0
        cap_fps = (span - 1) / dur if dur else 0.0
        lo = min(23.5, need * cap_fps)
        check("published rate ~25 fps (less the frames the measured work displaced)", lo <= fps <= 26.5,
              f"{fps:.2f} fps published, {cap_fps:.2f} fps captured; bound {lo:.2f}..26.5")
        check("no frame missing between consecutive sequence numbers (no silent gaps)", max(deltas) < 100.0,
              f"largest interval {max(deltas):.1f} ms")
    else:
        check("steady: consecutive frames in the window", False, f"{len(win)} frames after the first {METRICS_S:.0f} s")
    # A V4L2 sequence gap is a frame the driver did not deliver. Kestrel can only cause one by staying away from
    # the driver until every queued buffer is full; the source tells those apart ("capture late", must be 0: the
    # capture thread only copies a frame out, against a deadline of 3 frame periods — design). The others are the
    # driver's own: vivid numbers frames by elapsed time, so when its timer thread runs late (the guest's
    # emulated CPU starved by a loaded or slow host) it skips numbers. Those are reported and bounded by 2 % plus
    # twice what vivid skipped on its own in this guest (the vivid phase, v4l2-ctl only — measured) while the guest
    # keeps up (the measured work displaced <= KEEPS_UP of the frames); beyond that the guest's CPUs are starved
    # (slow emulation or a loaded host), vivid's thread competes with kestrel's for them, and its drops are
    # reported only (said so). The ones while the stream starts (before the first metrics line) are reported only.
    periodic = [l for l in log.splitlines() if "kestrel_daemon::pipeline" in l and "frames in" in l]
    base = drops_in(periodic[0]) if periodic else 0
    late_base = drops_in(periodic[0], "capture late") if periodic else 0
    total = met["driver_drops"] if met else -1
    late = met["capture_late"] if met else -1
    check("no frame lost to kestrel's capture at steady state (driver drops caused by a late capture)",
          met is not None and late - late_base == 0, f"capture late {late - late_base} after the first metrics "
          f"interval, {late_base} before it (start-up)")
    alone_n, alone_d = g.cal.get("vivid_alone_frames", 0), g.cal.get("vivid_alone_drops", 0)
    alone = alone_d / (alone_n + alone_d) if alone_n else 0.0
    allowed = 0.02 + 2 * alone
    detail = (f"{total - base} after the first metrics interval, {base} before it (start-up), of {span} frames; "
              f"vivid alone skipped {alone_d:.0f} of {alone_n + alone_d:.0f}"
              + ("" if alone_n else " (not measured: no v4l2-ctl sequence numbers)"))
    if disp <= KEEPS_UP:
        check(f"driver's own drops at steady state <= {100 * allowed:.1f} % of frames",
              met is not None and total - base <= allowed * span, detail)
    else:
        check(f"driver's own drops at steady state counted (NOT BOUNDED: the measured work displaced "
              f"{100 * disp:.1f} % > {100 * KEEPS_UP:.0f} % of the frames, the guest's CPUs are starved)",
              met is not None, detail)
    lat = sorted(f["latency_ms"] for f in win)
    if lat:
        print(f"   capture->publish latency: p50 {lat[len(lat) // 2]:.1f} ms, "
              f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms")
    check("steady run exited 0 on SIGTERM", g.status.get("steady") == "0", f"status {g.status.get('steady')}")
    t = ms(g.mark("steady_exited") - g.mark("steady_term"))
    bound, inflight = exit_bound_ms(g, fr)
    check("steady run: exit within 1 s of SIGTERM + the measured in-flight frame, ORT teardown and marks",
          t <= bound, f"{t:.0f} ms; bound {bound:.0f} ms = 1000 + in-flight {inflight:.0f} + 2 x teardown "
          f"{g.teardown_ms:.0f} + 2 x mark {g.mark_ms:.0f}")


def sec_nv12(g):
    print("== NV12 1280x720, 6 s from the first published frame")
    fr = g.frames("nv12.jsonl")
    log = g.text("nv12.log")
    neg = re.search(r"NV12 1280x720 \(asked 1280x720\), ([0-9.]+) fps", log)
    check("NV12 negotiated at 1280x720", neg is not None, neg and neg.group(0))
    rate = float(neg.group(1)) if neg else 12.5  # vivid offers 12.5 fps at most at 720p
    win, span, share, need, _ = stream_section(g, "nv12", fr, 1000.0 / rate)
    span_s = ms(fr[-1]["capture_ns"] - fr[0]["capture_ns"]) / 1e3 if len(fr) > 1 else 0.0
    check("NV12 frames published at 1280x720 over >= 3 s of the 6 s", span_s >= 3.0
          and all((f["width"], f["height"]) == (1280, 720) for f in fr), f"{len(fr)} frames over {span_s:.1f} s")
    dur = ms(win[-1]["capture_ns"] - win[0]["capture_ns"]) / 1e3 if len(win) > 1 else 0.0
    cap_fps = (span - 1) / dur if dur else 0.0
    fps = (len(win) - 1) / dur if dur else 0.0
    check("NV12 captured at the driver's rate", abs(cap_fps - rate) <= 0.1 * rate,
          f"{cap_fps:.2f} fps captured after the first {METRICS_S:.0f} s (driver {rate} fps)")
    lo = min(0.9 * rate, need * cap_fps)
    check(f"NV12 published >= {100 * need:.0f} % of captured frames, at the driver's rate (less the displaced)",
          share >= need and lo <= fps <= 1.1 * rate,
          f"{len(win)} of {span} after the first {METRICS_S:.0f} s ({100 * share:.1f} %), {fps:.2f} fps; "
          f"bound {lo:.2f}..{1.1 * rate:.2f} fps")
    check("nv12 run exited 0", g.status.get("nv12") == "0", f"status {g.status.get('nv12')}")


def sec_faults(g):
    print("== faults (one daemon process throughout)")
    fr = g.frames("faults.jsonl")
    log = g.text("faults.log")
    met = last_metrics(log)
    caps = [f["capture_ns"] for f in fr]
    check("capture timestamps strictly increasing across reconnects", all(b > a for a, b in zip(caps, caps[1:])),
          f"{len(caps)} frames")
    seqs = [f["seq"] for f in fr]
    check("sequence numbers strictly increasing across reconnects", all(b > a for a, b in zip(seqs, seqs[1:])))
    rows = []

    # Recovery: from the bind mark (taken before the bind starts, so the time includes the driver's probe) to
    # the first frame captured after it. Design: 2 s (reconnect_max_ms, the longest back-off step, covers the
    # re-open and the first frame). Measured: the probe itself (bind mark -> bound mark, i.e. the kernel's
    # work under this emulation) is added to it.
    def recovered(label, t_ns, probe_ms=0.0):
        limit_ms = 2000.0 + probe_ms
        f = first_after(fr, t_ns)
        dt = ms(f["capture_ns"] - t_ns) if f else float("inf")
        rows.append((label, dt, probe_ms))
        check(f"{label}: frames flowing again within 2 s + the measured probe", dt <= limit_ms,
              f"{dt:.0f} ms; bound {limit_ms:.0f} ms (probe {probe_ms:.0f} ms)")

    def probe(a, b):
        return ms(g.marks[b] - g.marks[a]) if a in g.marks and b in g.marks else 0.0

    for i in range(1, 6):
        u, b = g.mark(f"unbind{i}"), g.mark(f"bind{i}")
        during = [f for f in fr if u + 200_000_000 <= f["capture_ns"] < b]
        check(f"unplug {i}: no frames while unbound", not during, f"{len(during)} frames")
        recovered(f"unplug {i}: bind -> first frame", b, probe(f"bind{i}", f"bound{i}"))
    # the guest waits for each recovery ('camera back') before the next fault, so these counts do not depend on
    # a recovery finishing within a fixed sleep
    lost = log.count("camera lost")
    back = log.count("camera back")
    check("camera lost reported for every fault", lost >= 10, f"{lost} 'camera lost' lines")
    check("camera back reported for every recovery", back >= 9, f"{back} 'camera back' lines")
    recovered("disconnect control + replug: bind -> first frame", g.mark("bind_disconnect"),
              probe("bind_disconnect", "bound_disconnect"))
    # EIO: the stream restarts on its own; measure the hole in the frames. Design 2 s, plus the restart time
    # kestrel itself measured (its 'camera back ... after N ms' for that restart).
    e = g.mark("eio")
    w = [f["capture_ns"] for f in fr if e - 200_000_000 <= f["capture_ns"] <= e + 2_000_000_000]
    gap = max((ms(b - a) for a, b in zip(w, w[1:])), default=float("inf"))
    lines = log.splitlines()
    at = next((i for i, l in enumerate(lines) if "stream error" in l), None)
    restart = next((float(m.group(1)) for l in lines[at:] if at is not None
                    for m in [re.search(r"camera back: .* after (\d+) ms", l)] if m), 0.0) if at is not None else 0.0
    rows.append(("fatal streaming error (EIO): longest gap", gap, restart))
    check("EIO: 'stream error' restart logged", at is not None)
    check("EIO: frames flowing again within 2 s + kestrel's measured restart",
          first_after(fr, e + 1_000_000_000) is not None and gap <= 2000 + restart,
          f"longest gap {gap:.0f} ms; bound {2000 + restart:.0f} ms (restart {restart:.0f} ms)")
    check("driver drops counted (50 % dropped for 2 s)", met is not None and met["driver_drops"] >= 10,
          f"{met and met['driver_drops']} driver drops")
    # The daemon stopped (SIGSTOP) for 0.4 s: vivid fills the 4 queued buffers and drops the rest; those drops
    # are kestrel's. vivid's own (the 50 % above) must not be blamed on kestrel.
    late = met["capture_late"] if met else 0
    check("drops while the daemon was stopped 0.4 s blamed on kestrel's late capture, vivid's own drops not",
          met is not None and 1 <= late <= met["driver_drops"] - 10,
          f"capture late {late} of {met and met['driver_drops']} driver drops")
    ctrls = g.text("vivid-controls.txt", "")
    if "inject_v4l2_buf_flag_error" in ctrls:
        check("corrupt buffer (V4L2_BUF_FLAG_ERROR) counted and skipped", met is not None and met["corrupt"] >= 1,
              f"{met and met['corrupt']} corrupt")
    else:
        print("   corrupt buffer: NOT CHECKED (vivid-controls.txt does not list inject_v4l2_buf_flag_error)")
    # Reported, not asserted (a driver drop of vivid's own may fall in the same 2 s): a corrupt buffer keeps its
    # sequence number, so the metrics lines around it should show no new driver drop.
    at = next((i for i, l in enumerate(lines) if "corrupt camera frame skipped" in l), None)
    if at is not None:
        before = [l for l in lines[:at] if "kestrel_daemon::pipeline" in l and "frames in" in l]
        after = [l for l in lines[at:] if "kestrel_daemon::pipeline" in l and "frames in" in l]
        if before and after:
            print(f"   driver drops across the corrupt buffer's metrics interval: {drops_in(before[-1])} -> "
                  f"{drops_in(after[0])}")
    check("stall: dequeue timeout reported", "dequeue timeout" in log and met is not None and met["timeouts"] >= 1,
          f"{met and met['timeouts']} timeouts")
    recovered("stall (100 % dropped for 3 s): end -> first frame", g.mark("stall_end"))
    moved = [k for k in g.marks if k.startswith("bind_moved_")]
    node = moved[0][len("bind_moved_"):] if moved else "?"
    check(f"by-id link followed the camera to /dev/{node}", node != "video0" and f"(/dev/{node})" in log,
          f"vivid.0 came back as /dev/{node}")
    if moved:
        recovered(f"moved to /dev/{node}: driver load -> first frame", g.marks[moved[0]],
                  probe(moved[0], "moved_loaded"))
    check("SIGTERM during an outage -> exit 0", g.status.get("faults") == "0", f"status {g.status.get('faults')}")
    t = ms(g.mark("faults_exited") - g.mark("faults_term"))
    bound, inflight = exit_bound_ms(g, fr)
    check("SIGTERM during an outage: exit within 1 s + the measured ORT teardown and marks", t <= bound,
          f"{t:.0f} ms; bound {bound:.0f} ms = 1000 + in-flight {inflight:.0f} + 2 x teardown "
          f"{g.teardown_ms:.0f} + 2 x mark {g.mark_ms:.0f}")
    print("   final metrics:", met and met["line"].split("] ", 1)[-1])

    print("== recovery times (guest CLOCK_MONOTONIC, from the event to the first published frame)")
    for label, dt, extra in rows:
        print(f"   {label:55s} {dt:8.0f} ms" + (f"  (of which probe/restart {extra:.0f} ms)" if extra else ""))
    for line in (l for l in lines if "camera back" in l):
        print("   log:", line.split("] ", 1)[-1])


def sec_measure(g):
    print("== measure (VM_MEASURE=1): speed runs, reported only")
    print("\n".join("   " + l for l in g.text("speed.txt").splitlines()))


def main(out_dir):
    g = Guest(out_dir)
    g.mark_ms = ms(g.marks["mark_cost_1"] - g.marks["mark_cost_0"]) if {"mark_cost_0", "mark_cost_1"} <= set(g.marks) else 0.0
    # the calibration process's exit after its output: the two marks apart, less the second mark's own cost
    # (the first ran while the process was exiting)
    g.teardown_ms = max(0.0, ms(g.marks["cal_exited"] - g.marks["cal_output"]) - g.mark_ms) \
        if {"cal_output", "cal_exited"} <= set(g.marks) and g.cal.get("cal_rc") == 0 else 0.0
    if sec_phases(g):
        sections = [("ort", sec_ort), ("devices", sec_devices), ("steady", sec_steady), ("nv12", sec_nv12),
                    ("faults", sec_faults)] + ([("measure", sec_measure)] if "measure" in g.phases else [])
        for name, fn in sections:
            try:
                fn(g)
            except Missing as e:
                check(f"{name}: results to analyse", False, f"missing {e}; {g.phase_note(name)}")
            except Exception as e:  # a malformed file: report it, keep checking the other phases
                check(f"{name}: results analysable", False, f"{type(e).__name__}: {e}; {g.phase_note(name)}")
    print(f"== VM host check: {'PASS' if not FAILS else 'FAIL: ' + '; '.join(FAILS)}")
    return 0 if not FAILS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/vm/out"))
