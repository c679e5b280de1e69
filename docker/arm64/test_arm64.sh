#!/usr/bin/env bash
# arm64 end-to-end test on an x86_64 machine (`make test-arm64`, after `make wheelhouse-arm64`):
#   1. Emulation: qemu-user-static's aarch64 binfmt handler (docker/arm64/env.sh).
#   2. The arm64 base image (docker/base-image.sh with BASE_ARCH=arm64, cached by content key)
#      and the arm64 image from the same docker/Dockerfile, built offline from the arm64
#      wheelhouse under emulation (docker layers cache the ~9 min dependency install).
#   3. Inside the image, emulated: aarch64 python, `pipeedge-stage --help`, and the scheduler
#      extension solving the fixtures (sched-pipeline --json), identical to this host's output.
#   4. Two arm64 stage containers (docker/compose.stage.yml, host networking) healthy through
#      their gRPC health probe, which is also asked from the host.
#   5. docker/arm64/mixed_pipeline.py: one x86_64 stage here; tiny-bert, tiny-vit and tiny-gpt2
#      deployed over arm64 -> x86_64 -> arm64 by this host's coordinator; outputs vs transformers
#      (1e-5), greedy tokens identical.
#   6. Teardown: containers, volumes, dangling images of ours; dockerd if this script started it.
# Environment: PY, WHEELHOUSE (the arm64 wheelhouse), PIPEEDGE_EXTRAS, KEEP_DOCKERD=1,
# PIPEEDGE_SCHED_FIXTURES (the scheduler's fixture directory).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-.venv/bin/python}
WHEELHOUSE=${WHEELHOUSE:-build/arm64/wheelhouse}
PIPEEDGE_EXTRAS=${PIPEEDGE_EXTRAS-}
FIXTURES=${PIPEEDGE_SCHED_FIXTURES:-/work/shared/fixtures/pipeedge-format}
IMAGE=pipeedge:arm64
BUILD_CACHE_IMAGE=pipeedge:arm64-build
PREFIX=pe-arm64
DEVICES=(arm64-a arm64-b)
T0=$SECONDS

step() { printf '\n[test-arm64 %4ds] == %s\n' "$((SECONDS - T0))" "$*"; }
info() { printf '[test-arm64 %4ds]    %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[test-arm64 %4ds] FAIL: %s\n' "$((SECONDS - T0))" "$*" >&2; exit 1; }

[[ -x $PY ]] || die "$PY not found: run 'make install' (or call this through 'make test-arm64')"
ls "$WHEELHOUSE"/pipeedge/pipeedge-*aarch64.whl >/dev/null 2>&1 && [[ -d $WHEELHOUSE/deps ]] \
  || die "no arm64 wheelhouse in $WHEELHOUSE: run 'make wheelhouse-arm64'"
[[ -f $FIXTURES/models.yml ]] || die "scheduler fixtures not found in $FIXTURES: set PIPEEDGE_SCHED_FIXTURES"

STATE=$(mktemp -d /tmp/pipeedge-test-arm64.XXXXXX)
# shellcheck source=docker/test_lib.sh
source docker/test_lib.sh

trap 'finish test-arm64' EXIT
trap 'exit 130' INT TERM

step "aarch64 emulation (qemu-user-static, binfmt_misc)"
bash docker/arm64/env.sh run
info "$(sed -n 's/^flags: /qemu-aarch64 flags: /p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"

step "docker engine"
docker_engine

step "arm64 base image (debootstrap --arch=arm64, cached by content key)"
t=$SECONDS
BASE=$(BASE_ARCH=arm64 bash docker/base-image.sh | tail -1)
info "base: $BASE ($((SECONDS - t))s)"

step "image $IMAGE (linux/arm64) from $WHEELHOUSE, no network, emulated"
t=$SECONDS
build_image --platform linux/arm64
arch=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$IMAGE")
[[ $arch == linux/arm64 ]] || die "$IMAGE is $arch, not linux/arm64"
info "$arch image built in $((SECONDS - t))s"

step "inside the arm64 image (emulated)"
run=(docker run --rm --platform linux/arm64 --network none)
machine=$("${run[@]}" "$IMAGE" python -c 'import platform; print(platform.machine())')
[[ $machine == aarch64 ]] || die "the image's python reports $machine, not aarch64"
info "platform.machine() = $machine"
"${run[@]}" "$IMAGE" pipeedge-stage --help >"$STATE/help.txt" || die "pipeedge-stage --help failed"
grep -q -- "--cache-dir" "$STATE/help.txt" || die "pipeedge-stage --help lacks --cache-dir"
info "pipeedge-stage --help: $(wc -l <"$STATE/help.txt") lines"
# Every fixture model under both objectives; the arm64 extension must print what this host's does.
sched_all='for m in google/vit-base-patch16-224 google/vit-large-patch16-224; do
  for o in throughput latency; do
    sched-pipeline -m $m --objective $o --json -M $F/models.yml -T $F/device_types.yml -D $F/devices.yml
  done; done'
t=$SECONDS
"${run[@]}" -v "$(realpath "$FIXTURES"):/fixtures:ro" -e F=/fixtures "$IMAGE" sh -c "$sched_all" \
  >"$STATE/sched-arm64.json" || die "sched-pipeline failed on arm64"
PATH="$(dirname "$PY"):$PATH" F=$FIXTURES sh -c "$sched_all" >"$STATE/sched-x86.json"
diff "$STATE/sched-x86.json" "$STATE/sched-arm64.json" >&2 \
  || die "the arm64 scheduler's plans differ from this host's (diff above)"
info "scheduler extension: 4 fixture solves identical to x86_64 ($(grep -c '"exact": true' \
     "$STATE/sched-arm64.json") exact), $((SECONDS - t))s"

device_ports

COMPOSE=("${COMPOSE_CMD[@]}")
step "2 arm64 stage containers (${DEVICES[*]}) on 127.0.0.1:${PORTS[*]}"
for d in "${DEVICES[@]}"; do
  stage_compose "$d" up -d >"$STATE/up-$d.log" 2>&1 || { cat "$STATE/up-$d.log" >&2; die "up $d"; }
done
# Emulated: importing torch takes a while, and the probe itself is emulated python.
for d in "${DEVICES[@]}"; do wait_healthy "$PREFIX-$d" 300; done
for d in "${DEVICES[@]}"; do
  "$PY" -m pipeedge.stage_server.healthcheck --address "127.0.0.1:$(port_of "$d")" \
    || die "health probe from the host: $d is not serving"
done

step "mixed pipeline: arm64 -> x86_64 -> arm64, deployed from this host"
"$PY" docker/arm64/mixed_pipeline.py --workdir "$STATE/mixed" \
  --arm64 "127.0.0.1:${PORTS[0]}" --arm64 "127.0.0.1:${PORTS[1]}" \
  || die "the mixed x86_64 + arm64 pipeline differs from transformers (or failed)"
