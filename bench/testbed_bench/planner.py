"""The one place the report meets the profiler and scheduler (`pipeedge-coord profile`/`plan`).

What it needs from them: `planning.plan(dep)` returning stages and a `schedule` with
`throughput_items_s` when hosts.yml has no partition and profiles exist in `scheduler_dir`, and
`planning.ensure_profiles(dep)` (profile -> models.yml, device_types.yml, devices.yml). When
those are missing, the sections that need them skip with the reason from `missing()`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.testbed import Testbed
from testbed_bench.deployment import hosts_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledPlan:
    hosts_file: Path          # hosts.yml with the scheduler's partition and host order
    partition: str
    order: tuple[str, ...]
    predicted_items_per_s: float
    method: str


def missing() -> str | None:
    """Why the scheduler path cannot run here, or None when it can."""
    try:
        planning = importlib.import_module("pipeedge.coordinator.planning")
        importlib.import_module("pipeedge.coordinator.profiling")
    except ImportError as exc:
        return f"the planner is not available yet ({exc})"
    for name in ("plan", "ensure_profiles"):
        if not hasattr(planning, name):
            return f"pipeedge.coordinator.planning has no {name}() yet"
    return None


def profile(tb: Testbed, sched_dir: Path, tag: str, model: str, **deployment) -> Path:
    """Profile every device type of `tb` for `model` (under the emulated caps) and write the
    emulated links, into `sched_dir`. Returns a hosts.yml (no partition) that plans there."""
    planning = importlib.import_module("pipeedge.coordinator.planning")
    sched_dir.mkdir(parents=True, exist_ok=True)
    names = [d.name for d in tb.devices]
    hosts = hosts_for(tb, sched_dir, tag, names, model=model, scheduler_dir=str(sched_dir),
                      **deployment)
    tb.write_links(sched_dir / "links.yml")
    ran = planning.ensure_profiles(load_deployment(hosts), progress=False)
    log.info("profiles for %s in %s (%s)", model, sched_dir, "profiled" if ran else "cached")
    return hosts


def plan(tb: Testbed, sched_dir: Path, tag: str, model: str, devices: list[str],
         **deployment) -> ScheduledPlan:
    """The scheduler's plan over `devices`, written as a hosts.yml that deploys it."""
    planning = importlib.import_module("pipeedge.coordinator.planning")
    free = hosts_for(tb, sched_dir, f"{tag}-free", devices, model=model,
                     scheduler_dir=str(sched_dir), **deployment)
    the_plan = planning.plan(load_deployment(free))
    schedule = getattr(the_plan, "schedule", None)
    if schedule is None:
        raise RuntimeError(f"the planner did not use the scheduler for {free} "
                           f"({getattr(the_plan, 'how', '?')}); profile first")
    order = tuple(s.host.name for s in the_plan.stages)
    partition = ",".join(f"{s.layers.first},{s.layers.last}" for s in the_plan.stages)
    fixed = hosts_for(tb, sched_dir, tag, list(order), model=model, partition=partition,
                      **deployment)
    return ScheduledPlan(fixed, partition, order, float(schedule.throughput_items_s),
                         str(getattr(schedule, "method", "")))


def _inputs(sched_dir: Path, model: str, microbatch: int):
    from pipeedge.coordinator import scheduler

    links = sched_dir / "links.yml"
    return scheduler.load_inputs(
        model_name=model, models_file=sched_dir / "models.yml",
        dev_types_file=sched_dir / "device_types.yml", dev_file=sched_dir / "devices.yml",
        links_file=links if links.is_file() else None, batch_size=microbatch,
        dtype="torch.float32")


def layer_times(sched_dir: Path, model: str, names: list[str],
                microbatch: int) -> dict[str, list[float]]:
    """Each device's profiled per-layer seconds (what a compute-only partitioner sees)."""
    devices = {d.host: d for d in _inputs(sched_dir, model, microbatch).devices}
    return {n: list(devices[n].time_s) for n in names}


def predict(sched_dir: Path, model: str, order: list[str], partition: str,
            microbatch: int, *, frames: bool = True) -> float:
    """The cost model's items/s for `partition` on `order` (SchedulingError: does not fit);
    `frames=False`: as if stages spent nothing on their frames (the cost model before them)."""
    from dataclasses import replace

    from pipeedge.coordinator import scheduler

    inputs = _inputs(sched_dir, model, microbatch)
    devices = inputs.devices if frames else tuple(
        replace(d, frame_s=0.0, wire_s_per_MB=0.0) for d in inputs.devices)
    bounds = [int(x) for x in partition.split(",")]
    plan = [(host, bounds[2 * k], bounds[2 * k + 1]) for k, host in enumerate(order)]
    return scheduler.evaluate(model=inputs.model, devices=devices, links=inputs.links,
                              plan=plan, batch_size=microbatch).throughput_items_s


def frame_costs(sched_dir: Path, model: str, names: list[str],
                microbatch: int) -> dict[str, tuple[float, float]]:
    """Each device's profiled (frame_s, wire_s_per_MB)."""
    devices = {d.host: d for d in _inputs(sched_dir, model, microbatch).devices}
    return {n: (devices[n].frame_s, devices[n].wire_s_per_MB) for n in names}


def solve(sched_dir: Path, model: str, names: list[str], size: int, microbatch: int):
    """The scheduler over `size` devices: these profiled hosts, repeated under new names
    past their number (links: the NIC rule, so any count has them)."""
    from dataclasses import replace

    from pipeedge.coordinator import scheduler

    inputs = _inputs(sched_dir, model, microbatch)
    by_name = {d.host: d for d in inputs.devices}
    devices = [replace(by_name[names[k % len(names)]], host=f"dev{k}") for k in range(size)]
    return scheduler.schedule(model=inputs.model, devices=devices, batch_size=microbatch)
