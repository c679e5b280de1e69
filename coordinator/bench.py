"""`pipeedge-coord bench`: throughput and latency of a deployed pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeedge.client import PipelineClient


@dataclass(frozen=True)
class BenchResult:
    microbatches: int
    items: int
    seconds: float
    latencies_s: tuple[float, ...]
    # Pipeline energy over the timed run, joules (each machine counted once); None = not
    # available (a stage without RAPL/EnergyMon), never a stand-in 0.
    energy_joules: float | None = None
    energy_source: str = ""

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    @property
    def joules_per_item(self) -> float | None:
        return None if self.energy_joules is None else self.energy_joules / self.items

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies_s)
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))]


def run_bench(client: PipelineClient, inputs: dict[str, torch.Tensor], *, microbatches: int,
              window: int = 4, warmup: int = 2, progress: bool = True,
              energy=None) -> BenchResult:
    """Stream `microbatches` copies of `inputs` with `window` in flight.

    `energy`: something with `start()` and `stop() -> joules | None` around the timed run
    (`monitor.EnergyProbe` reads the stages' energy counters).
    """
    for _ in client.infer_many([inputs] * warmup, window=window):
        pass
    sent: list[float] = []

    def feed():
        for _ in range(microbatches):
            sent.append(time.perf_counter())
            yield inputs

    batch = next(iter(inputs.values())).shape[0]
    latencies = []
    if energy is not None:
        energy.start()
    start = time.perf_counter()
    for i, _ in enumerate(tqdm(client.infer_many(feed(), window=window), total=microbatches,
                               desc="bench", unit="mb", disable=not progress)):
        latencies.append(time.perf_counter() - sent[i])
    elapsed = time.perf_counter() - start
    joules = energy.stop() if energy is not None else None
    return BenchResult(microbatches, microbatches * batch, elapsed, tuple(latencies), joules,
                       getattr(energy, "source", ""))
