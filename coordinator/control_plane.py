"""`pipeedge-coord serve`: keep a pipeline alive.

The control plane deploys the pipeline, then watches every host (health checks with deadlines,
so a hung stage counts as dead, not only a crashed one). When a stage fails it re-plans over the
hosts still up, redeploys, and publishes the new pipeline (a higher version) to clients through
the Coordinator service and the pipeline file. A host that comes back is used at the next re-plan.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeedge import channels
from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.pipeline_file import Pipeline

log = logging.getLogger(__name__)


class _HostProbe:
    """A persistent channel used only for health checks of one host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.channel = channels.open_channel(host.address)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.failures = 0

    def healthy(self, timeout_s: float) -> bool:
        try:
            reply = self.stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


class ControlPlane:
    def __init__(self, dep: Deployment, *, pipeline_path: Path, check_interval_s: float = 0.5,
                 check_timeout_s: float = 1.0, failures_to_down: int = 2) -> None:
        self.dep = dep
        self.pipeline_path = Path(pipeline_path)
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.failures_to_down = failures_to_down
        self.probes = {h.name: _HostProbe(h) for h in dep.hosts}
        self.down: set[str] = set()
        self.pipeline: Pipeline | None = None
        self.version = 0
        self.replans: list[dict] = []  # history: when, why, how long
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- deployment -------------------------------------------------------------------------------
    def deploy(self, reason: str = "initial deployment") -> Pipeline:
        """(Re)deploy over the hosts that are up; retried while hosts keep failing."""
        start = time.monotonic()
        while True:
            hosts = [h for h in self.dep.ordered_hosts() if h.name not in self.down]
            if not hosts:
                raise deploy_mod.DeployError("no host is up; start stage servers and retry")
            stages = planning.plan(self.dep, hosts, strict=False).stages
            try:
                pipeline = deploy_mod.deploy(self.dep, stages, progress=False)
                break
            except Exception as exc:  # a host failed mid-deploy: mark what is down, try again
                log.warning("deploy failed (%s); re-checking hosts", exc,
                            extra={"event": "deploy_error", "reason": reason})
                if not self._mark_unhealthy(hosts):
                    raise
        self._publish(pipeline)
        took = time.monotonic() - start
        self.replans.append({"version": self.version, "reason": reason, "seconds": took,
                             "stages": [f"{s.name}:{s.first_layer}-{s.last_layer}"
                                        for s in pipeline.stages]})
        log.info("pipeline v%d deployed in %.2fs (%s): %s", self.version, took, reason,
                 ", ".join(self.replans[-1]["stages"]),
                 extra={"event": "replan" if self.version > 1 else "deploy",
                        "version": self.version, "seconds": round(took, 3), "reason": reason,
                        "stages": ",".join(self.replans[-1]["stages"])})
        return pipeline

    def _mark_unhealthy(self, hosts: list[Host]) -> bool:
        changed = False
        for h in hosts:
            if not self.probes[h.name].healthy(self.check_timeout_s):
                self.down.add(h.name)
                changed = True
        return changed

    def _publish(self, pipeline: Pipeline) -> None:
        with self._cond:
            self.version += 1
            extra = {**pipeline.extra, "version": self.version}
            self.pipeline = replace(pipeline, extra=extra)
            self.pipeline.save(self.pipeline_path)
            self._cond.notify_all()

    def info(self, newer_than: int = 0, timeout_s: float = 0.0) -> cpb.PipelineInfo:
        with self._cond:
            if newer_than:
                self._cond.wait_for(lambda: self.version > newer_than, timeout=timeout_s)
            p = self.pipeline
            if p is None:
                return cpb.PipelineInfo()
            return cpb.PipelineInfo(
                version=self.version, model=p.model, entry=p.entry, down=sorted(self.down),
                stages=[cpb.PipelineStage(name=s.name, address=s.address,
                                          first_layer=s.first_layer, last_layer=s.last_layer)
                        for s in p.stages])

    # -- watching ---------------------------------------------------------------------------------
    def start_watching(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for p in self.probes.values():
            p.channel.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            in_use = {s.name for s in self.pipeline.stages} if self.pipeline else set()
            failed = []
            for name, probe in self.probes.items():
                healthy = probe.healthy(self.check_timeout_s)
                probe.failures = 0 if healthy else probe.failures + 1
                if name in self.down and healthy:
                    log.info("host %s is back; it joins at the next re-plan", name,
                             extra={"event": "host_up", "host": name})
                    self.down.discard(name)
                elif name not in self.down and probe.failures >= self.failures_to_down:
                    self.down.add(name)
                    log.warning("host %s is down (%d failed health checks)", name,
                                probe.failures, extra={"event": "host_down", "host": name})
                    if name in in_use:
                        failed.append(name)
            if failed:
                log.warning("stage(s) %s failed; re-planning over %d host(s)", failed,
                            len(self.probes) - len(self.down),
                            extra={"event": "stage_failed", "stages": ",".join(failed)})
                try:
                    self.deploy(reason=f"{', '.join(failed)} failed")
                except Exception:
                    log.exception("re-plan failed; will retry on the next check",
                                  extra={"event": "replan_error"})


class CoordinatorServicer(cpb_grpc.CoordinatorServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def GetPipeline(self, request, context) -> cpb.PipelineInfo:
        remaining = context.time_remaining() or 0.0
        return self.plane.info(request.newer_than, timeout_s=max(0.0, remaining - 0.1))


COORDINATOR_SERVICE = cpb.DESCRIPTOR.services_by_name["Coordinator"].full_name


def start_server(plane: ControlPlane, address: str) -> tuple[grpc.Server, int]:
    """Serve GetPipeline with the deployment's own security (hosts.yml tls:/token:): mutual TLS
    with the coordinator's certificate, and the inference token on every call."""
    security = plane.dep.security
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=channels.SERVER_OPTIONS,
                         interceptors=channels.server_interceptors(security, COORDINATOR_SERVICE))
    cpb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(plane), server)
    channels.add_standard_services(server, COORDINATOR_SERVICE)
    port = channels.add_server_port(server, address, security=security)
    if port == 0:
        raise OSError(f"cannot listen on {address}; is the port in use?")
    server.start()
    return server, port
