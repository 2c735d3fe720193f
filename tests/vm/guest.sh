#!/bin/sh
# tests/vm/guest.sh - runs inside the QEMU guest (busybox sh, root, /kestrel = binary + ORT + models +
# tests/vm/guest-files/, /kestrel/media/person.jpg); started by tests/vm/run.sh's /init. Console = ttyS0.
# Files written to /out/ reach the host in target/vm/out/guest/; tests/vm/check.py analyses them there.
# Must end by printing the result line "VM-TEST RESULT: PASS|FAIL (...)".
#
# Named phases, run one after another, each in its own shell under its own budget (busybox timeout):
#   ort      ONNX Runtime loads and runs the constant-output fixture (v5_const_416.onnx, a real 416x416
#            input): one `kestrel detect` process, whose duration is this guest's speed calibration CAL
#   vivid    vivid loaded; v4l2-ctl streams 50 frames (also: how many frames vivid drops on its own here)
#   devices  `kestrel devices`
#   steady   YUYV 640x480 @ 25 fps for 12 s, counted from the first published frame
#   nv12     NV12 1280x720 for 6 s, counted from the first published frame
#   faults   one daemon through unplugs, disconnect, EIO, driver drops, SIGSTOP, a corrupt buffer, a stall,
#            the camera moving to another node, SIGTERM during an outage
#   measure  only with VM_MEASURE=1: the real yolov3-tiny (one `detect` proving it, then speed runs)
# No daemon phase uses a real network: a trained network takes ~10 s per frame under TCG (real-model results
# are tested on the host); the default run does no real-model inference at all.
#
# Budget of a phase = its fixed sleeps + a multiple of CAL (what scales with the emulation: daemon start-ups,
# ORT load, driver probes, process spawns); the ort phase itself gets 30 s + 5 x the boot time (uptime when
# this script starts). A phase that runs out is ended (TERM, KILL 5 s later; a daemon it left is killed),
# recorded in /out/phases.txt as "name start end elapsed budget TIMEOUT" and printed as
# "PHASE name TIMEOUT after N s (budget M s)"; the phases after it still run. Budgets never exceed the time
# left before the guest script's own hang guard (VM_GUEST_TIMEOUT, from run.sh); a clamped one says so.
#
# Kernel command-line `VAR=value` words (run.sh's VM_APPEND) become environment here:
#   VM_MEASURE=1          add the measure phase (run.sh then ships yolov3-tiny; VM_TIMEOUT=3600 is its default)
#   VM_BUDGET_SCALE=F     multiply every budget by F (e.g. 0.1 to see the TIMEOUT path)
#   VM_BUDGET_<phase>=S   that phase's budget in seconds, e.g. VM_BUDGET_steady=5
K=/kestrel/kestrel
M=/kestrel/models
SELF=$0
ts() { cut -d' ' -f1 /proc/uptime; }                     # seconds since boot
since() { awk -v a="$1" -v b="$(ts)" 'BEGIN{printf "%.2f", b-a}'; }
step() { echo "### T=$(ts) $*"; }
# check NAME CMD...: CMD is eval'ed; prints CHECK ok/FAIL and records it in /out/checks.txt
check() {
  _n=$1; shift
  if eval "$@"; then _r=ok; else _r=FAIL; fi
  echo "CHECK $_r: $_n"; printf '%s\t%s\t%s\n' "$_r" "${PHASE:-main}" "$_n" >> /out/checks.txt
}
# Timing marks (CLOCK_MONOTONIC ns, the clock of kestrel's capture_ns) go to /out/marks.txt
mono() { awk '/^now at/{print $3; exit}' /proc/timer_list; }
mark() { echo "$1 $(mono)" >> /out/marks.txt; echo "MARK T=$(ts) $1"; }
# alive PID: running (a zombie, whose parent has not reaped it yet, is not)
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
calib() { awk -v k="$1" '$1==k{print $2; exit}' /out/calibration.txt 2>/dev/null; }
VIVID_OPTS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"   # one capture node, one webcam input
SYS=/sys/bus/platform/drivers/vivid
LINK=/dev/v4l/by-id/vivid-cam
# udev's part, by hand: the by-id link goes with the device and comes back pointing at its new node
unplug() { rm -f $LINK; echo "vivid.$1" > $SYS/unbind; }
replug() { [ -e "/sys/bus/platform/devices/vivid.$1/driver" ] || echo "vivid.$1" > $SYS/bind; ln -sf "/dev/$(ls /sys/bus/platform/devices/vivid.0/video4linux 2>/dev/null | head -1)" $LINK 2>/dev/null; }
node_of_0() { ls /sys/bus/platform/devices/vivid.0/video4linux | head -1; }
# stop PID NAME: SIGTERM, wait, record exit status and how long the exit took
stop() {
  mark "$2_term"; kill -TERM "$1"; wait "$1"; _rc=$?; mark "$2_exited"
  echo "$2 exit status $_rc"; echo "$2 $_rc" >> /out/exit-status.txt; return $_rc
}
# daemon NAME CONFIG [args]: kestrel run in the background, JSON Lines to /out/NAME.jsonl, log /out/NAME.log;
# sets P; the pid is left in /tmp/daemon.pid so that the phase runner can kill it if the phase runs out
daemon() {
  _dn=$1 _dc=$2; shift 2
  $K run --config "$_dc" "$@" > /out/$_dn.jsonl 2> /out/$_dn.log & P=$!
  echo $P > /tmp/daemon.pid; mark "${_dn}_launch"
}
# wait_first NAME PID LIMIT_S: until the daemon published its first frame (or died, or LIMIT_S passed)
wait_first() {
  _t=$(ts); _i=0; _max=$(awk -v l="$3" 'BEGIN{printf "%d", l * 10 + 1}')
  while [ ! -s "/out/$1.jsonl" ] && alive "$2" && [ $_i -lt $_max ]; do usleep 100000; _i=$((_i + 1)); done
  if [ -s "/out/$1.jsonl" ]; then echo "$1: first frame published $(since "$_t") s after the launch mark"
  else echo "$1: NO frame published within $(since "$_t") s (limit $3 s; daemon $(alive "$2" && echo alive || echo gone))"; fi
}
# wait_back N LIMIT_S: until the faults daemon logged its N-th 'camera back' (paces the faults: each recovery
# is over before the next fault; normally already true when called)
wait_back() {
  _t=$(ts); _i=0; _max=$(awk -v l="$2" 'BEGIN{printf "%d", l * 10 + 1}')
  while [ "$(grep -c 'camera back' /out/faults.log)" -lt "$1" ] && [ $_i -lt $_max ]; do usleep 100000; _i=$((_i + 1)); done
  [ $_i = 0 ] || echo "waited $(since "$_t") s for 'camera back' #$1 ($(grep -c 'camera back' /out/faults.log) so far)"
}
# a multiple of the calibration, in seconds (for the wait limits inside the phases)
cal_x() { awk -v c="${CAL:-10}" -v m="$1" 'BEGIN{printf "%.1f", c * m}'; }

# ---- the phases (each runs as `sh guest.sh phase NAME`, in its own process) --------------------------------
phase_ort() {
  step "ort: ONNX Runtime loads and runs the constant-output fixture (the guest's speed calibration)"
  check "kestrel --version" '$K --version'
  mark mark_cost_0; mark mark_cost_1   # the cost of one mark (an awk spawn) under this emulation
  echo "guest_cpus $(nproc)" >> /out/calibration.txt
  _t=$(ts)
  # the JSON line is marked as it arrives (cal_output) and the process's end after it (cal_exited): what the
  # process needs to tear ORT down and exit, the model for a daemon's exit after SIGTERM (check.py)
  { $K detect --threads 2 --warmup 0 --model $M/v5_const_416.onnx /kestrel/media/person.jpg \
      2> /out/detect-const.log; echo $? > /tmp/cal_rc; } \
    | { if IFS= read -r _l; then mark cal_output >&2; printf '%s\n' "$_l"; fi; cat; } > /out/detect-const.json
  mark cal_exited; _rc=$(cat /tmp/cal_rc)
  _d=$(since "$_t")
  cat /out/detect-const.log /out/detect-const.json
  echo "CALIBRATION: kestrel detect with v5_const_416.onnx (process start, ORT load + session, person.jpg decode +"
  echo "  letterbox, one 416x416 inference, exit) took $_d s (rc=$_rc)"
  echo "cal_rc $_rc" >> /out/calibration.txt; echo "cal_s $_d" >> /out/calibration.txt
  # the fixture's constant rows after NMS: c0 0.81, c1 0.8, c0 0.7, c0 0.3, c0 0.3 (tests/fixtures/make_fixtures.py)
  check "ORT loads and runs the constant fixture (5 detections, its c1 0.8 row)" \
    '[ $_rc = 0 ] && grep -q "\"label\":\"c1\",\"score\":0.8," /out/detect-const.json && [ "$(grep -o "\"class_id\"" /out/detect-const.json | wc -l)" = 5 ]'
  if [ "${VM_MEASURE:-0}" = 1 ]; then echo "ort: the real yolov3-tiny runs in the measure phase (VM_MEASURE=1)"
  else echo "ort: NOT RUN: real-model (yolov3-tiny) inference; VM_MEASURE=1 adds it (phase measure)"; fi
}

phase_vivid() {
  step "vivid: driver, formats, 50 frames with v4l2-ctl"
  modprobe vivid $VIVID_OPTS
  check "vivid loaded, /dev/video0 present" '[ -c /dev/video0 ]'
  v4l2-ctl --list-devices
  v4l2-ctl -d0 -D > /out/v4l2-info.txt 2>&1; grep -E 'Driver name|Card type' /out/v4l2-info.txt
  v4l2-ctl -d0 --list-formats-ext > /out/v4l2-formats.txt 2>&1
  echo "formats: $(grep -o "'[A-Z0-9 ]*'" /out/v4l2-formats.txt | sort -u | tr '\n' ' ')"
  check "vivid offers YUYV" "grep -q \"'YUYV'\" /out/v4l2-formats.txt"
  _t=$(ts)
  v4l2-ctl -d0 --set-fmt-video=width=640,height=480,pixelformat=YUYV --set-parm=25 --verbose \
    --stream-mmap=4 --stream-count=50 --stream-to=/tmp/f.raw > /out/v4l2-stream.txt 2>&1
  echo "v4l2-ctl: 50 frames YUYV 640x480 @25 fps in $(since "$_t") s"
  check "v4l2-ctl captured 50 x 614400 bytes" '[ "$(wc -c < /tmp/f.raw)" = 30720000 ]'
  rm -f /tmp/f.raw
  # vivid alone (no kestrel): the sequence numbers it skipped, i.e. its timer running late on this emulation
  awk '/dqbuf:.*seq:/{for(i=1;i<=NF;i++) if($i=="seq:"){s=$(i+1)+0; if(n==0) a=s; n++; b=s}}
       END{if(n) printf "vivid_alone_frames %d\nvivid_alone_drops %d\n", n, (b-a+1)-n}' /out/v4l2-stream.txt \
    >> /out/calibration.txt
  echo "vivid alone: $(calib vivid_alone_frames) frames, $(calib vivid_alone_drops) sequence numbers skipped"
}

phase_devices() {
  step "kestrel devices"
  $K devices > /out/devices.txt 2>&1; head -40 /out/devices.txt
  $K devices --json > /out/devices.json 2>&1
  check "kestrel devices shows vivid with YUYV and NV12 at 640x480 @ 25 fps" \
    'grep -q "card    vivid" /out/devices.txt && grep -q "YUYV" /out/devices.txt && grep -q "NV12" /out/devices.txt && grep -q "640x480 @ .*25 fps" /out/devices.txt'
}

phase_steady() {
  step "steady: YUYV 640x480 @ 25 fps for 12 s after the first published frame"
  daemon steady /kestrel/camera.toml
  wait_first steady $P "$(cal_x 6)"
  mark steady_start; sleep 12
  check "steady: SIGTERM -> exit 0" 'stop $P steady'
  grep -E "camera|stopped after" /out/steady.log | sed 's/^\[[^]]*Z /[/'
}

phase_nv12() {
  step "nv12: NV12 1280x720 for 6 s after the first published frame"
  daemon nv12 /kestrel/camera-nv12.toml
  wait_first nv12 $P "$(cal_x 6)"
  mark nv12_start; sleep 6
  check "nv12: SIGTERM -> exit 0" 'stop $P nv12'
  grep -E "camera|stopped after" /out/nv12.log | sed 's/^\[[^]]*Z /[/'
}

phase_faults() {
  step "faults: one daemon through unplugs, disconnect, EIO, driver drops, corrupt buffers, a stall, a move"
  _wb=$(cal_x 4)   # wait_back's limit (a hang guard: check.py's recovery bound is far below it)
  mkdir -p /dev/v4l/by-id; ln -sf /dev/video0 $LINK
  daemon faults /kestrel/camera.toml --device $LINK
  wait_first faults $P "$(cal_x 6)"
  mark faults_start; sleep 3
  for i in 1 2 3 4 5; do
    unplug 0; mark "unbind$i"; usleep 1500000   # marked once the device is gone
    check "unplug $i: daemon alive during the outage" 'alive $P'
    # bind marked before the bind starts: recovery includes the driver's probe; bound$i after it returns
    # (check.py adds the measured probe time to the design bound)
    mark "bind$i"; replug 0; mark "bound$i"; sleep 2; wait_back $i "$_wb"
  done
  mark disconnect; v4l2-ctl -d /dev/video0 --set-ctrl=disconnect=1; usleep 1500000
  check "disconnect control: daemon alive" 'alive $P'
  unplug 0; mark bind_disconnect; replug 0; mark bound_disconnect; sleep 2; wait_back 6 "$_wb"
  mark eio; v4l2-ctl -d /dev/video0 --set-ctrl=inject_fatal_streaming_error=1; sleep 2; wait_back 7 "$_wb"
  check "fatal streaming error: daemon alive" 'alive $P'
  mark drops_on; v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=50; sleep 2
  v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=0; mark drops_off
  # kestrel itself late: the daemon stopped for 0.4 s (10 frame periods, 4 buffers): the driver drops ~6
  # frames, and the source must blame them on the capture, not on the driver
  mark sigstop; kill -STOP $P; usleep 400000; kill -CONT $P; mark sigcont; sleep 1
  mark buf_error; v4l2-ctl -d /dev/video0 --set-ctrl=inject_v4l2_buf_flag_error=1; sleep 1
  mark stall; v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=100; sleep 3
  v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=0; mark stall_end; sleep 1; wait_back 8 "$_wb"
  # the camera comes back as another node: unplug, reload the driver with another node number, relink
  unplug 0; usleep 300000; rmmod vivid; t_moved=$(mono)
  modprobe vivid $VIVID_OPTS vid_cap_nr=3; replug 0
  echo "bind_moved_$(node_of_0) $t_moved" >> /out/marks.txt; echo "MARK bind_moved_$(node_of_0) (before modprobe)"
  mark moved_loaded
  echo "vivid.0 is now /dev/$(node_of_0); $LINK -> $(readlink $LINK)"; sleep 2; wait_back 9 "$_wb"
  check "moved: daemon alive" 'alive $P'
  mark outage_for_term; unplug 0; usleep 1500000
  check "SIGTERM during an outage -> exit 0" 'stop $P faults'
  replug 0
  grep -E "camera|stopped after" /out/faults.log | sed 's/^\[[^]]*Z /[/'
  v4l2-ctl -d "/dev/$(node_of_0)" -l > /out/vivid-controls.txt 2>&1   # (the camera is at its new node now)
}

# run_stream NAME MODEL THREADS [kestrel run args]: synthetic.toml with that model/threads, output /out/NAME.jsonl
run_stream() {
  _name=$1 _mdl=$2 _th=$3; shift 3
  sed -e "s|^path = \"models/.*|path = \"models/$_mdl.onnx\"|" -e "s|^intra_threads = .*|intra_threads = $_th|" \
      -e "s|^path = \"/out/run.jsonl\"|path = \"/out/$_name.jsonl\"|" /kestrel/synthetic.toml > /kestrel/$_name.toml
  _t=$(ts)
  $K run --config /kestrel/$_name.toml "$@" 2> /out/$_name.log & echo $! > /tmp/daemon.pid; wait $!; _rc=$?
  _n=$(wc -l < /out/$_name.jsonl 2>/dev/null || echo 0)
  grep -E 'INFO +kestrel(::pipeline)?\]' /out/$_name.log | grep -E 'fps|stopped' | sed 's/^\[[^]]*Z /[/'
  echo "RESULT $_name: rc=$_rc published $_n/250 frames ($((_n * 100 / 250))%) in $(since "$_t") s" | tee -a /out/speed.txt
}

# Speed measurements (VM_MEASURE=1): detect stage times; 25 fps YUYV 640x480 synthetic stream, and vivid if
# kestrel has --device, with both models and 1/2 threads. Reported, never checked against a speed.
phase_measure() {
  step "measure: one real-model inference (yolov3-tiny-416, person.jpg, no warm-up)"
  _t=$(ts)
  $K detect --threads 2 --warmup 0 --model $M/yolov3-tiny-416.onnx /kestrel/media/person.jpg \
    > /out/detect-person.json 2> /out/detect-person.log
  echo "detect yolov3-tiny-416 person.jpg: rc=$? in $(since "$_t") s (whole process, incl. ORT load, no warm-up)" | tee -a /out/speed.txt
  cat /out/detect-person.log /out/detect-person.json
  check "ORT loads and yolov3-tiny finds the person" 'grep -q "\"label\":\"person\"" /out/detect-person.json'
  step "speed: kestrel detect yolov3-tiny-416, 3 x person.jpg after 1 warm-up"
  for th in 1 2; do
    _t=$(ts)
    $K --log warn detect --threads $th --model $M/yolov3-tiny-416.onnx \
      /kestrel/media/person.jpg /kestrel/media/person.jpg /kestrel/media/person.jpg > /out/speed-detect-t$th.json
    echo "detect threads=$th: process $(since "$_t") s" | tee -a /out/speed.txt
    grep -o '"times_ms":{[^}]*}' /out/speed-detect-t$th.json | tee -a /out/speed.txt
  done
  for mdl in v5_const yolov3-tiny-416; do
    for th in 1 2; do
      step "speed: kestrel run, synthetic YUYV 640x480 @25 fps x 250, $mdl, intra_threads=$th"
      run_stream synthetic-$mdl-t$th $mdl $th
    done
  done
  if $K run --help | grep -q -- '--device'; then
    for th in 1 2; do
      step "speed: kestrel run, vivid /dev/$(node_of_0) YUYV 640x480 @25 fps x 250, v5_const, intra_threads=$th"
      run_stream vivid-v5_const-t$th v5_const $th --device "/dev/$(node_of_0)" --max-frames 250
    done
  fi
}

if [ "${1:-}" = phase ]; then
  PHASE=$2; export PHASE   # CAL comes from the runner's environment
  "phase_$2"; exit 0
fi

# ---- the phase runner ----------------------------------------------------------------------------------------
T_START=$(ts)
GUEST_LIMIT=${VM_GUEST_TIMEOUT:-0}          # /init's hang guard for this script (0: none known)
BOOT_S=$T_START                             # kernel boot + initramfs unpack: the first measure of this guest
PHASES="ort vivid devices steady nv12 faults"
[ "${VM_MEASURE:-0}" = 1 ] && PHASES="$PHASES measure"
: > /out/phases.txt; : > /out/checks.txt
echo "boot_s $BOOT_S" >> /out/calibration.txt
echo "guest_limit_s $GUEST_LIMIT" >> /out/calibration.txt
echo "=== VM-TEST plan: phases $PHASES (boot took $BOOT_S s; guest script limit ${GUEST_LIMIT:-none} s)"
[ "${VM_MEASURE:-0}" = 1 ] || echo "=== NOT RUN: phase measure (real yolov3-tiny inference and speed runs); VM_MEASURE=1 adds it"
[ -n "${VM_BUDGET_SCALE:-}" ] && echo "=== VM_BUDGET_SCALE=$VM_BUDGET_SCALE: every budget scaled (a test of the TIMEOUT path)"

# fixed sleeps (s) and calibration multiples per phase: budget = fixed + mult x CAL
# (multiples: about 5x what each phase needed beyond its sleeps in the runs where this was written: ort 1.2,
# vivid 1.3, devices 0.25, steady 1.5, nv12 1.5, faults 2.6 x CAL; measure: ~15 real-model inferences)
phase_fixed() { case $1 in vivid) echo 2 ;; steady) echo 12 ;; nv12) echo 6 ;; faults) echo 39 ;; measure) echo 60 ;; *) echo 0 ;; esac; }
phase_mult() { case $1 in vivid) echo 8 ;; devices) echo 3 ;; steady) echo 8 ;; nv12) echo 8 ;; faults) echo 15 ;; measure) echo 400 ;; *) echo 0 ;; esac; }
budget_of() {   # NAME -> integer seconds (before clamping)
  eval "_o=\${VM_BUDGET_$1:-}"
  if [ -n "$_o" ]; then echo "$_o"; return; fi
  if [ "$1" = ort ]; then _f=30; _m=5; _c=$BOOT_S; else _f=$(phase_fixed "$1"); _m=$(phase_mult "$1"); _c=$CAL; fi
  awk -v f="$_f" -v m="$_m" -v c="$_c" -v s="${VM_BUDGET_SCALE:-1}" 'BEGIN{b=(f+m*c)*s; i=int(b); if (i<b) i++; if (i<1) i=1; print i}'
}
budget_why() {
  eval "_o=\${VM_BUDGET_$1:-}"
  if [ -n "$_o" ]; then echo "VM_BUDGET_$1=$_o"; return; fi
  _s=; [ -n "${VM_BUDGET_SCALE:-}" ] && _s=" x VM_BUDGET_SCALE $VM_BUDGET_SCALE"
  if [ "$1" = ort ]; then echo "(30 s + 5 x boot $BOOT_S s)$_s"
  else echo "($(phase_fixed "$1") s fixed + $(phase_mult "$1") x CAL $CAL s)$_s"; fi
}
# kill_left: a daemon the phase left running (it ran out while the daemon ran): TERM, then KILL after 5 s
kill_left() {
  _kp=$(cat /tmp/daemon.pid 2>/dev/null); rm -f /tmp/daemon.pid
  [ -n "$_kp" ] && alive "$_kp" || return 0
  echo "PHASE $1: its daemon (pid $_kp) is still running: SIGTERM"; kill -TERM "$_kp" 2>/dev/null
  _i=0; while alive "$_kp" && [ $_i -lt 50 ]; do usleep 100000; _i=$((_i + 1)); done
  alive "$_kp" && { echo "PHASE $1: daemon $_kp ignored SIGTERM for 5 s: SIGKILL"; kill -KILL "$_kp" 2>/dev/null; }
  return 0
}
run_phase() {
  _p=$1; _b=$(budget_of "$_p"); _why=$(budget_why "$_p")
  if [ "$GUEST_LIMIT" -gt 0 ] 2>/dev/null; then
    # keep 10 s of the guest limit for the result line and the phases file
    _left=$(awk -v l="$GUEST_LIMIT" -v a="$T_START" -v n="$(ts)" 'BEGIN{printf "%d", l - (n - a) - 10}')
    if [ "$_left" -lt "$_b" ]; then
      echo "PHASE $_p: budget $_b s clamped to the $_left s left before the guest limit (${GUEST_LIMIT} s; raise VM_TIMEOUT)"
      _why="$_why, clamped by the guest limit"; _b=$_left; [ "$_b" -ge 1 ] || _b=1
    fi
  fi
  _s=$(ts); echo "$_p $_s $_b" > /out/phase-running.txt
  echo "PHASE $_p start at T=$_s, budget $_b s $_why"
  rm -f /tmp/daemon.pid
  timeout -k 5 "$_b" sh "$SELF" phase "$_p"; _rc=$?
  _e=$(ts); _d=$(awk -v a="$_s" -v b="$_e" 'BEGIN{printf "%.2f", b-a}')
  case $_rc in
    0) _st=ok ;;
    143|137) _st=TIMEOUT ;;
    *) _st=ERROR-rc$_rc ;;
  esac
  kill_left "$_p"
  echo "$_p $_s $_e $_d $_b $_st" >> /out/phases.txt; rm -f /out/phase-running.txt
  if [ $_st = TIMEOUT ]; then echo "PHASE $_p TIMEOUT after $_d s (budget $_b s $_why)"
  else echo "PHASE $_p $_st in $_d s (budget $_b s)"; fi
}
# skip_phase NAME WHY: a phase that cannot run, recorded as such (it counts as a failure)
skip_phase() {
  _t=$(ts); echo "$1 $_t $_t 0.00 0 NOT-RUN" >> /out/phases.txt
  echo "PHASE $1 NOT-RUN: $2"
}

for ph in $PHASES; do
  case $ph in
    ort) CAL=$BOOT_S ;;
    vivid) ;;
    devices|steady|nv12|faults)
      if [ ! -c /dev/video0 ]; then skip_phase "$ph" "no /dev/video0 (see the vivid phase)"; continue; fi ;;
    measure)
      if [ ! -f $M/yolov3-tiny-416.onnx ]; then skip_phase measure "no $M/yolov3-tiny-416.onnx in the initramfs"; continue; fi ;;
  esac
  export CAL; run_phase "$ph"
  # a faults phase that ran out may have left vivid unbound, unloaded or dropping frames: put it back
  if [ "$ph" = faults ] && [ "$(awk '$1=="faults"{print $6}' /out/phases.txt)" != ok ]; then
    [ -d $SYS ] || modprobe vivid $VIVID_OPTS; replug 0
    v4l2-ctl -d "/dev/$(node_of_0)" --set-ctrl=percentage_of_dropped_buffers=0 > /dev/null 2>&1
  fi
  if [ "$ph" = ort ]; then
    _c=$(calib cal_s); _crc=$(calib cal_rc)
    if [ -n "$_c" ] && [ "$_crc" = 0 ]; then CAL=$_c
      echo "=== CAL = $CAL s (one ORT process with one fixture inference); later budgets scale with it"
    else CAL=$(awk -v u="$BOOT_S" -v d="$(awk '$1=="ort"{print $4}' /out/phases.txt)" 'BEGIN{print (d > u ? d : u)}')
      echo "=== CAL: the calibration run failed (cal_s '${_c}', rc '${_crc}'): CAL = $CAL s (the ort phase's or the boot's time, the longer)"
    fi
    echo "cal_used $CAL" >> /out/calibration.txt
    _sum=0; for q in $PHASES; do [ "$q" = ort ] || _sum=$((_sum + $(budget_of "$q"))); done
    _used=$(awk -v a="$T_START" -v n="$(ts)" 'BEGIN{printf "%d", n - a}')
    echo "=== budgets of the remaining phases total $_sum s; $_used s used so far; guest limit ${GUEST_LIMIT} s"
    if [ "$GUEST_LIMIT" -gt 0 ] 2>/dev/null && [ $((_sum + _used + 10)) -gt "$GUEST_LIMIT" ]; then
      echo "=== WARNING: the phase budgets exceed the guest limit; later budgets will be clamped (raise VM_TIMEOUT)"
    fi
  fi
done

step "done"
echo "=== phases (name, start and end T in s since boot, elapsed s, budget s, status):"
sed 's/^/    /' /out/phases.txt
CHECKS=$(grep -c . /out/checks.txt); FAILS=$(grep -c '^FAIL' /out/checks.txt)
BAD=$(awk '$6 != "ok" {printf "%s%s %s", (n++ ? ", " : ""), $1, $6}' /out/phases.txt)
NPH=$(grep -c . /out/phases.txt)
if [ "$FAILS" = 0 ] && [ -z "$BAD" ]; then echo "VM-TEST RESULT: PASS ($CHECKS checks, $NPH phases)"
else echo "VM-TEST RESULT: FAIL ($FAILS of $CHECKS checks failed${BAD:+; phases not ok: $BAD})"; fi
