#!/usr/bin/env bash
# Docker-free aarch64 toolchain on Debian bookworm (or newer) / Ubuntu, idempotent:
#   Debian's rustc-web + cargo-web (a recent rustc at /usr/bin/rustc) with the aarch64 standard library
#   (libstd-rust-web-dev:arm64), the aarch64 cross C toolchain (links the binary, builds libjpeg-turbo),
#   libclang (bindgen for the v4l crate), cmake, and qemu-user 10 from bookworm-backports to run
#   aarch64 tests here (bookworm's qemu-user 7.2 crashes in ONNX Runtime's cpuinfo).
# rustup users can instead `rustup target add aarch64-unknown-linux-gnu` and skip the Rust packages.
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
with_qemu=1
[ "${1:-}" = --no-qemu ] && with_qemu=0

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
need=()
for p in rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross cmake libclang-dev; do
  have_pkg "$p" || need+=("$p")
done
qemu_ok=1
if [ $with_qemu = 1 ]; then
  v=$(qemu-aarch64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\).*/\1/p' || true)
  [ "${v:-0}" -ge 8 ] || qemu_ok=0
fi
if [ ${#need[@]} -eq 0 ] && [ $qemu_ok = 1 ]; then
  echo "cross toolchain present" >&2; exit 0
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
fi
. /etc/os-release
if [ $qemu_ok = 0 ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # bookworm-backports: add the suite to the existing Debian source (deb822 or one-line format).
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      $SUDO sed -i '0,/^Suites: bookworm bookworm-updates/s//Suites: bookworm bookworm-updates bookworm-backports/' \
        /etc/apt/sources.list.d/debian.sources
    fi
    grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
      echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/backports.list >/dev/null
  fi
fi
$SUDO apt-get update -q >&2
[ ${#need[@]} -eq 0 ] || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
if [ $qemu_ok = 0 ]; then
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-user >&2
  else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-user >&2
  fi
fi
echo "cross toolchain: $(/usr/bin/rustc --version), $(aarch64-linux-gnu-gcc --version | head -1)" >&2
[ $with_qemu = 0 ] || qemu-aarch64 --version | head -1 >&2
