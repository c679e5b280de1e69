"""Rendering a Schedule for the CLI: the seed's YAML list, or JSON with the predictions."""

from __future__ import annotations

import json

import yaml

from .result import Schedule

__all__ = ["render_json", "render_yaml"]


def render_yaml(schedule: Schedule) -> str:
    """The seed's stdout: ``- host: [first, last]`` per stage, in stage order.

    A heuristic (not provably optimal) schedule gets a leading YAML comment saying so.
    """
    text = yaml.safe_dump(schedule.to_partition(), default_flow_style=None, sort_keys=False)
    if not schedule.exact:
        text = (
            f"# not proven optimal: {schedule.method}; within {schedule.gap:.1%} of optimal\n"
            + text
        )
    return text.rstrip("\n")


def render_json(schedule: Schedule, *, model: str) -> str:
    """Every prediction: stages (compute, transfer, memory), bottleneck, throughput, latency."""
    return json.dumps({"model": model, **schedule.to_dict()}, indent=2)
