"""Steady-state throughput and latency of a deployed pipeline, from completion times.

`coordinator.bench.run_bench` divides by the whole run, pipeline fill included; with 4 stages
and a dozen microbatches the fill alone costs ~20%, which would hide the scaling being
measured. Here the first completions (the fill) are left out of the rate.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeedge.client import PipelineClient


@dataclass(frozen=True)
class Measurement:
    items_per_s: float          # steady state: after the pipeline is full
    wall_items_per_s: float     # whole stream, fill included (what run_bench reports)
    latency_p50_s: float
    latency_p90_s: float
    microbatches: int
    batch: int
    stage_cores: tuple[float, ...] = ()  # CPU each stage got (cores) while measured
    other_cores: float = 0.0  # host CPU busy outside the stages and this client (contention)


    def to_dict(self) -> dict:
        return dict(vars(self))


def measure_stream(entry: str, inputs: dict[str, torch.Tensor], *, microbatches: int,
                   window: int, skip: int, warmup: int = 2, pids: tuple[int, ...] = (),
                   timeout_s: float = 600.0) -> Measurement:
    """Stream `microbatches` copies of `inputs` with `window` in flight; the rate counts
    completions after the first `skip` (the fill). `pids`: stage processes whose CPU use is
    reported (a stage getting well under its quota means the host itself was busy)."""
    if microbatches < skip + 2:
        raise ValueError(f"need at least skip + 2 = {skip + 2} microbatches, got {microbatches}")
    batch = next(iter(inputs.values())).shape[0]
    with PipelineClient(entry, timeout_s=timeout_s) as client:
        for _ in client.infer_many([inputs] * warmup, window=window):
            pass
        sent: list[float] = []

        def feed():
            for _ in range(microbatches):
                sent.append(time.perf_counter())
                yield inputs

        done = []
        cpu_before = [cpu_seconds(p) for p in pids]
        host_before, own_before = host_busy_seconds(), _own_seconds()
        start = time.perf_counter()
        for _ in client.infer_many(feed(), window=window):
            done.append(time.perf_counter())
    elapsed = done[-1] - start
    cores = tuple((cpu_seconds(p) - b) / elapsed for p, b in zip(pids, cpu_before))
    other = ((host_busy_seconds() - host_before) - (_own_seconds() - own_before)) / elapsed \
        - sum(cores)
    latencies = [d - s for d, s in zip(done, sent)]
    steady = (len(done) - 1 - skip) * batch / (done[-1] - done[skip])
    wall = len(done) * batch / (done[-1] - start)
    q = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
    return Measurement(steady, wall, statistics.median(latencies), q[8], microbatches, batch,
                       cores, max(0.0, other))


def sequential_latencies(entry: str, inputs: dict[str, torch.Tensor], *, requests: int,
                         warmup: int = 3) -> list[float]:
    """One request at a time: each latency is a full trip through every stage and back."""
    out = []
    with PipelineClient(entry) as client:
        for i in range(warmup + requests):
            start = time.perf_counter()
            client.infer(inputs)
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """CPU seconds the whole host has been busy (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def idle_cores(pids: tuple[int, ...], seconds: float) -> tuple[float, ...]:
    """CPU (cores) each process uses over `seconds` with no traffic: what a stage costs its
    device just for being there (health checks, status polls, threads waking)."""
    before = [cpu_seconds(p) for p in pids]
    time.sleep(seconds)
    return tuple((cpu_seconds(p) - b) / seconds for p, b in zip(pids, before))
