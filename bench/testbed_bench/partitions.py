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
