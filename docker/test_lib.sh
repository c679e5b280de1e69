# Shared pieces of the container tests (sourced by docker/test_docker.sh and
# docker/arm64/test_arm64.sh). They use the caller's step/info/die functions and its settings:
# STATE (scratch directory), PY, WHEELHOUSE, PIPEEDGE_EXTRAS, IMAGE, BUILD_CACHE_IMAGE, PREFIX,
# DEVICES (device names).
#   docker_engine        installs Debian's docker.io (and a compose tool) if missing, starts dockerd
#                        if none answers; sets STARTED_DOCKERD (its pid, else empty), DOCKER_OK=1,
#                        COMPOSE_CMD, and DOCKER_BUILDKIT=0 where the client lacks buildx.
#   docker_engine_stop   stops the dockerd docker_engine started, unless KEEP_DOCKERD=1.
#   build_image [OPT..]  IMAGE (and its install stage, BUILD_CACHE_IMAGE) from WHEELHOUSE on BASE,
#                        offline; OPT are more `docker build` options (e.g. --platform).
#   device_ports         a free loopback port per device (PORTS); port_of DEVICE prints its port.
#   stage_compose DEVICE ARGS..  compose (docker/compose.stage.yml) for one device container.
#   wait_healthy NAME [SECONDS]  waits for a container's health status to be healthy.
#   teardown_containers RC [CMD..]  device logs if RC != 0, then every device (and CMD) down in
#                        parallel, and our dangling images pruned.
#   finish NAME [CMD..]  the EXIT trap: teardown_containers (with CMD), STATE removed, our dockerd
#                        stopped, then NAME's verdict and the script's exit status.

STARTED_DOCKERD=""
COMPOSE=()  # set to the compose command once devices may exist (teardown_containers needs it)

apt_install() {
  [[ $(id -u) == 0 ]] || die "$* missing and not root: install it (apt-get install $*)"
  if [[ -z ${APT_UPDATED:-} ]]; then
    info "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  info "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

docker_engine() {
  command -v dockerd >/dev/null || apt_install docker.io
  command -v docker >/dev/null || apt_install docker.io
  if ! docker info >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] || die "no Docker daemon answers and not root to start one"
    info "starting dockerd (log $STATE/dockerd.log)"
    dockerd >"$STATE/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not start"; }
  fi
  DOCKER_OK=1
  info "daemon $(docker version -f '{{.Server.Version}}') ($(docker info -f '{{.Driver}}'))," \
       "client $(docker version -f '{{.Client.Version}}')"
  # Without the buildx plugin, a recent client needs the (still working) classic builder.
  if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
  fi
  # Compose v2 plugin if present, else docker-compose (Debian's package is v1.29, which reads the
  # same files); installed from apt if neither is there.
  if docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
  else
    command -v docker-compose >/dev/null || apt_install docker-compose
    COMPOSE_CMD=(docker-compose)
  fi
  info "compose: ${COMPOSE_CMD[*]} ($("${COMPOSE_CMD[@]}" version --short 2>/dev/null || echo '?'))"
}

docker_engine_stop() {
  if [[ -n $STARTED_DOCKERD && -z ${KEEP_DOCKERD:-} ]]; then
    info "stopping the dockerd this test started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
  fi
}

build_image() {
  local build=(docker build "$@" --network none --build-arg "BASE_IMAGE=$BASE"
               --build-arg "PIPEEDGE_EXTRAS=$PIPEEDGE_EXTRAS" -f docker/Dockerfile)
  # The install stage gets a tag of its own, so pruning dangling images keeps it as build cache.
  "${build[@]}" --target build -t "$BUILD_CACHE_IMAGE" "$WHEELHOUSE" >"$STATE/build.log" 2>&1 \
    || { tail -30 "$STATE/build.log" >&2; die "docker build (install stage) failed"; }
  "${build[@]}" -t "$IMAGE" "$WHEELHOUSE" >>"$STATE/build.log" 2>&1 \
    || { tail -30 "$STATE/build.log" >&2; die "docker build failed"; }
  info "cached steps: $(grep -c 'Using cache' "$STATE/build.log" || true);" \
       "image $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

device_ports() {
  mapfile -t PORTS < <("$PY" - "${#DEVICES[@]}" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
)
}

port_of() { local i; for i in "${!DEVICES[@]}"; do [[ ${DEVICES[$i]} == "$1" ]] && echo "${PORTS[$i]}"; done; }

stage_compose() {
  local d=$1
  shift
  PIPEEDGE_IMAGE=$IMAGE PIPEEDGE_CONTAINER_NAME=$PREFIX-$d PIPEEDGE_NAME=$d \
  PIPEEDGE_HOST=127.0.0.1 PIPEEDGE_PORT=$(port_of "$d") \
  PIPEEDGE_THREADS=1 PIPEEDGE_CPUS=1 PIPEEDGE_MEM_LIMIT=2g \
  PIPEEDGE_HEALTH_INTERVAL=2s PIPEEDGE_LOG_FORMAT=text PIPEEDGE_GRACE=2 \
    "${COMPOSE_CMD[@]}" -p "$PREFIX-$d" -f docker/compose.stage.yml "$@"
}

health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null; }

wait_healthy() {  # NAME [SECONDS]
  local name=$1 limit=${2:-120} start=$SECONDS status=""
  while ((SECONDS - start < limit)); do
    status=$(health "$name")
    if [[ $status == healthy ]]; then
      info "$name healthy after $((SECONDS - start))s" \
           "(restarts: $(docker inspect -f '{{.RestartCount}}' "$name"))"
      return 0
    fi
    sleep 1
  done
  die "$name not healthy after ${limit}s (status: ${status:-none})"
}

teardown_containers() {  # RC [CMD..]
  local rc=$1
  shift
  if ((${#COMPOSE[@]})); then
    if ((rc != 0)); then
      for d in "${DEVICES[@]}"; do
        docker inspect "$PREFIX-$d" >/dev/null 2>&1 || continue
        echo "---- last log lines of $PREFIX-$d ----" >&2
        docker logs --tail 30 "$PREFIX-$d" >&2 2>&1
      done
    fi
    step "teardown"
    # In parallel; wait for these only (a plain `wait` would also wait for our dockerd).
    local pids=()
    for d in "${DEVICES[@]}"; do
      stage_compose "$d" down -v --remove-orphans -t 10 >/dev/null 2>&1 &
      pids+=($!)
    done
    if (($#)); then
      "$@" >/dev/null 2>&1 &
      pids+=($!)
    fi
    wait "${pids[@]}"
  fi
  if [[ -n ${DOCKER_OK:-} ]]; then
    # Only images this Dockerfile labelled: replaced builds and intermediate stages.
    for title in pipeedge pipeedge-build; do
      docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null 2>&1
    done
  fi
}

finish() {  # NAME [CMD..]; as the EXIT trap: `trap 'finish test-x' EXIT`
  local rc=$? name=$1
  shift
  set +e
  trap - EXIT INT TERM
  teardown_containers "$rc" "$@"
  rm -rf "$STATE"
  docker_engine_stop
  if ((rc == 0)); then
    step "$name passed in $((SECONDS - T0))s"
  else
    printf '[%s %4ds] FAILED (exit %d)\n' "$name" "$((SECONDS - T0))" "$rc" >&2
  fi
  exit "$rc"
}
