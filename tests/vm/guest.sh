#!/bin/sh
# tests/vm/guest.sh - runs inside the QEMU guest (busybox sh, root, /kestrel = binary + ORT + models +
# tests/vm/guest-files/, /kestrel/media/person.jpg); started by tests/vm/run.sh's /init. Console = ttyS0.
# Files written to /out/ reach the host in target/vm/out/guest/. Must end by printing the result line.
# Kernel command-line `VAR=value` words become environment here. Speed measurements (detect stage times;
# 25 fps YUYV 640x480 synthetic stream, and vivid if kestrel has --device, with both models and 1/2 threads):
#   VM_TIMEOUT=600 VM_APPEND='VM_MEASURE=1' tests/vm/run.sh         (about 5 min under TCG)
K=/kestrel/kestrel
M=/kestrel/models
FAILS=0; CHECKS=0
ts() { cut -d' ' -f1 /proc/uptime; }                     # seconds since boot
since() { awk -v a="$1" -v b="$(ts)" 'BEGIN{printf "%.2f", b-a}'; }
step() { echo "### T=$(ts) $*"; }
# check NAME CMD...: CMD is eval'ed; prints CHECK ok/FAIL and counts failures
check() {
  _n=$1; shift; CHECKS=$((CHECKS+1))
  if eval "$@"; then echo "CHECK ok: $_n"; else echo "CHECK FAIL: $_n"; FAILS=$((FAILS+1)); fi
}

step "vivid"
VIVID_OPTS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"   # one capture node, one webcam input
modprobe vivid $VIVID_OPTS
check "vivid loaded, /dev/video0 present" '[ -c /dev/video0 ]'
v4l2-ctl --list-devices
v4l2-ctl -d0 -D > /out/v4l2-info.txt 2>&1; grep -E 'Driver name|Card type' /out/v4l2-info.txt
v4l2-ctl -d0 --list-formats-ext > /out/v4l2-formats.txt 2>&1
echo "formats: $(grep -o "'[A-Z0-9 ]*'" /out/v4l2-formats.txt | sort -u | tr '\n' ' ')"
check "vivid offers YUYV" "grep -q \"'YUYV'\" /out/v4l2-formats.txt"
t=$(ts)
v4l2-ctl -d0 --set-fmt-video=width=640,height=480,pixelformat=YUYV --set-parm=25 \
  --stream-mmap=4 --stream-count=25 --stream-to=/tmp/f.raw > /tmp/cap.log 2>&1
echo "v4l2-ctl: 25 frames YUYV 640x480 @25 fps in $(since "$t") s"
check "v4l2-ctl captured 25 x 614400 bytes" '[ "$(wc -c < /tmp/f.raw)" = 15360000 ]'
rm -f /tmp/f.raw

step "kestrel"
check "kestrel --version" '$K --version'
t=$(ts)
$K detect --threads 2 --warmup 0 --model $M/yolov3-tiny-416.onnx /kestrel/media/person.jpg \
  > /out/detect-person.json 2> /out/detect-person.log
echo "detect yolov3-tiny-416 person.jpg: rc=$? in $(since "$t") s (whole process, incl. ORT load, no warm-up)"
cat /out/detect-person.log /out/detect-person.json
check "ORT loads and yolov3-tiny finds the person" 'grep -q "\"label\":\"person\"" /out/detect-person.json'

# run_stream NAME MODEL THREADS [kestrel run args]: synthetic.toml with that model/threads, output /out/NAME.jsonl
run_stream() {
  _name=$1 _mdl=$2 _th=$3; shift 3
  sed -e "s|^path = \"models/.*|path = \"models/$_mdl.onnx\"|" -e "s|^intra_threads = .*|intra_threads = $_th|" \
      -e "s|^path = \"/out/run.jsonl\"|path = \"/out/$_name.jsonl\"|" /kestrel/synthetic.toml > /kestrel/$_name.toml
  _t=$(ts)
  $K run --config /kestrel/$_name.toml "$@" 2> /out/$_name.log; _rc=$?
  _n=$(wc -l < /out/$_name.jsonl 2>/dev/null || echo 0)
  grep -E 'INFO +kestrel(::pipeline)?\]' /out/$_name.log | grep -E 'fps|stopped' | sed 's/^\[[^]]*Z /[/'
  echo "RESULT $_name: rc=$_rc published $_n/250 frames ($((_n * 100 / 250))%) in $(since "$_t") s" | tee -a /out/speed.txt
}
if [ "${VM_MEASURE:-0}" = 1 ]; then
  step "speed: kestrel detect yolov3-tiny-416, 3 x person.jpg after 1 warm-up"
  for th in 1 2; do
    t=$(ts)
    $K --log warn detect --threads $th --model $M/yolov3-tiny-416.onnx \
      /kestrel/media/person.jpg /kestrel/media/person.jpg /kestrel/media/person.jpg > /out/speed-detect-t$th.json
    echo "detect threads=$th: process $(since "$t") s" | tee -a /out/speed.txt
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
      step "speed: kestrel run, vivid /dev/video0 YUYV 640x480 @25 fps x 250, v5_const, intra_threads=$th"
      run_stream vivid-v5_const-t$th v5_const $th --device /dev/video0 --max-frames 250
    done
  fi
fi


# ------------------------------------------------------------------------------------------------------------
# Camera tests: kestrel on vivid. Timing marks (CLOCK_MONOTONIC ns, the clock of kestrel's capture_ns) go to
# /out/marks.txt; tests/vm/check.py analyses the JSON Lines and logs on the host afterwards.
mono() { awk '/^now at/{print $3; exit}' /proc/timer_list; }
mark() { echo "$1 $(mono)" >> /out/marks.txt; echo "MARK T=$(ts) $1"; }
alive() { kill -0 "$1" 2>/dev/null; }
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

step "kestrel devices"
$K devices > /out/devices.txt 2>&1; cat /out/devices.txt | head -40
$K devices --json > /out/devices.json 2>&1
check "kestrel devices shows vivid with YUYV and NV12 at 640x480 @ 25 fps" \
  'grep -q "card    vivid" /out/devices.txt && grep -q "YUYV" /out/devices.txt && grep -q "NV12" /out/devices.txt && grep -q "640x480 @ .*25 fps" /out/devices.txt'

step "steady: YUYV 640x480 @ 25 fps for 12 s"
$K run --config /kestrel/camera.toml > /out/steady.jsonl 2> /out/steady.log & P=$!
mark steady_start; sleep 12
check "steady: SIGTERM -> exit 0" 'stop $P steady'
grep -E "camera|stopped after" /out/steady.log | sed 's/^\[[^]]*Z /[/'

step "NV12 1280x720 for 6 s"
$K run --config /kestrel/camera-nv12.toml > /out/nv12.jsonl 2> /out/nv12.log & P=$!
mark nv12_start; sleep 6
check "nv12: SIGTERM -> exit 0" 'stop $P nv12'
grep -E "camera|stopped after" /out/nv12.log | sed 's/^\[[^]]*Z /[/'

step "faults: one daemon through unplugs, disconnect, EIO, driver drops, corrupt buffers, a stall, a move"
mkdir -p /dev/v4l/by-id; ln -sf /dev/video0 $LINK
$K run --config /kestrel/camera.toml --device $LINK > /out/faults.jsonl 2> /out/faults.log & P=$!
mark faults_start; sleep 3
for i in 1 2 3 4 5; do
  unplug 0; mark "unbind$i"; usleep 1500000   # marked once the device is gone
  check "unplug $i: daemon alive during the outage" 'alive $P'
  mark "bind$i"; replug 0; sleep 2   # marked before the bind starts: recovery includes the driver's probe
done
mark disconnect; v4l2-ctl -d /dev/video0 --set-ctrl=disconnect=1; usleep 1500000
check "disconnect control: daemon alive" 'alive $P'
unplug 0; mark bind_disconnect; replug 0; sleep 2
mark eio; v4l2-ctl -d /dev/video0 --set-ctrl=inject_fatal_streaming_error=1; sleep 2
check "fatal streaming error: daemon alive" 'alive $P'
mark drops_on; v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=50; sleep 2
v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=0; mark drops_off
# kestrel itself late: the daemon stopped for 0.4 s (10 frame periods, 4 buffers): the driver drops ~6 frames,
# and the source must blame them on the capture, not on the driver
mark sigstop; kill -STOP $P; usleep 400000; kill -CONT $P; mark sigcont; sleep 1
mark buf_error; v4l2-ctl -d /dev/video0 --set-ctrl=inject_v4l2_buf_flag_error=1; sleep 1
mark stall; v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=100; sleep 3
v4l2-ctl -d /dev/video0 --set-ctrl=percentage_of_dropped_buffers=0; mark stall_end; sleep 1
# the camera comes back as another node: unplug, reload the driver with another node number, relink
unplug 0; usleep 300000; rmmod vivid; t_moved=$(mono)
modprobe vivid $VIVID_OPTS vid_cap_nr=3; replug 0
echo "bind_moved_$(node_of_0) $t_moved" >> /out/marks.txt; echo "MARK bind_moved_$(node_of_0) (before modprobe)"
echo "vivid.0 is now /dev/$(node_of_0); $LINK -> $(readlink $LINK)"; sleep 2
check "moved: daemon alive" 'alive $P'
mark outage_for_term; unplug 0; usleep 1500000
check "SIGTERM during an outage -> exit 0" 'stop $P faults'
replug 0
grep -E "camera|stopped after" /out/faults.log | sed 's/^\[[^]]*Z /[/'
v4l2-ctl -d /dev/video0 -l > /out/vivid-controls.txt 2>&1

step "done"
if [ "$FAILS" = 0 ]; then echo "VM-TEST RESULT: PASS ($CHECKS checks)"; else echo "VM-TEST RESULT: FAIL ($FAILS of $CHECKS checks failed)"; fi
