"""Measure a link to another PipeEdge server with real gRPC calls (what activations will use)."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from pipeedge import channels
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from pipeedge.security import Security


def measure_link(peer: str, *, payload_bytes: int, repeats: int,
                 timeout_s: float = 120.0, security: Security | None = None) -> pb.LinkMeasurement:
    """Latency: half the median round trip of empty pings. Bandwidth: payload bits over the
    best probe's transfer time, minus one round trip."""
    channel = channels.open_channel(peer, security=security)
    try:
        stub = pb_grpc.StageStub(channel)
        stub.Ping(pb.PingRequest(), timeout=timeout_s)  # connect once, outside the timing
        rtts = []
        for _ in range(max(repeats, 3)):
            start = time.perf_counter()
            stub.Ping(pb.PingRequest(), timeout=timeout_s)
            rtts.append(time.perf_counter() - start)
        rtt = statistics.median(rtts)
        payload = bytes(payload_bytes)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            stub.Ping(pb.PingRequest(payload=payload), timeout=timeout_s)
            best = min(best, time.perf_counter() - start)
        seconds = max(best - rtt, 1e-6)
        return pb.LinkMeasurement(bandwidth_mbps=payload_bytes * 8 / seconds / 1e6,
                                  latency_ms=rtt / 2 * 1e3)
    finally:
        channel.close()
