"""``schedule()``: typed inputs in, typed Schedule out, the C++ core in between.

This module is the only one that touches the private ``_native`` extension.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _native
from .dtypes import dtype_bytes
from .errors import SchedulingError
from .links import parse_links
from .profiles import DeviceProfile, ModelProfile, NetworkLinks, Objective
from .result import Schedule, Stage
from .seed_files import load_devices, load_model, read_yaml

__all__ = ["DEFAULT_TIME_LIMIT_S", "ScheduleInputs", "load_inputs", "schedule", "schedule_files"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "google/vit-base-patch16-224"  # the seed's defaults, kept for its CLI
DEFAULT_DTYPE = "torch.float32"
DEFAULT_TIME_LIMIT_S = 5.0  # certified search beyond the exhaustive limit; 24 distinct: < 1 s


@dataclass(frozen=True)
class ScheduleInputs:
    """What the YAML files say about one model on the available hosts."""

    model: ModelProfile
    devices: tuple[DeviceProfile, ...]
    links: NetworkLinks | None = None


def load_inputs(
    *,
    model_name: str = DEFAULT_MODEL,
    models_file: str | Path = "models.yml",
    dev_types_file: str | Path = "device_types.yml",
    dev_file: str | Path = "devices.yml",
    links_file: str | Path | None = None,
    batch_size: int = 8,
    dtype: str = DEFAULT_DTYPE,
) -> ScheduleInputs:
    """Read the seed's three files (and an optional links file) for one model.

    Example:
        >>> inputs = load_inputs(model_name="google/vit-large-patch16-224")  # doctest: +SKIP
        >>> schedule(**inputs.__dict__).hosts  # doctest: +SKIP
    """
    dtype_bytes(dtype)  # an unknown dtype is the clearer error, before any file is read
    model = load_model(
        read_yaml(models_file, "models", "-M/--models-file"), model_name, source=str(models_file)
    )
    devices = load_devices(
        read_yaml(dev_types_file, "device types", "-T/--dev-types-file"),
        read_yaml(dev_file, "devices", "-D/--dev-file"),
        model,
        dtype=dtype,
        batch_size=batch_size,
        types_source=str(dev_types_file),
        devices_source=str(dev_file),
    )
    links = None
    if links_file is not None:
        links = parse_links(
            read_yaml(links_file, "links", "--links"), devices, source=str(links_file)
        )
    return ScheduleInputs(model=model, devices=tuple(devices), links=links)


def schedule(
    *,
    model: ModelProfile,
    devices: Sequence[DeviceProfile],
    links: NetworkLinks | None = None,
    batch_size: int = 8,
    dtype: str = DEFAULT_DTYPE,
    buffers_in: int = 2,
    buffers_out: int = 2,
    objective: Objective | str = Objective.THROUGHPUT,
    max_search_states: int | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> Schedule:
    """The optimal pipeline schedule of `model` over `devices` (each used at most once).

    Args:
        model: per-layer weights and activation sizes.
        devices: hosts with capacity, bandwidth and per-layer times at `batch_size`/`dtype`.
        links: measured network; None uses the seed's min-of-NICs rule with zero latency.
        batch_size: microbatch size (scales activation bytes; the profiles must match it).
        dtype: activation dtype name, for bytes per element.
        buffers_in, buffers_out: queued activations per stage, as in the seed's memory model.
        objective: "throughput" (least bottleneck) or "latency" (least end-to-end latency).
        max_search_states: exhaustive-search limit (count vectors x device classes); beyond
            it the throughput objective runs the certified search and the latency objective a
            heuristic.
        time_limit_s: seconds the certified search may take; it returns earlier once its plan
            meets its proven lower bound (exact=True), else its best plan with the bound and
            gap (exact=False). The plan is never worse than the even, memory-proportional and
            compute-proportional splits.

    Returns:
        The schedule; exact=True when provably optimal.

    Raises:
        SchedulingError: inconsistent inputs, or no schedule fits (message says what to change).

    Example:
        >>> s = schedule(model=m, devices=devs)  # doctest: +SKIP
        >>> s.to_partition()  # doctest: +SKIP
        [{'rcc-0': [1, 14]}, {'rcc-1': [15, 28]}, ...]
    """
    try:
        goal = Objective(objective)
    except ValueError:
        raise SchedulingError(
            f"unknown objective {objective!r}; use throughput or latency"
        ) from None
    if not devices:
        raise SchedulingError("no devices to schedule on; list hosts in the devices file")
    if batch_size < 1 or buffers_in < 0 or buffers_out < 0:
        raise SchedulingError("batch size must be >= 1 and buffer counts >= 0; fix -b/-i/-o")
    if not time_limit_s >= 0:
        raise SchedulingError(f"time limit must be >= 0 s, got {time_limit_s}; fix --time-limit")
    problem = _problem(
        model, devices, links, batch_size, dtype_bytes(dtype), buffers_in, buffers_out, goal
    )
    options = _native.Options()
    if max_search_states is not None:
        options.max_search_states = max_search_states
    options.time_limit_s = time_limit_s
    try:
        raw = _native.solve(problem, options)
    except ValueError as err:  # the core's validation: a bug in the inputs
        raise SchedulingError(f"invalid scheduling inputs: {err}; fix the profiles") from None
    if not raw.feasible:
        raise SchedulingError(
            _why_infeasible(
                model,
                devices,
                batch_size,
                dtype_bytes(dtype),
                buffers_in,
                buffers_out,
                heuristic=not raw.exact,
            )
        )
    logger.info(
        "scheduled %s on %d hosts: %s (%d classes, %d count states, %d checks, %d refine states)",
        model.name,
        len(raw.stages),
        raw.method,
        raw.stats.device_classes,
        raw.stats.count_states,
        raw.stats.feasibility_checks,
        raw.stats.refine_states,
    )
    return _result(raw, devices, goal, batch_size)


def evaluate(
    *,
    model: ModelProfile,
    devices: Sequence[DeviceProfile],
    plan: Sequence[tuple[str, int, int]],
    links: NetworkLinks | None = None,
    batch_size: int = 8,
    dtype: str = DEFAULT_DTYPE,
    buffers_in: int = 2,
    buffers_out: int = 2,
) -> Schedule:
    """The cost model's prediction for a given plan: (host, first_layer, last_layer) stages
    in pipeline order, 1-based inclusive (how baselines such as an even split are compared
    with `schedule`'s plan).

    Raises:
        SchedulingError: an unknown host, a plan that does not cover the layers in order, or a
            stage whose memory exceeds its host's (the message names it).
    """
    index = {d.host: k for k, d in enumerate(devices)}
    problem = _problem(model, devices, links, batch_size, dtype_bytes(dtype), buffers_in,
                       buffers_out, Objective.THROUGHPUT)
    try:
        stages = [_native.StagePlan(index[host], first - 1, last) for host, first, last in plan]
        raw = _native.evaluate(problem, stages)
    except KeyError as err:
        raise SchedulingError(f"plan names host {err} that has no profile") from None
    except ValueError as err:
        raise SchedulingError(f"invalid plan: {err}") from None
    for s in raw.stages:
        if s.memory_MB > devices[s.device].mem_MB:
            raise SchedulingError(
                f"layers {s.first_layer}-{s.last_layer} need {s.memory_MB:.0f} MB on "
                f"{devices[s.device].host}, which has {devices[s.device].mem_MB:.0f} MB")
    return _result(raw, devices, Objective.THROUGHPUT, batch_size)


def schedule_files(
    *,
    model_name: str = DEFAULT_MODEL,
    models_file: str | Path = "models.yml",
    dev_types_file: str | Path = "device_types.yml",
    dev_file: str | Path = "devices.yml",
    links_file: str | Path | None = None,
    batch_size: int = 8,
    dtype: str = DEFAULT_DTYPE,
    buffers_in: int = 2,
    buffers_out: int = 2,
    objective: Objective | str = Objective.THROUGHPUT,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> Schedule:
    """``load_inputs`` then ``schedule``: what the sched-pipeline CLI does."""
    inputs = load_inputs(
        model_name=model_name,
        models_file=models_file,
        dev_types_file=dev_types_file,
        dev_file=dev_file,
        links_file=links_file,
        batch_size=batch_size,
        dtype=dtype,
    )
    return schedule(
        model=inputs.model,
        devices=inputs.devices,
        links=inputs.links,
        batch_size=batch_size,
        dtype=dtype,
        buffers_in=buffers_in,
        buffers_out=buffers_out,
        objective=objective,
        time_limit_s=time_limit_s,
    )


def _problem(
    model: ModelProfile,
    devices: Sequence[DeviceProfile],
    links: NetworkLinks | None,
    batch_size: int,
    elem_bytes: int,
    buffers_in: int,
    buffers_out: int,
    goal: Objective,
) -> _native.Problem:
    p = _native.Problem()
    m = _native.Model()
    m.mem_MB = list(model.mem_MB)
    m.out_elems = list(model.parameters_out)
    m.in_elems = model.parameters_in
    p.model = m
    natives = []
    for d in devices:
        n = _native.Device()
        n.name, n.type, n.mem_MB, n.bw_Mbps, n.time_s = (
            d.host,
            d.device_type,
            d.mem_MB,
            d.bw_Mbps,
            list(d.time_s),
        )
        n.frame_s, n.wire_s_per_MB = d.frame_s, d.wire_s_per_MB
        natives.append(n)
    p.devices = natives
    if links is not None:
        p.links = _native_links(links, devices)
    p.batch_size, p.dtype_bytes = batch_size, elem_bytes
    p.buffers_in, p.buffers_out = buffers_in, buffers_out
    p.objective = (
        _native.Objective.THROUGHPUT if goal is Objective.THROUGHPUT else _native.Objective.LATENCY
    )
    return p


def _native_links(links: NetworkLinks, devices: Sequence[DeviceProfile]) -> _native.Links:
    def leg(link: object) -> _native.Link:
        return _native.Link(link.bw_Mbps, link.latency_ms)  # type: ignore[attr-defined]

    out = _native.Links()
    hosts = [d.host for d in devices]
    try:
        out.host_to_host = [
            leg(links.host_to_host[(a, b)]) if a != b else _native.Link(0.0)
            for a in hosts
            for b in hosts
        ]
        if links.client_to_host is not None:
            out.client_to_host = [leg(links.client_to_host[h]) for h in hosts]
        if links.host_to_client is not None:
            out.host_to_client = [leg(links.host_to_client[h]) for h in hosts]
    except KeyError as err:
        raise SchedulingError(
            f"links have no entry for {err}; resolve links for every scheduled host"
        ) from None
    return out


def _result(
    raw: _native.Schedule, devices: Sequence[DeviceProfile], goal: Objective, batch_size: int
) -> Schedule:
    stages = tuple(
        Stage(
            host=devices[s.device].host,
            device_type=devices[s.device].device_type,
            first_layer=s.first_layer,
            last_layer=s.last_layer,
            compute_s=s.compute_s,
            wire_s=s.wire_s,
            transfer_s=s.transfer_s,
            link_latency_s=s.link_latency_s,
            memory_MB=s.memory_MB,
        )
        for s in raw.stages
    )
    throughput = batch_size / raw.bottleneck_s if raw.bottleneck_s > 0 else math.inf
    return Schedule(
        stages=stages,
        objective=goal,
        batch_size=batch_size,
        bottleneck_s=raw.bottleneck_s,
        throughput_items_s=throughput,
        latency_s=raw.latency_s,
        input_transfer_s=raw.input_transfer_s,
        exact=raw.exact,
        lower_bound=raw.lower_bound,
        gap=raw.gap,
        method=raw.method,
    )


def _why_infeasible(
    model: ModelProfile,
    devices: Sequence[DeviceProfile],
    batch_size: int,
    elem_bytes: int,
    buffers_in: int,
    buffers_out: int,
    *,
    heuristic: bool,
) -> str:
    """One line naming the most likely reason no schedule exists, and what to change."""
    hosts = f"{len(devices)} hosts"
    if heuristic:
        return (
            f"no schedule for {model.name} on {hosts} was found within the search limits (too "
            "many distinct devices for the exhaustive search); raise --time-limit, schedule "
            "fewer hosts or group identical ones by type"
        )
    weights = sum(model.mem_MB)
    capacity = sum(d.mem_MB for d in devices)
    largest = max(d.mem_MB for d in devices)
    fix = "add hosts or memory, or lower -b/--batch-size, -i/--buffers-in or -o/--buffers-out"
    if weights >= capacity:
        return (
            f"no viable schedule: {model.name} needs {weights:.0f} MB of weights but the "
            f"{hosts} have {capacity:.0f} MB in total; {fix}"
        )
    mib = 1024.0 * 1024.0
    for layer, mem in enumerate(model.mem_MB, start=1):
        need = (
            mem
            + (buffers_out + 1) * model.parameters_out[layer - 1] * batch_size * elem_bytes / mib
        )
        if need > largest:
            return (
                f"no viable schedule: layer {layer} of {model.name} needs over {need:.0f} MB with "
                f"its buffers, more than the largest host ({largest:.0f} MB); {fix}"
            )
    return (
        f"no viable schedule: {model.name}'s layers and data buffers do not fit the {hosts} "
        f"as contiguous stages, one host each (or their links are unusable); {fix}"
    )
