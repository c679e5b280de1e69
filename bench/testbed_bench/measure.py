"""Steady-state throughput and latency of a deployed pipeline, from completion times.

`coordinator.bench.run_bench` divides by the whole run, pipeline fill included; with 4 stages
and a dozen microbatches the fill alone costs ~20%, which would hide the scaling being
measured. Here the rate is taken over a steady window that starts at the first completion
(the fill) and is bounded in time, not in items: it ends once it holds `min_intervals`
completions AND lasts `target_s` seconds AND its two halves agree within `tolerance` (or it
has lasted `max_s`). A slow pipeline (one item per 12 s) is measured over a few items, a fast
one over many, each for about the same time; the halves' rates are reported as the spread.
Items still in flight at the end are abandoned (the caller releases the pipeline), so a slow
pipeline's drain (window x its period) is not waited for.
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
class Window:
    """When a steady-state measurement may stop (see the module docstring)."""

    min_intervals: int = 4     # completions in the steady window, at least
    target_s: float = 20.0     # steady window length, at least
    max_s: float = 60.0        # longest steady window while its halves still disagree
    tolerance: float = 0.1     # halves' rates within this fraction of the whole: stop

    def done(self, intervals: int, seconds: float, spread: float) -> bool:
        if intervals < self.min_intervals or seconds < self.target_s:
            return False
        return spread <= self.tolerance or seconds >= self.max_s


@dataclass(frozen=True)
class Measurement:
    items_per_s: float          # steady state: from the first completion (after the fill)
    wall_items_per_s: float     # first send to the last counted completion, fill included
    latency_p50_s: float
    latency_p90_s: float
    microbatches: int           # completions counted (the fill's first one included)
    batch: int
    stage_cores: tuple[float, ...] = ()  # CPU each stage got (cores) in the steady window
    other_cores: float = 0.0  # host CPU busy outside the stages and this client (contention)
    steady_s: float = 0.0       # length of the steady window
    fill_s: float = 0.0         # first send to first completion
    halves: tuple[float, float] = (0.0, 0.0)  # items/s over each half of the steady window
    spread: float = 0.0         # |first half - second half| / items_per_s
    watched_cores: tuple[float, ...] = ()  # CPU of `watch` processes in the steady window

    def to_dict(self) -> dict:
        return dict(vars(self))


def measure_stream(entry: str, inputs: dict[str, torch.Tensor], *, window: int,
                   steady: Window, pids: tuple[int, ...] = (), watch: tuple[int, ...] = (),
                   timeout_s: float = 600.0) -> Measurement:
    """Stream copies of `inputs` with `window` in flight until `steady` says the rate is
    measured. `pids`: stage processes whose CPU use is reported (a stage getting well under its
    quota means the host itself was busy); `watch`: other processes whose CPU is reported
    (e.g. the coordinator), also over the steady window."""
    batch = next(iter(inputs.values())).shape[0]
    sent: list[float] = []
    done: list[float] = []
    snap: dict[str, object] = {}

    def feed():
        while True:
            sent.append(time.perf_counter())
            yield inputs

    def snapshot() -> tuple:
        return ([cpu_seconds(p) for p in pids], [cpu_seconds(p) for p in watch],
                host_busy_seconds(), _own_seconds())

    with PipelineClient(entry, timeout_s=timeout_s) as client:
        start = time.perf_counter()
        results = client.infer_many(feed(), window=window)
        try:
            for _ in results:
                done.append(time.perf_counter())
                if len(done) == 1:
                    snap["first"] = snapshot()
                    continue
                rate, halves = _rates(done, batch)
                if steady.done(len(done) - 1, done[-1] - done[0],
                               abs(halves[0] - halves[1]) / rate):
                    snap["last"] = snapshot()
                    break
        finally:
            results.close()  # abandons what is still in flight (the caller releases)
    if "last" not in snap:
        raise RuntimeError(f"the stream from {entry} ended after {len(done)} completions")
    (stage0, watch0, host0, own0), (stage1, watch1, host1, own1) = snap["first"], snap["last"]
    elapsed = max(done[-1] - done[0], 1e-9)
    cores = tuple((b - a) / elapsed for a, b in zip(stage0, stage1))
    watched = tuple((b - a) / elapsed for a, b in zip(watch0, watch1))
    other = ((host1 - host0) - (own1 - own0)) / elapsed - sum(cores) - sum(watched)
    latencies = [d - s for d, s in zip(done, sent)]
    rate, halves = _rates(done, batch)
    q = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else latencies * 9
    return Measurement(rate, len(done) * batch / (done[-1] - start),
                       statistics.median(latencies), q[8], len(done), batch, cores,
                       max(0.0, other), elapsed, done[0] - start, halves,
                       abs(halves[0] - halves[1]) / rate, watched)


def _rates(done: list[float], batch: int) -> tuple[float, tuple[float, float]]:
    """Items/s from the first completion to the last, and over each half of the intervals."""
    k = len(done) - 1
    mid = k // 2 or 1
    span = max(done[-1] - done[0], 1e-9)
    rate = k * batch / span
    first = mid * batch / max(done[mid] - done[0], 1e-9)
    second = (k - mid) * batch / max(done[-1] - done[mid], 1e-9) if k > mid else first
    return rate, (first, second)


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
