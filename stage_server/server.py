"""Build and run a stage server: Stage service, standard health service and reflection.

SIGTERM reports NOT_SERVING, stops accepting calls, lets in-flight ones finish within the grace
period, then exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health

from pipeedge import channels, wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.security import Security
from pipeedge.stage_server.metrics import make_hooks, serve_metrics
from pipeedge.stage_server.servicer import CONTROL_THREADS, MAX_STREAMS, StageServicer
from pipeedge.stage_server.weight_cache import WeightCache

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Stage"].full_name


def build_server(address: str, servicer: StageServicer, *, security: Security | None = None
                 ) -> tuple[grpc.Server, int, health.HealthServicer]:
    # Each Forward stream (and Infer call) holds a worker thread while it lasts; the servicer
    # admits at most `max_streams` of them, so CONTROL_THREADS always remain for health checks
    # and control calls (70 open client streams starved health checks before).
    workers = servicer.max_streams + CONTROL_THREADS
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="grpc"),
                         options=channels.SERVER_OPTIONS,
                         interceptors=channels.server_interceptors(security))
    wire.add_stage_servicer(servicer, server)  # Forward/Infer payloads bypass protobuf
    port = channels.add_server_port(server, address, security=security)
    if port == 0:
        raise OSError(f"cannot listen on {address}; is the port already in use?")
    return server, port, channels.add_standard_services(server, SERVICE_NAME)


def serve(*, host: str, port: int, name: str, cache_dir: Path, threads: int, device: str,
          grace_s: float = 10.0, ready_file: Path | None = None, max_in_flight: int = 64,
          max_streams: int = MAX_STREAMS,
          metrics_port: int | None = None, security: Security | None = None,
          cache_limits: dict[str, int] | None = None) -> None:
    # Monitoring (metrics.py): energy meter always, Prometheus /metrics only with a port.
    hooks = make_hooks(prometheus_endpoint=metrics_port is not None)
    servicer = StageServicer(name, WeightCache(cache_dir, **(cache_limits or {})),
                             threads=threads, device=device, max_in_flight=max_in_flight,
                             max_streams=max_streams,
                             metrics=hooks, security=security)
    metrics_endpoint = serve_metrics(hooks, servicer, host=host, port=metrics_port)
    server, bound, health_servicer = build_server(f"{host}:{port}", servicer, security=security)
    server.start()
    log.info("stage %s listening on %s:%d (device %s, threads %s, %s)", name, host, bound,
             device, threads or "default",
             security.describe() if security else "no TLS, no token")
    if ready_file:
        ready_file.write_text(str(bound))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining and stopping (grace %.0fs)", signum, grace_s)
        health_servicer.enter_graceful_shutdown()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.stop(grace_s).wait()
    servicer.shutdown()
    if metrics_endpoint:
        metrics_endpoint.stop()
    log.info("stage %s stopped", name)
