"""Scheduler output: stages in pipeline order with the cost model's predictions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .profiles import Objective

__all__ = ["Schedule", "Stage"]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a host running layers first_layer..last_layer (1-based, inclusive)."""

    host: str
    device_type: str
    first_layer: int
    last_layer: int
    compute_s: float  # sum of the host's per-layer times
    transfer_s: float  # sending the output onward (next stage, or the client when modelled)
    link_latency_s: float  # one-way latency of that transfer's link
    memory_MB: float  # weights plus data buffers
    wire_s: float = 0.0  # the host's own time receiving its input and sending its output

    @property
    def cost_s(self) -> float:
        """What this stage contributes to the bottleneck: the host is busy with its layers
        and its frames (one CPU), the link with the transfer."""
        return max(self.compute_s + self.wire_s, self.transfer_s)


@dataclass(frozen=True)
class Schedule:
    """A schedule and what it is predicted to achieve.

    ``exact`` means provably optimal for the objective (tie-breaks included); otherwise
    ``gap`` bounds how far the objective may be from optimal (value / lower_bound - 1).
    """

    stages: tuple[Stage, ...]
    objective: Objective
    batch_size: int
    bottleneck_s: float  # max over the input transfer and every stage's cost
    throughput_items_s: float  # batch_size / bottleneck_s
    latency_s: float  # input leg + sum of compute, wire, transfers and link latencies
    input_transfer_s: float  # client -> first stage, when the links model it
    exact: bool
    lower_bound: float  # proven lower bound on the objective's value
    gap: float  # 0 when exact
    method: str  # how it was found, in words

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(s.host for s in self.stages)

    def to_partition(self) -> list[dict[str, list[int]]]:
        """The seed's output: one ``{host: [first, last]}`` per stage, in stage order."""
        return [{s.host: [s.first_layer, s.last_layer]} for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every field, the objective as its name, inf as None."""
        out = asdict(self)
        out["objective"] = self.objective.value
        return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
