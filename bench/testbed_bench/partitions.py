"""Layer splits the report compares: even, proportional to a weight (memory), as strings.

Cuts fall on transformer-block boundaries (every 4 layers), so each stage holds whole blocks
and every cut carries the same small activation (the residual stream). Models with fewer
blocks than stages (the tiny test models) are split by single layers instead.
"""

from __future__ import annotations

BLOCK = 4


def even(num_layers: int, stages: int) -> str:
    return proportional(num_layers, [1.0] * stages)


def proportional(num_layers: int, weights: list[float]) -> str:
    """Whole blocks per stage in proportion to `weights` (largest remainder, >= 1 block each)."""
    unit = BLOCK if num_layers % BLOCK == 0 and num_layers // BLOCK >= len(weights) else 1
    blocks = num_layers // unit
    if len(weights) > blocks:
        raise ValueError(f"cannot split {num_layers} layers into {len(weights)} stages")
    total = sum(weights)
    shares = [blocks * w / total for w in weights]
    counts = [max(1, int(s)) for s in shares]
    while sum(counts) < blocks:
        i = max(range(len(counts)), key=lambda k: shares[k] - counts[k])
        counts[i] += 1
    while sum(counts) > blocks:
        i = max((k for k in range(len(counts)) if counts[k] > 1),
                key=lambda k: counts[k] - shares[k])
        counts[i] -= 1
    ranges, first = [], 1
    for c in counts:
        last = first + c * unit - 1
        ranges.append(f"{first},{last}")
        first = last + 1
    return ",".join(ranges)


def balanced(times: list[list[float]]) -> str:
    """The contiguous split whose slowest stage is fastest, stage k costing the sum of
    `times[k]` (its device's per-layer seconds, in pipeline order) over its layers. Compute
    alone: PipeDream's partitioning, blind to memory and links (equal rows: equal devices)."""
    stages, layers = len(times), len(times[0])
    if stages > layers:
        raise ValueError(f"cannot split {layers} layers into {stages} stages")
    prefix = [[0.0] for _ in times]
    for row, out in zip(times, prefix):
        for t in row:
            out.append(out[-1] + t)
    inf = float("inf")
    # best[k][j]: slowest stage of the best split of layers 1..j over stages 0..k.
    best = [[inf] * (layers + 1) for _ in range(stages)]
    cut = [[0] * (layers + 1) for _ in range(stages)]
    best[0] = prefix[0][:]
    for k in range(1, stages):
        for j in range(k + 1, layers - (stages - 1 - k) + 1):
            for i in range(k, j):
                cost = max(best[k - 1][i], prefix[k][j] - prefix[k][i])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    ends, j = [], layers
    for k in range(stages - 1, 0, -1):
        ends.append(j)
        j = cut[k][j]
    ends.append(j)
    ends.reverse()
    firsts = [1] + [e + 1 for e in ends[:-1]]
    return ",".join(f"{f},{e}" for f, e in zip(firsts, ends))
