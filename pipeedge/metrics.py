"""Prometheus exposition shared by the stage server and the coordinator.

Each server owns a `CollectorRegistry` (never the process-wide default), so several servers in
one process (tests, the demo) keep separate metrics. The HTTP endpoint is off unless a
`--metrics-port` is given; `prometheus-client` is imported only then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# Latency buckets (seconds) for the short hot-path steps: 50 us .. 10 s.
FAST_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
# Compute time per microbatch (seconds): 1 ms .. 60 s (a ViT-Huge shard on a small board).
COMPUTE_BUCKETS = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)


def prometheus() -> ModuleType:
    """The prometheus_client module, or a one-line error naming the fix."""
    try:
        import prometheus_client
    except ImportError:
        raise RuntimeError("--metrics-port needs prometheus-client: pip install "
                           "prometheus-client") from None
    return prometheus_client


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server."""

    host: str
    port: int
    _server: Any
    on_stop: Any = None   # called after the server stops (e.g. to close a collector's channels)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.on_stop:
            self.on_stop()


def start_metrics_server(registry: Any, *, port: int, host: str = "0.0.0.0") -> MetricsEndpoint:
    """Serve `registry` at http://host:port/metrics in a daemon thread (port 0 = pick one)."""
    prom = prometheus()
    try:
        server, _thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); pick "
                      "another --metrics-port") from None
    endpoint = MetricsEndpoint(host, server.server_port, server)
    log.info("metrics on %s", endpoint.url)
    return endpoint
