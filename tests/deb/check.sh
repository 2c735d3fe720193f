#!/usr/bin/env bash
# Check the .deb packages (scripts/package-deb.sh): contents and metadata of every package in target/debian
# (dpkg-deb -c / -I), then install the amd64 one on this machine (as root), check what the install did
# (user, unit, config, bundled ONNX Runtime + model detecting a person), run the daemon under the unit's
# sandbox settings that work without systemd as PID 1 (tests/deb/sandbox.py), score the installed unit with
# systemd-analyze (verify clean; security exposure <= 2.5), purge it, and check that nothing is left.
# Installs and purges a system package (root or sudo): CI runs it on a throw-away machine; it refuses to run
# if kestrel is already installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MAX_EXPOSURE=${MAX_EXPOSURE:-2.5}
fail() { echo "deb check FAILED: $*" >&2; exit 1; }
step() { printf '\n-- %s\n' "$*" >&2; }
shopt -s nullglob
debs=(target/debian/kestrel_*.deb)
[ ${#debs[@]} -gt 0 ] || fail "no packages in target/debian (scripts/package-deb.sh)"

for deb in "${debs[@]}"; do
  step "$deb"
  dpkg-deb -I "$deb" | sed 's/^/   /'
  arch=$(dpkg-deb -f "$deb" Architecture)
  contents=$(dpkg-deb -c "$deb")
  echo "$contents" | awk '{print "   " $1, $6}'
  for f in ./usr/bin/kestrel ./usr/lib/systemd/system/kestrel.service ./etc/kestrel/kestrel.toml \
           ./usr/lib/kestrel/libonnxruntime.so.1.31.1 ./usr/share/kestrel/models/yolov3-tiny-416.onnx \
           ./usr/share/kestrel/models/yolov3-tiny-416.golden.json ./usr/share/kestrel/models/golden/dog.jpg \
           ./usr/share/kestrel/systemd/mavlink-udp.conf ./usr/share/kestrel/systemd/zenoh.conf \
           ./usr/share/doc/kestrel/copyright ./usr/share/doc/kestrel/examples/clients/zenoh_ground_station.py \
           ./usr/share/doc/kestrel/deploy-jetson.md ./usr/share/doc/kestrel/ThirdPartyNotices-onnxruntime.txt; do
    echo "$contents" | awk '{print $6}' | grep -qx "$f" || fail "$deb lacks $f"
  done
  dpkg-deb -f "$deb" Depends | grep -q 'adduser' || fail "$deb: Depends lacks adduser"
  dpkg-deb -e "$deb" "target/debian/ctl-$arch"
  grep -qx /etc/kestrel/kestrel.toml "target/debian/ctl-$arch/conffiles" || fail "$deb: config is not a conffile"
  grep -q 'adduser --system' "target/debian/ctl-$arch/postinst" || fail "$deb: postinst creates no user"
  # The binaries inside are for the package's architecture.
  x=$(mktemp -d); dpkg-deb -x "$deb" "$x"
  case $arch in amd64) want='x86-64' ;; arm64) want='aarch64' ;; *) fail "unexpected architecture $arch" ;; esac
  for b in usr/bin/kestrel usr/lib/kestrel/libonnxruntime.so.1.31.1; do
    file -b "$x/$b" | grep -q "$want" || fail "$deb: $b is not $want: $(file -b "$x/$b")"
  done
  file -b "$x/usr/bin/kestrel" | grep -q 'not stripped' && fail "$deb: the binary is not stripped"
  rm -rf "$x" "target/debian/ctl-$arch"
  echo "   ok: $arch package contents" >&2
done

amd64=(target/debian/kestrel_*_amd64.deb)
[ ${#amd64[@]} -eq 1 ] || fail "expected one amd64 package"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
! dpkg -s kestrel >/dev/null 2>&1 || fail "kestrel is already installed here; not touching it"

step "apt-get install ${amd64[0]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./${amd64[0]}" >&2
getent passwd kestrel >/dev/null || fail "no kestrel user"
getent group kestrel >/dev/null || fail "no kestrel group"
[ "$(getent passwd kestrel | cut -d: -f7)" != /bin/bash ] || fail "kestrel user has a login shell"
/usr/bin/kestrel --version
unit=$(dpkg -L kestrel | grep '/systemd/system/kestrel.service$')
[ "$(stat -c %a /etc/kestrel/kestrel.toml)" = 644 ] || fail "config mode"
# The installed config validates (the camera being absent here is only a note).
/usr/bin/kestrel check-config --config /etc/kestrel/kestrel.toml
# The bundled ONNX Runtime (found beside the executable, /usr/lib/kestrel) and model detect, as the service user.
photo=
for p in /usr/share/darknet/data/person.jpg .cache/darknet/person.jpg; do [ -s "$p" ] && { photo=$p; break; }; done
[ -n "$photo" ] || fail "no person.jpg (scripts/setup.sh)"
cp "$photo" /tmp/kestrel-deb-person.jpg && chmod 644 /tmp/kestrel-deb-person.jpg
out=$(cd / && $SUDO env -u ORT_DYLIB_PATH runuser -u kestrel -- /usr/bin/kestrel --log warn detect \
  --model /usr/share/kestrel/models/yolov3-tiny-416.onnx /tmp/kestrel-deb-person.jpg)
echo "$out" | grep -q '"label":"person"' || fail "installed kestrel found no person: $out"
echo "   ok: installed kestrel (as user kestrel, bundled ONNX Runtime) detects the person" >&2
rm -f /tmp/kestrel-deb-person.jpg

step "the installed daemon in the unit's sandbox (user, groups, no_new_privs, W^X, its system-call filter)"
dpkg -s python3-seccomp >/dev/null 2>&1 ||
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-seccomp >&2
$SUDO /usr/bin/python3 tests/deb/sandbox.py

step "systemd-analyze verify $unit"
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "verify: $verify"
[ -z "$verify" ] || fail "verify is not clean: $verify"
echo "   ok: no findings" >&2
step "systemd-analyze security --offline=true $unit"
sec=$(systemd-analyze security --offline=true "$unit" 2>&1 | tr -d '\r')
echo "$sec" | grep '✗' | cut -c1-150 | sed 's/ *$//' >&2 || true
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score in: $sec"
echo "   exposure $score (limit $MAX_EXPOSURE)" >&2
awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || fail "exposure $score > $MAX_EXPOSURE"
# With the Zenoh drop-in (network for that output only): still clean, and its exposure stays within the limit.
step "the unit with the Zenoh drop-in: verify and security"
zd=$(mktemp -d) && mkdir "$zd/kestrel.service.d" && cp "$unit" "$zd/" &&
  cp /usr/share/kestrel/systemd/zenoh.conf "$zd/kestrel.service.d/" || fail "cannot stage the drop-in"
verify=$(systemd-analyze verify "$zd/kestrel.service" 2>&1) || fail "verify with zenoh.conf: $verify"
[ -z "$verify" ] || fail "verify with zenoh.conf is not clean: $verify"
zsec=$(systemd-analyze security --offline=true "$zd/kestrel.service" 2>&1 | tr -d '\r')
zscore=$(echo "$zsec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$zscore" ] || fail "no exposure score with zenoh.conf in: $zsec"
echo "   exposure with zenoh.conf $zscore (without: $score; limit $MAX_EXPOSURE)" >&2
awk -v s="$zscore" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || fail "exposure with zenoh.conf $zscore > $MAX_EXPOSURE"
rm -rf "$zd"

step "apt-get purge kestrel"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q kestrel >&2
! dpkg -s kestrel >/dev/null 2>&1 || fail "still installed"
for p in /usr/bin/kestrel "$unit" /etc/kestrel /usr/lib/kestrel /usr/share/kestrel /var/cache/kestrel; do
  [ ! -e "$p" ] || fail "$p left after purge"
done
echo "   ok: purged; nothing left (the kestrel user/group stay, as Debian policy advises)" >&2
echo "deb check PASSED" >&2
