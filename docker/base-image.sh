#!/usr/bin/env bash
# Build a minimal local base image (Debian + python3 + python3-venv) with debootstrap and
# `docker import`, for machines that reach Debian's archive but no image registry.
# The image is tagged by a content key (suite, mirror, architecture, packages, this script), so a
# rerun with the same inputs reuses it. Prints the tag as its last line of stdout; progress on stderr.
#   BASE_SUITE=bookworm  BASE_MIRROR=http://deb.debian.org/debian  BASE_REBUILD=1 (ignore the cache)
#   BASE_ARCH=arm64 (a foreign architecture: needs qemu-user-static's binfmt handlers, see
#   docker/arm64/env.sh; debootstrap's second stage then runs emulated: 8.5 min measured)
set -euo pipefail

SUITE=${BASE_SUITE:-bookworm}
MIRROR=${BASE_MIRROR:-http://deb.debian.org/debian}
ARCH=${BASE_ARCH:-$(dpkg --print-architecture)}
PACKAGES=python3,python3-venv
KEY=$( { printf '%s\n' "$SUITE" "$MIRROR" "$ARCH" "$PACKAGES"; cat "$0"; } | sha256sum | cut -c1-12)
TAG=pipeedge-base:$SUITE-$ARCH-$KEY

say() { echo "[base-image] $*" >&2; }

if [[ -z ${BASE_REBUILD:-} ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "cached: $TAG"
  echo "$TAG"
  exit 0
fi
command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
}

ROOT=$(mktemp -d /var/tmp/pipeedge-rootfs.XXXXXX)
mkdir "$ROOT.ctx"
trap 'rm -rf "$ROOT" "$ROOT.ctx"' EXIT
say "debootstrap $SUITE ($ARCH, minbase + $PACKAGES) from $MIRROR into $ROOT"
start=$SECONDS
debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
  > "$ROOT.log" 2>&1 || { tail -30 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
say "debootstrap done in $((SECONDS - start))s; trimming"
# What an image never needs: downloaded .debs, package lists, docs, man pages, other locales.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
find "$ROOT"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} + 2>/dev/null || true
# Mirror what python:3.11-slim offers: `python` and `python3` on PATH, UTF-8.
ln -sf python3 "$ROOT"/usr/bin/python
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOT"/etc/apt/sources.list
# `docker build --platform` from scratch rather than `docker import`: import ignores --platform on
# daemons without experimental features and would label an arm64 root amd64.
say "building $TAG (linux/$ARCH) from the root"
tar -C "$ROOT" --numeric-owner -cf "$ROOT.ctx/rootfs.tar" .
printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' \
  'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'CMD ["python3"]' > "$ROOT.ctx/Dockerfile"
if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0  # classic builder: a recent client without the buildx plugin
fi
docker build -q --platform "linux/$ARCH" -t "$TAG" "$ROOT.ctx" >/dev/null
# Earlier builds of this suite/architecture (other keys) are stale: drop their tags.
docker image ls --format '{{.Repository}}:{{.Tag}}' pipeedge-base \
  | grep -E "^pipeedge-base:$SUITE-$ARCH-" | grep -vx "$TAG" | xargs -r docker rmi >/dev/null 2>&1 || true
say "base image $TAG ready ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'), $((SECONDS - start))s)"
echo "$TAG"
