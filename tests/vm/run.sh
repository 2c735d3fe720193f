#!/usr/bin/env bash
# tests/vm/run.sh [GUEST_SCRIPT] - real-kernel V4L2 tests: boots Debian's own kernel in QEMU (software
# emulation, -accel tcg) with the in-kernel `vivid` virtual camera, kestrel, ONNX Runtime and the models in
# an initramfs, runs GUEST_SCRIPT (default tests/vm/guest.sh) as root inside it, then powers off.
#
# Exit status: 0 iff the guest printed "VM-TEST RESULT: PASS" and its /out came back intact (and HOST_CHECK,
# if set, exits 0); 2 on a set-up error.
# Outputs (target/vm/out/):  console.log        serial console (ttyS0), also echoed to stdout
#                            guest/             everything the guest left in /out (phases.txt: its phases)
# Output channel: after the guest script, /init tars /out and writes it to a second UART (ttyS1, raw mode),
# which qemu saves to target/vm/ttyS1.bin, framed as "KESTREL-VM-OUT <bytes> <sha256>\n" <tar> "\n...-END\n";
# the host cuts out <bytes> bytes, checks the sha256 and untars. Byte-exact (~400 KB/s under TCG).
# Time: the guest runs named phases, each under its own budget (fixed sleeps + a multiple of a speed
# calibration measured in the guest; see guest.sh), so a slow phase is ended and reported by name. The two
# limits here are hang guards above those budgets: VM_TIMEOUT (qemu, boot to power-off) and the guest
# script's VM_GUEST_TIMEOUT = VM_TIMEOUT - max(60, VM_TIMEOUT / 8) (the rest: kernel boot + sending /out).
# Environment:
#   KESTREL_BIN=target/release/kestrel   binary to test (copied stripped of debug info)
#   HOST_CHECK='cmd args'                run after the VM as `cmd args OUT_DIR` (OUT_DIR = target/vm/out);
#                                        if the guest passed, its exit status becomes run.sh's
#   VM_TIMEOUT=1800 (3600 with VM_MEASURE=1)  VM_CPU=max  VM_SMP=2  VM_MEM=2048
#                   qemu wall-clock hang guard (s), -cpu, -smp, -m (MiB)
#   VM_APPEND=''    extra kernel command line; its VAR=value words become environment variables of the
#                   guest script, e.g. VM_APPEND='VM_MEASURE=1' (real-model speed runs; yolov3-tiny is then
#                   put in the initramfs, otherwise it is not), VM_APPEND='VM_BUDGET_steady=3' (see guest.sh)
#   SKIP_APT=1      never call apt-get
# Needs: Debian/Ubuntu amd64 host; root or sudo for apt-get only. Caches the kernel in .cache/vm/kernel.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
GUEST_SCRIPT=$(abs "${1:-$ROOT/tests/vm/guest.sh}")
KESTREL_BIN=$(abs "${KESTREL_BIN:-$ROOT/target/release/kestrel}")
cd "$ROOT"
MEASURE=0; case " ${VM_APPEND:-} " in *" VM_MEASURE=1 "*) MEASURE=1 ;; esac
VM_TIMEOUT=${VM_TIMEOUT:-$([ $MEASURE = 1 ] && echo 3600 || echo 1800)}; VM_CPU=${VM_CPU:-max}; VM_SMP=${VM_SMP:-2}; VM_MEM=${VM_MEM:-2048}
ORT_LIB=.cache/onnxruntime/1.31.1/x86_64/libonnxruntime.so.1.31.1
CACHE=$ROOT/.cache/vm; WORK=$ROOT/target/vm; OUT=$WORK/out
PASS_LINE="VM-TEST RESULT: PASS"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { printf '[vm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
now() { date +%s.%N; }
t0=$(now)

MODELS="models/coco.names tests/fixtures/generated/v5_const.onnx tests/fixtures/generated/v5_const_416.onnx"
[ $MEASURE = 1 ] && MODELS="$MODELS models/yolov3-tiny-416.onnx"
for f in "$GUEST_SCRIPT" "$KESTREL_BIN" "$ORT_LIB" $MODELS .cache/darknet/person.jpg; do
  [ -e "$f" ] || die "missing $f (build with cargo build --release; fetch models/media with scripts/setup.sh)"
done

# ---- 1. host packages: qemu, static busybox, v4l2-ctl (copied into the guest), cpio, kmod (depmod/modprobe)
pkg_ok() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
need=()
for p in qemu-system-x86 busybox-static v4l-utils cpio kmod binutils; do pkg_ok "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  [ -z "${SKIP_APT:-}" ] || die "missing packages ${need[*]} and SKIP_APT is set"
  log "installing ${need[*]}"
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  # with qemu-utils etc. from bookworm-backports installed, bookworm's qemu-system conflicts: take backports
  $APT install "${need[@]}" || $APT -t bookworm-backports install "${need[@]}"
fi

# ---- 2. Debian's kernel, unpacked (not installed) once into the cache; modules.dep is not shipped -> depmod
KDIR=$CACHE/kernel
if [ ! -s "$KDIR/KVER" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$KPKG" ] && [ -z "${SKIP_APT:-}" ]; then
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-get update?)"
  log "downloading + unpacking $KPKG into $KDIR"
  rm -rf "$KDIR" "$CACHE/dl"; mkdir -p "$KDIR" "$CACHE/dl"
  (cd "$CACHE/dl" && apt-get download -q "$KPKG" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
  deb=$(ls "$CACHE"/dl/"$KPKG"_*.deb 2>/dev/null | head -1) || true
  [ -n "$deb" ] || die "apt-get download $KPKG failed"
  dpkg-deb -x "$deb" "$KDIR"
  KVER=${KPKG#linux-image-}
  [ -f "$KDIR/boot/vmlinuz-$KVER" ] || die "no vmlinuz-$KVER in $deb"
  depmod -b "$KDIR" "$KVER"
  rm -rf "$CACHE/dl"
  echo "$KVER" > "$KDIR/KVER"        # written last: marks a complete cache
fi
KVER=$(cat "$KDIR/KVER")
log "kernel $KVER (cached in ${KDIR#"$ROOT"/})"

# ---- 3. initramfs (uncompressed cpio: faster to unpack under TCG than gzip, and quick to build)
R=$WORK/root
rm -rf "$R" "$OUT"; mkdir -p "$R"/{bin,dev,proc,sys,tmp,out,usr/bin,kestrel/models,kestrel/media,lib/modules/"$KVER"} "$OUT/guest"
cp /bin/busybox "$R/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
# copy_libs FILE: the shared libraries (and loader) FILE needs, at their host paths
copy_libs() {
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
    [ -e "$R$l" ] || { mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; }
  done
}
# vivid and the modules it depends on; busybox modprobe reads the modules.dep made here
modprobe -d "$KDIR" -S "$KVER" --show-depends vivid | awk '$1=="insmod"{print $2}' | while read -r f; do
  rel=${f#"$KDIR"/}; mkdir -p "$R/$(dirname "$rel")"; cp "$f" "$R/$rel"
done
cp "$KDIR"/lib/modules/"$KVER"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/"
depmod -b "$R" "$KVER"
cp /usr/bin/v4l2-ctl "$R/usr/bin/"; copy_libs /usr/bin/v4l2-ctl
# kestrel (debug info stripped: 45 MB -> a few MB) with ONNX Runtime beside it, where it looks first
objcopy --strip-debug "$KESTREL_BIN" "$R/kestrel/kestrel"; copy_libs "$KESTREL_BIN"
cp "$ORT_LIB" "$R/kestrel/"; copy_libs "$ORT_LIB"
# the real yolov3-tiny (35 MB) only for VM_MEASURE=1: the default run does no real-model inference
cp $MODELS "$R/kestrel/models/"
if [ $MEASURE = 1 ]; then log "VM_MEASURE=1: yolov3-tiny-416 in the initramfs (phase measure)"
else log "yolov3-tiny-416 not in the initramfs: no real-model inference in the VM (VM_APPEND='VM_MEASURE=1' adds it)"; fi
cp .cache/darknet/person.jpg "$R/kestrel/media/"
[ -d tests/vm/guest-files ] && cp -r tests/vm/guest-files/. "$R/kestrel/"
cp "$GUEST_SCRIPT" "$R/guest.sh"
cat > "$R/init" <<'INIT'
#!/bin/sh
# PID 1: mount, run /guest.sh, ship /out to the host over ttyS1, power off (panic=-1 + -no-reboot end qemu).
export PATH=/bin:/usr/bin:/kestrel HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo "=== VM: userspace up at $(cut -d' ' -f1 /proc/uptime)s (uptime)"
# the guest script gets VM_GUEST_TIMEOUT s (from the kernel command line), so /out still comes back on a hang;
# it ends its own phases earlier (their budgets are clamped to this limit), so this fires only on a hang
timeout -k 10 "${VM_GUEST_TIMEOUT:-1575}" sh /guest.sh
grc=$?
echo "=== VM: guest script exited rc=$grc at $(cut -d' ' -f1 /proc/uptime)s"
if [ $grc = 143 ] || [ $grc = 137 ]; then
  echo "=== VM: guest script KILLED by its hang guard (VM_GUEST_TIMEOUT=${VM_GUEST_TIMEOUT:-1575} s)$( \
    [ -f /out/phase-running.txt ] && echo " during phase $(cut -d' ' -f1 /out/phase-running.txt)")"
  echo "guest-script KILLED ${VM_GUEST_TIMEOUT:-1575}" > /out/guest-killed.txt
fi
# Output channel: ttyS1 (qemu -serial file:) in raw mode, one frame:
#   "KESTREL-VM-OUT <bytes> <sha256>\n" <tar of /out, exactly <bytes> bytes> "\nKESTREL-VM-OUT-END\n"
# The last close of the tty waits until the UART has sent everything (closing_wait), before poweroff.
tar -C /out -cf /tmp/out.tar . && exec 3<>/dev/ttyS1 && stty -F /dev/ttyS1 raw -echo -ixon -ixoff && {
  printf 'KESTREL-VM-OUT %s %s\n' "$(wc -c < /tmp/out.tar)" "$(sha256sum /tmp/out.tar | cut -d' ' -f1)"
  cat /tmp/out.tar
  printf '\nKESTREL-VM-OUT-END\n'
} >&3 && exec 3>&- && echo "=== VM: /out sent ($(wc -c < /tmp/out.tar) bytes tar) at $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$WORK/initramfs.cpio"
t1=$(now)
log "initramfs $(du -m "$WORK/initramfs.cpio" | cut -f1) MiB; setup took $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"

# ---- 4. boot. ttyS0 = console (stdio), ttyS1 = output channel (a file). -no-reboot + panic=-1: a guest
# panic ends qemu instead of hanging; timeout bounds everything else.
SER1=$WORK/ttyS1.bin; rm -f "$SER1"
hostload() { printf 'host %s CPUs, load average %s' "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"; }
# the guest script's hang guard: what is left after a reserve for the kernel boot and sending /out back
RESERVE=$((VM_TIMEOUT / 8 > 60 ? VM_TIMEOUT / 8 : 60))
VM_GUEST_TIMEOUT=$((VM_TIMEOUT > 2 * RESERVE ? VM_TIMEOUT - RESERVE : VM_TIMEOUT / 2))
log "booting: qemu-system-x86_64 -accel tcg -cpu $VM_CPU -smp $VM_SMP -m $VM_MEM (hang guards: qemu ${VM_TIMEOUT}s, guest script ${VM_GUEST_TIMEOUT}s); $(hostload)"
log "host CPU: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu "$VM_CPU" -smp "$VM_SMP" -m "$VM_MEM" \
  -nographic -nic none -no-reboot -serial mon:stdio -serial "file:$SER1" \
  -kernel "$KDIR/boot/vmlinuz-$KVER" -initrd "$WORK/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 VM_GUEST_TIMEOUT=$VM_GUEST_TIMEOUT ${VM_APPEND:-}" < /dev/null 2>&1 \
  | sed -u -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[()][A-Z0-9]//g' -e 's/\x1b[=>c]//g' -e 's/\r//g' \
  | tee "$OUT/console.log"
qrc=${PIPESTATUS[0]}
set -e
t2=$(now)
[ "$qrc" = 124 ] && log "TIMEOUT: qemu killed by its hang guard after ${VM_TIMEOUT}s (VM_TIMEOUT); last phase started: $( \
  grep -a '^PHASE .* start at' "$OUT/console.log" | tail -1 | cut -d' ' -f2 || true)"
[ "$qrc" = 0 ] || [ "$qrc" = 124 ] || log "qemu exited with status $qrc"

# ---- 5. unpack the output frame from ttyS1
got_out=0
if [ -s "$SER1" ] && hdr=$(grep -a -b -m1 '^KESTREL-VM-OUT [0-9]* [0-9a-f]*$' "$SER1"); then
  off=${hdr%%:*}; line=${hdr#*:}; read -r _ n sum <<< "$line"
  # payload: the n bytes after the header line (tail -c +K counts from 1)
  tail -c +$((off + ${#line} + 2)) "$SER1" | head -c "$n" > "$WORK/out.tar"
  if [ "$(sha256sum < "$WORK/out.tar" | cut -d' ' -f1)" = "$sum" ] && tar -C "$OUT/guest" -xf "$WORK/out.tar"; then
    got_out=1; log "guest /out -> ${OUT#"$ROOT"/}/guest ($n bytes, sha256 ok): $(cd "$OUT/guest" && find . -type f | wc -l) files"
  else
    log "output channel: checksum mismatch or bad tar ($(wc -c < "$WORK/out.tar") of $n bytes)"
  fi
else
  log "output channel: no output frame from the guest"
fi

if grep -aq '^=== VM: guest script KILLED' "$OUT/console.log"; then log "$(grep -a '^=== VM: guest script KILLED' "$OUT/console.log" | head -1 | cut -c5-)"; fi
# the guest's phases, as it recorded them (or, without /out, as the console shows them)
if [ -s "$OUT/guest/phases.txt" ]; then
  log "guest phases (elapsed / budget, s):"
  awk '{printf "[vm]   %-8s %8.1f / %5d  %s\n", $1, $4, $5, $6; t += $4} END {printf "[vm]   %-8s %8.1f\n", "sum", t}' "$OUT/guest/phases.txt" >&2
  [ ! -s "$OUT/guest/phase-running.txt" ] || log "  phase $(cut -d' ' -f1 "$OUT/guest/phase-running.txt") started but never finished"
  [ ! -s "$OUT/guest/calibration.txt" ] || log "  calibration: $(tr '\n' ' ' < "$OUT/guest/calibration.txt")"
else
  log "no phases.txt from the guest; phase lines on the console:"; grep -a '^PHASE ' "$OUT/console.log" | sed 's/^/[vm]   /' >&2 || true
fi
awk -v a="$t0" -v b="$t1" -v c="$t2" -v l="$(hostload)" \
  'BEGIN{printf "[vm] TIMING: setup %.1f s, boot+guest %.1f s, total %.1f s (after: %s)\n", b-a, c-b, c-a, l}' >&2
rc=1
if grep -q "^$PASS_LINE" "$OUT/console.log"; then rc=0; log "guest: PASS"; else log "guest: FAIL (no '$PASS_LINE' line)"; fi
[ $got_out = 1 ] || rc=1
if [ -n "${HOST_CHECK:-}" ]; then
  log "HOST_CHECK: $HOST_CHECK $OUT"
  set +e; bash -c "$HOST_CHECK \"\$1\"" host-check "$OUT"; hrc=$?; set -e
  log "HOST_CHECK exit status $hrc"
  [ $rc != 0 ] || rc=$hrc
fi
exit $rc
