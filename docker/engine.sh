# A Docker engine for the container tests (sourced by docker/test_docker.sh and
# docker/arm64/test_arm64.sh; uses their info/die functions and $STATE scratch directory).
#   docker_engine       installs Debian's docker.io (and a compose tool) if missing, starts dockerd
#                       if none answers; sets STARTED_DOCKERD (its pid, else empty), DOCKER_OK=1,
#                       COMPOSE_CMD, and DOCKER_BUILDKIT=0 where the client lacks buildx.
#   docker_engine_stop  stops the dockerd docker_engine started, unless KEEP_DOCKERD=1.
#   wait_healthy NAME [SECONDS]  waits for a container's health status (its HEALTHCHECK) to be healthy.

STARTED_DOCKERD=""

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
