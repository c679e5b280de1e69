"""Rendering a Schedule for the CLI: the seed's YAML list, or JSON with the predictions."""

from __future__ import annotations

import json

import yaml

from .result import Schedule

__all__ = ["render_json", "render_yaml"]


def render_yaml(schedule: Schedule) -> str:
    """The seed's stdout: ``- host: [first, last]`` per stage, in stage order.

    A schedule not proven optimal gets a leading YAML comment with its proven bound and gap.
    """
    text = yaml.safe_dump(schedule.to_partition(), default_flow_style=None, sort_keys=False)
    if not schedule.exact:
        what = schedule.objective.value
        value = schedule.bottleneck_s if what == "throughput" else schedule.latency_s
        measure = "bottleneck" if what == "throughput" else "latency"
        text = (
            f"# not proven optimal: {schedule.method}\n"
            f"# {measure} {value:.4g} s, proven lower bound {schedule.lower_bound:.4g} s, "
            f"gap {schedule.gap:.2%}\n" + text
        )
    return text.rstrip("\n")


def render_json(schedule: Schedule, *, model: str) -> str:
    """Every prediction: stages (compute, transfer, memory), bottleneck, throughput, latency."""
    return json.dumps({"model": model, **schedule.to_dict()}, indent=2)
