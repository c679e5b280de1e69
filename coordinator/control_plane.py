"""`pipeedge-coord serve`: keep a pipeline alive, and never let it mix two plans.

The control plane deploys the pipeline under a fresh epoch (coordinator/epochs.py), then watches
every host through its Status call, with a deadline, so a hung stage counts as dead. It watches
identity as well as health: a stage of the pipeline that no longer holds the current epoch (it
restarted empty, faster than two failed checks) is as broken as a dead one. Then it re-plans
over the hosts still up and redeploys under a new epoch; a re-plan that fails is retried with
backoff until it succeeds, and `problem` says why the pipeline does not serve meanwhile. Hosts
that come back join at once when the plan would use them; stages left out are released.

Clients learn the current pipeline (its version is its epoch) through the Coordinator service
and the pipeline file. A restarted coordinator adopts the deployment its state file records when
every stage still holds it, so clients keep going without a redeploy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc

from pipeedge import channels
from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.epochs import EpochStore, state_path_for
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import StageInfo

log = logging.getLogger(__name__)

# GetPipeline long-polls parked at once; more are answered at once (clients then poll again),
# so watchers can never take every server thread.
MAX_WATCHERS = 8
SERVER_THREADS = 32
# Longest a GetPipeline long-poll is held, whatever its deadline.
MAX_WATCH_S = 30.0
# Re-plan retry backoff after a failed attempt: doubles from the first to the last.
RETRY_BACKOFF_S = (0.5, 10.0)


class _HostProbe:
    """A persistent channel to one host, for Status polls (health and identity at once)."""

    def __init__(self, host: Host, security) -> None:
        self.host = host
        self.control = StageControl(host.name, host.address, security=security)
        self.failures = 0
        self.last: pb.StageStatus | None = None

    def status(self, timeout_s: float) -> pb.StageStatus | None:
        try:
            self.last = self.control.status(timeout_s=timeout_s)
        except grpc.RpcError:
            self.last = None
        return self.last

    def close(self) -> None:
        self.control.close()


def _holds(status: pb.StageStatus | None, stage: StageInfo, epoch: int) -> bool:
    """Whether a stage still holds its part of the deployment `epoch`."""
    return (status is not None and status.assigned and status.assignment.epoch == epoch
            and status.assignment.first_layer == stage.first_layer
            and status.assignment.last_layer == stage.last_layer)


class ControlPlane:
    def __init__(self, dep: Deployment, *, pipeline_path: Path, check_interval_s: float = 0.5,
                 check_timeout_s: float = 1.0, failures_to_down: int = 2,
                 state_path: Path | None = None) -> None:
        self.dep = dep
        self.pipeline_path = Path(pipeline_path)
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.failures_to_down = failures_to_down
        self.store = EpochStore(state_path or state_path_for(self.pipeline_path))
        self.probes = {h.name: _HostProbe(h, dep.control_security) for h in dep.hosts}
        self.down: set[str] = set()
        self.pipeline: Pipeline | None = None
        self.version = 0  # the published pipeline's epoch
        self.problem = ""  # why the pipeline does not serve now ("" = it does)
        self.replans: deque[dict] = deque(maxlen=200)  # history: when, why, how long
        self._cond = threading.Condition()
        self._watchers = 0
        self._deploy_lock = threading.Lock()
        self._pending: str | None = None  # reason of a re-plan still to do
        self._force = False  # the pipeline is broken (or a redeploy was asked): no shortcut
        self._retry_at = 0.0
        self._backoff = RETRY_BACKOFF_S[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- deployment -------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        """Adopt the deployment the state file records if every stage still holds it (a
        coordinator restart); otherwise deploy."""
        for probe in self.probes.values():  # the epochs stages hold are floors for ours
            probe.status(self.check_timeout_s)
        return self._adopt() or self.deploy()

    def _adopt(self) -> Pipeline | None:
        saved, epoch = self.store.state.get("pipeline"), self.store.epoch
        if not saved or not epoch:
            return None
        try:
            pipeline = Pipeline.from_dict(saved)
        except (TypeError, KeyError, ValueError):
            return None
        if pipeline.model != self.dep.model or pipeline.version != epoch:
            return None
        by_address = {p.host.address: p for p in self.probes.values()}
        for s in pipeline.stages:
            probe = by_address.get(s.address)
            if probe is None or not _holds(probe.status(self.check_timeout_s), s, epoch):
                return None
        published = self._publish(pipeline, epoch)
        log.info("adopted pipeline epoch %d from %s: every stage still holds it", epoch,
                 self.store.path, extra={"event": "adopt", "version": epoch})
        return published

    def deploy(self, reason: str = "initial deployment") -> Pipeline:
        """(Re)deploy over the hosts that are up, each attempt under a new epoch."""
        with self._deploy_lock:
            start = time.monotonic()
            while True:
                hosts = [h for h in self.dep.ordered_hosts() if h.name not in self.down]
                if not hosts:
                    raise deploy_mod.DeployError("no host is up; start stage servers and retry")
                stages = planning.plan(self.dep, hosts, strict=False).stages
                for h in hosts:  # never polled yet (deploy before watching): ask now
                    if self.probes[h.name].last is None:
                        self.probes[h.name].status(self.check_timeout_s)
                held = [p.last.assignment.epoch for p in self.probes.values()
                        if p.last is not None and p.last.assigned]
                epoch = self.store.next_epoch(max([self.version, *held]))
                try:
                    # Hosts were just seen up: one that does not answer within a check's
                    # deadline has failed since, and the next attempt plans without it.
                    pipeline = deploy_mod.deploy(self.dep, stages, epoch=epoch, progress=False,
                                                 reach_timeout_s=2 * self.check_timeout_s)
                    break
                except Exception as exc:  # a host failed mid-deploy: mark what is down, retry
                    log.warning("deploy of epoch %d failed (%s); re-checking hosts", epoch, exc,
                                extra={"event": "deploy_error", "reason": reason})
                    if not self._mark_unhealthy(hosts):
                        raise
            published = self._publish(pipeline, epoch)
            self._release_left_out(pipeline, epoch)
        took = time.monotonic() - start
        self.replans.append({"version": epoch, "reason": reason, "seconds": took,
                             "stages": [f"{s.name}:{s.first_layer}-{s.last_layer}"
                                        for s in pipeline.stages]})
        log.info("pipeline epoch %d deployed in %.2fs (%s): %s", epoch, took, reason,
                 ", ".join(self.replans[-1]["stages"]),
                 extra={"event": "replan" if len(self.replans) > 1 else "deploy",
                        "version": epoch, "seconds": round(took, 3), "reason": reason,
                        "stages": ",".join(self.replans[-1]["stages"])})
        return published

    def _mark_unhealthy(self, hosts: list[Host]) -> bool:
        changed = False
        for h in hosts:
            if self.probes[h.name].status(self.check_timeout_s) is None:
                self.down.add(h.name)
                changed = True
        return changed

    def _release_left_out(self, pipeline: Pipeline, epoch: int) -> None:
        """Fence hosts the plan left out: they drop an older assignment (never a newer one)."""
        in_use = {s.name for s in pipeline.stages}
        for name, probe in self.probes.items():
            if name in in_use or name in self.down:
                continue
            try:
                probe.control.release(below_epoch=epoch)
            except grpc.RpcError:
                pass  # unreachable now: released when it comes back (see _check)

    def _publish(self, pipeline: Pipeline, epoch: int) -> Pipeline:
        published = replace(pipeline, version=epoch)
        with self._cond:
            self.version = epoch
            self.pipeline = published
            published.save(self.pipeline_path)
            self.store.record(pipeline=published.to_dict())
            self.problem = ""
            self._cond.notify_all()
        return published

    def info(self, newer_than: int = 0, timeout_s: float = 0.0) -> cpb.PipelineInfo:
        with self._cond:
            if newer_than and self.version <= newer_than and self._watchers < MAX_WATCHERS:
                self._watchers += 1
                try:
                    self._cond.wait_for(lambda: self.version > newer_than or self._stop.is_set(),
                                        timeout=min(timeout_s, MAX_WATCH_S))
                finally:
                    self._watchers -= 1
            p = self.pipeline
            if p is None:
                return cpb.PipelineInfo(problem=self.problem)
            return cpb.PipelineInfo(
                version=self.version, model=p.model, entry=p.entry, down=sorted(self.down),
                problem=self.problem,
                stages=[s.to_proto() for s in p.stages])

    # -- watching ---------------------------------------------------------------------------------
    def start_watching(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=10)
        for p in self.probes.values():
            p.close()

    def request_redeploy(self, reason: str) -> None:
        """Redeploy under a new epoch at the next check (SIGHUP to `serve`)."""
        self._pending = f"redeploy requested ({reason})"
        self._force = True
        self._retry_at = 0.0

    def _watch(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            try:
                self.check()
            except Exception:
                log.exception("health check round failed", extra={"event": "watch_error"})

    def check(self) -> None:
        """One round: poll every host, then re-plan if the pipeline is broken or could use a
        host that came back (retried with backoff while it fails)."""
        current = {s.name: s for s in self.pipeline.stages} if self.pipeline else {}
        reasons = []
        for name, probe in self.probes.items():
            st = probe.status(self.check_timeout_s)
            probe.failures = 0 if st is not None else probe.failures + 1
            if name in self.down and st is not None:
                self.down.discard(name)
                log.info("host %s is back", name, extra={"event": "host_up", "host": name})
                reasons.append(f"{name} is back")
            elif name not in self.down and probe.failures >= self.failures_to_down:
                self.down.add(name)
                log.warning("host %s is down (%d failed checks)", name, probe.failures,
                            extra={"event": "host_down", "host": name})
                if name in current:
                    reasons.append(f"{name} failed")
                    self._force = True
            elif st is not None and name in current and not _holds(st, current[name],
                                                                   self.version):
                log.warning("stage %s no longer holds epoch %d (restarted or reassigned)", name,
                            self.version, extra={"event": "stage_lost", "host": name})
                reasons.append(f"{name} lost its assignment")
                self._force = True
            if st is not None and name not in current and st.assigned \
                    and st.assignment.epoch < self.version:
                try:  # a stage left out of the plan still holds an old one: fence it
                    probe.control.release(below_epoch=self.version)
                except grpc.RpcError:
                    pass
        if reasons:
            joined = "; ".join(reasons)
            self._pending = f"{self._pending}; {joined}"[-300:] if self._pending else joined
            self._retry_at = 0.0
        if self._pending and time.monotonic() >= self._retry_at:
            self._replan()

    def _replan(self) -> None:
        reason = self._pending
        if not self._force and not self._needs_redeploy():
            self._pending = None
            return
        try:
            self.deploy(reason=reason or "re-plan")
        except Exception as exc:  # noqa: BLE001 - retried with backoff until it succeeds
            self.problem = (f"re-plan ({reason}) failed: {' '.join(str(exc).split())[:300]}; "
                            f"retrying in {self._backoff:.1f}s")
            log.warning("%s", self.problem, extra={"event": "replan_error"})
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_BACKOFF_S[1])
            return
        self._pending, self._force = None, False
        self._backoff = RETRY_BACKOFF_S[0]

    def _needs_redeploy(self) -> bool:
        """A returning host alone is not worth a redeploy when the plan would not change and
        every stage still holds the current epoch."""
        if self.pipeline is None:
            return True
        hosts = [h for h in self.dep.ordered_hosts() if h.name not in self.down]
        try:
            stages = planning.plan(self.dep, hosts, strict=False).stages
        except Exception:  # noqa: BLE001 - let deploy report it
            return True
        planned = [(s.host.name, s.layers.first, s.layers.last) for s in stages]
        current = [(s.name, s.first_layer, s.last_layer) for s in self.pipeline.stages]
        if planned != current:
            return True
        return not all(_holds(self.probes[s.name].last, s, self.version)
                       for s in self.pipeline.stages)


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
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                         options=channels.SERVER_OPTIONS,
                         interceptors=channels.server_interceptors(security, COORDINATOR_SERVICE))
    cpb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(plane), server)
    channels.add_standard_services(server, COORDINATOR_SERVICE)
    port = channels.add_server_port(server, address, security=security)
    if port == 0:
        raise OSError(f"cannot listen on {address}; is the port in use?")
    server.start()
    return server, port
