"""Layer partitions in the seed's syntax: "1,24,25,48" = stage 1 has layers 1-24, stage 2 25-48.

Layers are 1-based and inclusive, 4 per transformer block (ViT-Base: 12 blocks -> 1..48).
"""

from __future__ import annotations

from pipeedge.errors import PipeEdgeError
from pipeedge.records import LayerRange


class PartitionError(PipeEdgeError, ValueError):
    """A partition that cannot be deployed; the message says what to change."""


def parse_partition(text: str | list[int], num_layers: int) -> list[LayerRange]:
    """Parse and validate a partition against a model with `num_layers` layers.

    Example:
        >>> parse_partition("1,24,25,48", 48)
        [LayerRange(first=1, last=24), LayerRange(first=25, last=48)]
    """
    if isinstance(text, str):
        try:
            bounds = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise PartitionError(f"partition '{text}' must be comma-separated integers, "
                                 "e.g. 1,24,25,48") from None
    else:
        bounds = [int(x) for x in text]
    if not bounds or len(bounds) % 2:
        raise PartitionError(f"partition {bounds} needs pairs of first,last layers per stage, "
                             f"e.g. 1,{num_layers // 2},{num_layers // 2 + 1},{num_layers}")
    ranges = [LayerRange(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    expected_first = 1
    for i, r in enumerate(ranges):
        if r.first > r.last:
            raise PartitionError(f"stage {i + 1} range {r.first}-{r.last} is reversed; "
                                 "write first,last with first <= last")
        if r.first != expected_first:
            what = "gap" if r.first > expected_first else "overlap"
            raise PartitionError(f"partition has a {what} at stage {i + 1}: it starts at layer "
                                 f"{r.first}, expected {expected_first}")
        expected_first = r.last + 1
    if ranges[-1].last != num_layers:
        raise PartitionError(f"partition ends at layer {ranges[-1].last} but the model has "
                             f"{num_layers} layers (range 1-{num_layers}); the last stage must "
                             f"end at {num_layers}")
    return ranges


def even_partition(num_layers: int, stages: int) -> list[LayerRange]:
    """Split layers as evenly as possible (earlier stages take the remainder)."""
    if not 1 <= stages <= num_layers:
        raise PartitionError(f"cannot split {num_layers} layers into {stages} stages")
    base, extra = divmod(num_layers, stages)
    out, first = [], 1
    for i in range(stages):
        last = first + base + (1 if i < extra else 0) - 1
        out.append(LayerRange(first, last))
        first = last + 1
    return out


def format_partition(ranges: list[LayerRange]) -> str:
    return ",".join(f"{r.first},{r.last}" for r in ranges)
