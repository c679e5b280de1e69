"""Prometheus metrics of `pipeedge-coord serve`: the control plane and the pipeline it keeps.

Everything is read at scrape time from the control plane's state (pipeline version, hosts down,
deployment history) and from one Status call per stage (deadline `status_timeout_s`), so the
control plane's code carries no hooks. Per-stage series are labelled `stage`; the same numbers
come from each stage's own /metrics when its port is reachable.
"""

from __future__ import annotations

import grpc

from pipeedge.coordinator.stage_control import StageControl
from pipeedge.metrics import MetricsEndpoint, prometheus, start_metrics_server

# Deploy/re-plan durations, seconds: from a tiny model's 0.2 s to pushing large weights.
DEPLOY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ControlPlaneCollector:
    def __init__(self, plane, *, status_timeout_s: float = 1.0) -> None:
        self.plane = plane
        self.status_timeout_s = status_timeout_s
        self._controls: dict[tuple[str, str], StageControl] = {}

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.metrics_core import HistogramMetricFamily

        plane = self.plane
        yield GaugeMetricFamily("pipeedge_coord_pipeline_version",
                                "Epoch of the published pipeline (grows with every re-plan).",
                                value=plane.version)
        yield GaugeMetricFamily("pipeedge_coord_hosts", "Hosts in hosts.yml.",
                                value=len(plane.probes))
        yield GaugeMetricFamily("pipeedge_coord_hosts_down", "Hosts currently counted as down.",
                                value=len(plane.down))
        failures = GaugeMetricFamily("pipeedge_coord_host_failed_checks",
                                     "Consecutive failed health checks per host.",
                                     labels=["host"])
        for name, probe in plane.probes.items():
            failures.add_metric([name], probe.failures)
        yield failures
        history = list(plane.replans)
        yield CounterMetricFamily("pipeedge_coord_replans",
                                  "Re-plans after stage failures (the first deployment excluded).",
                                  value=max(len(history) - 1, 0))
        yield _histogram(HistogramMetricFamily, "pipeedge_coord_deploy_seconds",
                         "Time to (re)deploy the pipeline, initial deployment included.",
                         [h["seconds"] for h in history])
        yield from self._stages()

    def _stages(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("pipeedge_coord_stage_up",
                               "1 when the host answers Status and holds its part of the current pipeline.",
                               labels=["stage"])
        items = CounterMetricFamily("pipeedge_coord_stage_items",
                                    "Items computed since the stage's assignment.",
                                    labels=["stage"])
        compute = CounterMetricFamily("pipeedge_coord_stage_compute_seconds",
                                      "Compute time since the stage's assignment.",
                                      labels=["stage"])
        errors = CounterMetricFamily("pipeedge_coord_stage_errors",
                                     "Failed requests since the stage's assignment.",
                                     labels=["stage"])
        depth = GaugeMetricFamily("pipeedge_coord_stage_queue_depth",
                                  "Microbatches waiting in a stage's queue.",
                                  labels=["stage", "queue"])
        in_flight = GaugeMetricFamily("pipeedge_coord_stage_in_flight_requests",
                                      "Requests a stage accepted and has not answered.",
                                      labels=["stage"])
        energy = CounterMetricFamily("pipeedge_coord_stage_energy_joules",
                                     "Energy of the stage's machine since its assignment "
                                     "(absent when it cannot measure energy).", labels=["stage"])
        pipeline = self.plane.pipeline
        in_use = {s.name for s in pipeline.stages} if pipeline else set()
        # Every host of hosts.yml, so a stage dropped by a re-plan shows as down (up 0) instead
        # of its series vanishing.
        for s in self.plane.dep.hosts:
            ctl = self._control(s.name, s.address)
            try:
                st = ctl.status(timeout_s=self.status_timeout_s)
            except grpc.RpcError:
                up.add_metric([s.name], 0)
                continue
            holds = st.assigned and st.assignment.epoch == self.plane.version
            up.add_metric([s.name], 1 if s.name in in_use and holds else 0)
            if not st.assigned:
                continue
            items.add_metric([s.name], st.items_processed)
            compute.add_metric([s.name], st.compute_seconds)
            errors.add_metric([s.name], st.errors)
            depth.add_metric([s.name, "in"], st.queue_in_depth)
            depth.add_metric([s.name, "out"], st.queue_out_depth)
            in_flight.add_metric([s.name], st.in_flight)
            if st.HasField("energy_joules"):
                energy.add_metric([s.name], st.energy_joules)
        yield from (up, items, compute, errors, depth, in_flight, energy)

    def _control(self, name: str, address: str) -> StageControl:
        key = (name, address)
        if key not in self._controls:
            self._controls[key] = StageControl(name, address,
                                               security=self.plane.dep.control_security)
        return self._controls[key]

    def close(self) -> None:
        for c in self._controls.values():
            c.close()


def _histogram(family, name: str, doc: str, values: list[float]):
    buckets: list[tuple[str, float]] = []
    for bound in DEPLOY_BUCKETS:
        buckets.append((repr(float(bound)), sum(1 for v in values if v <= bound)))
    buckets.append(("+Inf", len(values)))
    total = sum(values)
    return family(name, doc, buckets=buckets, sum_value=total)


def serve_control_plane_metrics(plane, *, host: str, port: int) -> MetricsEndpoint:
    """Start /metrics for a control plane on its own registry."""
    prom = prometheus()
    registry = prom.CollectorRegistry(auto_describe=True)
    collector = ControlPlaneCollector(plane)
    registry.register(collector)
    endpoint = start_metrics_server(registry, port=port, host=host)
    endpoint.on_stop = collector.close
    return endpoint
