"""bench/testbed_bench/partitions.balanced (the report's PipeDream-style baseline and its
equal-device splits) against brute force over every contiguous split."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from testbed_bench.partitions import balanced  # noqa: E402 (after sys.path)


def _slowest(times, partition: str) -> float:
    bounds = [int(x) for x in partition.split(",")]
    return max(sum(times[k][bounds[2 * k] - 1:bounds[2 * k + 1]]) for k in range(len(times)))


def test_balanced_is_the_best_contiguous_split():
    rng = random.Random(18)
    for _ in range(300):
        layers = rng.randint(1, 8)
        stages = rng.randint(1, min(layers, 4))
        times = [[rng.random() * rng.choice((1, 3)) for _ in range(layers)]
                 for _ in range(stages)]
        best = min(max(sum(times[k][a:b]) for k, (a, b) in
                       enumerate(zip((0, *cuts), (*cuts, layers))))
                   for cuts in itertools.combinations(range(1, layers), stages - 1))
        assert abs(_slowest(times, balanced(times)) - best) < 1e-9
    assert balanced([[1.0] * 8] * 4) == "1,2,3,4,5,6,7,8"
