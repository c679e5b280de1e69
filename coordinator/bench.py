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

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies_s)
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))]


def run_bench(client: PipelineClient, inputs: dict[str, torch.Tensor], *, microbatches: int,
              window: int = 4, warmup: int = 2, progress: bool = True) -> BenchResult:
    """Stream `microbatches` copies of `inputs` with `window` in flight."""
    for _ in client.infer_many([inputs] * warmup, window=window):
        pass
    sent: list[float] = []

    def feed():
        for _ in range(microbatches):
            sent.append(time.perf_counter())
            yield inputs

    batch = next(iter(inputs.values())).shape[0]
    latencies = []
    start = time.perf_counter()
    for i, _ in enumerate(tqdm(client.infer_many(feed(), window=window), total=microbatches,
                               desc="bench", unit="mb", disable=not progress)):
        latencies.append(time.perf_counter() - sent[i])
    elapsed = time.perf_counter() - start
    return BenchResult(microbatches, microbatches * batch, elapsed, tuple(latencies))
