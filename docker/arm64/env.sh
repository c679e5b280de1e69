#!/usr/bin/env bash
# Make this x86_64 machine able to build and run aarch64 code (make wheelhouse-arm64 / test-arm64):
#   - Debian's g++-aarch64-linux-gnu (the project's wheel is cross-compiled), qemu-user-static
#     (runs aarch64 binaries) and debootstrap (the arm64 base root), installed if missing;
#   - binfmt_misc mounted if /proc/sys/fs/binfmt_misc is empty, and qemu-aarch64 registered with
#     the F flag (the interpreter is opened now, so it also works inside chroots and containers).
# Idempotent; needs root only for what is missing. Usage: bash docker/arm64/env.sh [compiler|run]
#   compiler: only the cross compiler (enough for the wheel); run (default): everything.
set -euo pipefail

what=${1:-run}
say() { echo "[arm64-env] $*" >&2; }
die() { echo "[arm64-env] $*" >&2; exit 1; }

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
if [[ $what == run ]]; then
  [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "${missing[*]} missing and not root: apt-get install ${missing[*]}"
  say "apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ $what == run ]] || exit 0

BINFMT=/proc/sys/fs/binfmt_misc
if [[ ! -e $BINFMT/register ]]; then
  [[ $(id -u) == 0 ]] || die "binfmt_misc not mounted and not root: mount -t binfmt_misc binfmt_misc $BINFMT"
  say "mounting binfmt_misc"
  mount -t binfmt_misc binfmt_misc "$BINFMT"
fi
if [[ ! -e $BINFMT/qemu-aarch64 ]]; then
  [[ $(id -u) == 0 ]] || die "qemu-aarch64 binfmt handler not registered and not root"
  say "registering qemu-aarch64 (flags OPF) from /usr/lib/binfmt.d/qemu-aarch64.conf"
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > "$BINFMT/register"
fi
grep -q '^enabled' "$BINFMT/qemu-aarch64" || die "the qemu-aarch64 binfmt handler is disabled: echo 1 > $BINFMT/qemu-aarch64"
grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
  || die "qemu-aarch64 is registered without the F flag (chroots cannot find the interpreter): echo -1 > $BINFMT/qemu-aarch64, then rerun"
