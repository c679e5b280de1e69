"""`pipeedge-coord measure-links`: bandwidth and latency between every pair of stage servers
(server to server over gRPC) and from the coordinator to each, written as links.yml for the
scheduler (`coordinator/scheduler/links.example.yml` documents the format)."""

from __future__ import annotations

import statistics
import time

import grpc
from tqdm import tqdm

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import Deployment
from pipeedge.coordinator.stage_control import StageControl

MBIT = 2**20  # the scheduler's (and the seed's) binary megabit


def measure_links(dep: Deployment, *, payload_bytes: int = 4_000_000, repeats: int = 3,
                  progress: bool = True) -> dict:
    hosts = list(dep.hosts)
    controls = {h.name: StageControl(h.name, h.address, security=dep.control_security) for h in hosts}
    pairs = [(a, b) for a in hosts for b in hosts if a.name != b.name]
    bar = tqdm(total=len(pairs) + len(hosts), desc="measure links", unit="link",
               disable=not progress)
    doc: dict = {"symmetric": False, "hosts": {}, "client_to_host": {}, "host_to_client": {}}
    try:
        for c in controls.values():
            c.check_serving()
        for a, b in pairs:
            try:
                m = controls[a.name].stub.MeasureLink(
                    pb.MeasureLinkRequest(peer=b.next_hop_address, payload_bytes=payload_bytes,
                                          repeats=repeats), timeout=300)
            except grpc.RpcError as exc:
                raise RuntimeError(f"measuring {a.name} -> {b.name} failed: "
                                   f"{exc.details()}") from None
            doc["hosts"].setdefault(a.name, {})[b.name] = _entry(m.bandwidth_mbps * 1e6,
                                                                 m.latency_ms)
            bar.update()
        for h in hosts:
            up_bps, down_bps, latency_ms = _client_leg(controls[h.name], payload_bytes, repeats)
            doc["client_to_host"][h.name] = _entry(up_bps, latency_ms)
            doc["host_to_client"][h.name] = _entry(down_bps, latency_ms)
            bar.update()
    finally:
        bar.close()
        for c in controls.values():
            c.close()
    return doc


def _entry(bits_per_s: float, latency_ms: float) -> dict:
    return {"bw_Mbps": round(bits_per_s / MBIT, 3), "latency_ms": round(latency_ms, 3)}


def _client_leg(ctl: StageControl, payload_bytes: int, repeats: int) -> tuple[float, float, float]:
    """Coordinator -> host (payload up), host -> coordinator (payload down), one-way latency."""
    ctl.stub.Ping(pb.PingRequest(), timeout=30)
    rtts = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        ctl.stub.Ping(pb.PingRequest(), timeout=30)
        rtts.append(time.perf_counter() - start)
    rtt = statistics.median(rtts)
    payload = bytes(payload_bytes)
    up = down = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ctl.stub.Ping(pb.PingRequest(payload=payload), timeout=300)
        up = min(up, time.perf_counter() - start)
        start = time.perf_counter()
        ctl.stub.Ping(pb.PingRequest(reply_bytes=payload_bytes), timeout=300)
        down = min(down, time.perf_counter() - start)
    bits = payload_bytes * 8
    return bits / max(up - rtt, 1e-6), bits / max(down - rtt, 1e-6), rtt / 2 * 1e3
