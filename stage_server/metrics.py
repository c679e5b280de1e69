"""What a stage measures about itself: hot-path hooks, energy, and the Prometheus view of both.

The runtime calls the hooks of a `StageHooks` (decoded, computed, encoded, sent, error). The plain
`StageHooks` only holds the energy meter and does nothing per frame; `PrometheusStageMetrics`
records into a per-server registry served by `--metrics-port`. Prometheus counters run for the
life of the process; the `StageStatus` counters restart at every assignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from pipeedge.energy import EnergyMeter
from pipeedge.metrics import COMPUTE_BUCKETS, FAST_BUCKETS, prometheus

if TYPE_CHECKING:
    from pipeedge._proto import stage_pb2 as pb
    from pipeedge.metrics import MetricsEndpoint
    from pipeedge.stage_server.runtime import StageRuntime
    from pipeedge.stage_server.servicer import StageServicer


class StageHooks:
    """No-op hooks (metrics endpoint off); still carries the device's energy meter."""

    def __init__(self, energy: EnergyMeter | None = None) -> None:
        self.energy = energy

    def energy_joules(self) -> float | None:
        """Device energy in joules since the meter opened; None = not available."""
        if self.energy is None:
            return None
        try:
            return self.energy.read_joules()
        except OSError:
            return None

    def decoded(self, nbytes: int, seconds: float) -> None:
        """A received frame's payload (bytes) became validated tensors in `seconds`."""

    def computed(self, items: int, seconds: float) -> None:
        """One microbatch of `items` samples went through the shard in `seconds`."""

    def encoded(self, seconds: float) -> None:
        """A result's tensors were encoded for the wire in `seconds`."""

    def sent(self, nbytes: int) -> None:
        """A frame with `nbytes` of tensor payload was handed to the next hop."""

    def send_time(self, seconds: float) -> None:
        """The next-hop stream accepted one frame after `seconds` (serialisation + flow control)."""

    def error(self, code: grpc.StatusCode) -> None:
        """This stage answered a request with an error."""


class PrometheusStageMetrics(StageHooks):
    """Hooks recording into a registry of this server's own (`self.registry`)."""

    def __init__(self, energy: EnergyMeter | None = None) -> None:
        super().__init__(energy)
        prom = prometheus()
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.items = prom.Counter("pipeedge_stage_items_total",
                                  "Samples computed by this stage.", registry=r)
        self.microbatches = prom.Counter("pipeedge_stage_microbatches_total",
                                         "Microbatches computed by this stage.", registry=r)
        self.compute = prom.Histogram("pipeedge_stage_compute_seconds",
                                      "Shard compute time per microbatch.",
                                      buckets=COMPUTE_BUCKETS, registry=r)
        self.bytes_received = prom.Counter("pipeedge_stage_bytes_received_total",
                                           "Tensor payload bytes received from upstream.",
                                           registry=r)
        self.bytes_sent = prom.Counter("pipeedge_stage_bytes_sent_total",
                                       "Tensor payload bytes sent to the next hop.", registry=r)
        self.decode = prom.Histogram("pipeedge_stage_decode_seconds",
                                     "Time to turn a received frame into validated tensors.",
                                     buckets=FAST_BUCKETS, registry=r)
        self.encode = prom.Histogram("pipeedge_stage_encode_seconds",
                                     "Time to encode a result's tensors (incl. compression).",
                                     buckets=FAST_BUCKETS, registry=r)
        self.send = prom.Histogram("pipeedge_stage_send_seconds",
                                   "Time for the next-hop stream to accept one frame "
                                   "(serialisation and HTTP/2 flow control).",
                                   buckets=FAST_BUCKETS, registry=r)
        self.errors = prom.Counter("pipeedge_stage_errors_total",
                                   "Requests this stage answered with an error, by gRPC code.",
                                   ["code"], registry=r)

    def bind(self, servicer: StageServicer) -> None:
        """Expose the servicer's live state (queues, in-flight, assignment, energy)."""
        self.registry.register(_StateCollector(servicer, self))

    # -- hooks ----------------------------------------------------------------------------------
    def decoded(self, nbytes: int, seconds: float) -> None:
        self.bytes_received.inc(nbytes)
        self.decode.observe(seconds)

    def computed(self, items: int, seconds: float) -> None:
        self.items.inc(items)
        self.microbatches.inc()
        self.compute.observe(seconds)

    def encoded(self, seconds: float) -> None:
        self.encode.observe(seconds)

    def sent(self, nbytes: int) -> None:
        self.bytes_sent.inc(nbytes)

    def send_time(self, seconds: float) -> None:
        self.send.observe(seconds)

    def error(self, code: grpc.StatusCode) -> None:
        self.errors.labels(code=code.name).inc()


class _StateCollector:
    """Gauges read at scrape time, so the hot path pays nothing for them."""

    def __init__(self, servicer: StageServicer, hooks: StageHooks) -> None:
        self.servicer = servicer
        self.hooks = hooks

    def describe(self) -> list[object]:
        return []  # dynamic families: no up-front description

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self.servicer
        rt = s.runtime
        depth = GaugeMetricFamily("pipeedge_stage_queue_depth",
                                  "Microbatches waiting in a bounded queue (in: for compute, "
                                  "out: for the next hop).", labels=["queue"])
        qin, qout = rt.queue_depths() if rt else (0, 0)
        depth.add_metric(["in"], qin)
        depth.add_metric(["out"], qout)
        yield depth
        yield GaugeMetricFamily("pipeedge_stage_in_flight_requests",
                                "Requests accepted whose result has not gone back upstream.",
                                value=s.in_flight.value)
        yield GaugeMetricFamily("pipeedge_stage_assigned", "1 when the stage holds a shard.",
                                value=1 if rt else 0)
        if rt:
            a = rt.assignment
            info = InfoMetricFamily("pipeedge_stage", "The current assignment.")
            info.add_metric([], {"stage": s.name, "model": a.model_name,
                                 "layers": f"{a.first_layer}-{a.last_layer}",
                                 "device": a.device or s.device,
                                 "assignment_id": rt.assignment_id})
            yield info
            yield GaugeMetricFamily("pipeedge_stage_parameter_bytes",
                                    "Bytes of weights the shard holds.",
                                    value=rt.backend.parameter_bytes)
        joules = self.hooks.energy_joules()
        yield GaugeMetricFamily("pipeedge_stage_energy_available",
                                "1 when this device can measure energy (RAPL or EnergyMon).",
                                value=0 if joules is None else 1)
        meter = self.hooks.energy
        if joules is not None and meter is not None:  # absent, not 0, when it cannot measure
            energy = CounterMetricFamily("pipeedge_stage_energy_joules",
                                         "Energy of this device (whole machine for RAPL) since "
                                         "the server started.", labels=["source"])
            energy.add_metric([meter.source], joules)
            yield energy


def fill_status(status: pb.StageStatus, runtime: StageRuntime) -> None:
    """Set StageStatus's monitoring fields (assigned_seconds, energy since assignment)."""
    import time

    status.assigned_seconds = time.monotonic() - runtime.started_at
    joules, meter = runtime.metrics.energy_joules(), runtime.metrics.energy
    if joules is not None and runtime.energy_at_start is not None and meter is not None:
        status.energy_joules = joules - runtime.energy_at_start  # unset = not available
        status.energy_source = meter.source


def make_hooks(*, prometheus_endpoint: bool) -> StageHooks:
    """The server's hooks: Prometheus-recording ones when the endpoint is on, plain otherwise;
    both with this device's energy meter when it has one."""
    from pipeedge.energy import open_meter

    meter = open_meter()
    return PrometheusStageMetrics(meter) if prometheus_endpoint else StageHooks(meter)


def serve_metrics(hooks: StageHooks, servicer: StageServicer, *, host: str,
                  port: int | None) -> MetricsEndpoint | None:
    """Start /metrics for this server (None when `port` is None: the endpoint is off)."""
    if port is None or not isinstance(hooks, PrometheusStageMetrics):
        return None
    from pipeedge.metrics import start_metrics_server

    hooks.bind(servicer)
    return start_metrics_server(hooks.registry, port=port, host=host)
