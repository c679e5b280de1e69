"""The certified search beyond the exhaustive limit, against independent Python references.

Bound validity (the proven lower bound never exceeds the optimum, and "exact" means optimal)
on instances whose optimum is known: brute force on small ones, the type-count DP at 18-22
devices. The floor property (never worse than the even, memory-proportional and greedy
compute-proportional splits, written here from their definitions) on random fleets.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from test_scheduler_reference import (
    Instance,
    Plan,
    brute_force,
    evaluate,
    random_instance,
    type_count_bottleneck,
)

from pipeedge.coordinator.scheduler import (
    DeviceProfile,
    ModelProfile,
    Objective,
    SchedulingError,
    schedule,
)

BEYOND = {"max_search_states": 1}  # forces the certified search at any size


def _fleet(rng: random.Random, layers: int, count: int, types: int, *,
           frames: bool = False) -> Instance:
    """ViT-like layers on `count` devices of `types` random profiles, most of them needed;
    with `frames`, each type also pays for its frames (slower types pay more)."""
    pattern_out, pattern_t = (302592, 151296, 756480, 151296), (0.35, 0.08, 0.35, 0.30)
    mem = tuple(20 + 10 * rng.random() for _ in range(layers))
    model = ModelProfile("vit-like", mem, 150528, tuple(pattern_out[i % 4] for i in range(layers)))
    kinds = []
    for t in range(types):
        speed = 0.5 + 1.5 * rng.random()
        times = tuple(pattern_t[i % 4] * speed * (0.9 + 0.2 * rng.random()) for i in range(layers))
        wire = (0.02 * speed * rng.random(), 0.4 * speed * rng.random()) if frames else (0, 0)
        kinds.append((f"t{t}", 2.5 * sum(mem) * (0.6 + 0.8 * rng.random()) / count, times, wire))
    devices = tuple(
        DeviceProfile(f"h{d}", kinds[d % types][0], kinds[d % types][1], 1000.0, kinds[d % types][2],
                      frame_s=kinds[d % types][3][0], wire_s_per_MB=kinds[d % types][3][1])
        for d in range(count)
    )
    # Batch 1 in int8: activation buffers stay small beside each device's share of the weights.
    return Instance(model=model, devices=devices, batch_size=1, dtype="torch.int8",
                    buffers_in=2, buffers_out=2)


def _check_certified(inst: Instance, optimum: float, *, time_limit_s: float, exact: bool) -> None:
    try:
        got = schedule(**inst.kwargs(), **BEYOND, time_limit_s=time_limit_s)
    except SchedulingError:
        assert not exact  # no time, and no baseline fits
        return
    tol = 1e-9 * optimum
    assert got.lower_bound <= optimum + tol, (got.lower_bound, optimum)
    assert got.bottleneck_s >= optimum - tol
    if got.exact:
        assert got.bottleneck_s == pytest.approx(optimum, rel=1e-9) and got.gap == 0
    elif got.lower_bound > 0:
        assert got.gap == pytest.approx(got.bottleneck_s / got.lower_bound - 1)
    else:
        assert got.gap == math.inf
    if exact:
        assert got.exact, got.method


def test_bound_and_plan_against_brute_force() -> None:
    rng = random.Random(31)
    checked = 0
    for n in range(150):
        inst = random_instance(rng, max_layers=6, max_devices=5, shared_types=n % 2 == 0,
                               links=n % 3 == 0, client_legs=n % 5 == 0, frames=n % 4 == 1)
        inst = dataclasses.replace(inst, objective=Objective.THROUGHPUT)
        best = brute_force(inst)
        if best is None:
            continue
        optimum = best[0].bottleneck_s
        _check_certified(inst, optimum, time_limit_s=1.0, exact=True)
        _check_certified(inst, optimum, time_limit_s=0.0, exact=False)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("count", [18, 20, 22, 28, 32])
def test_optimal_at_18_to_32_devices_against_the_type_count_dp(count: int) -> None:
    rng = random.Random(count)
    for _ in range(2):
        inst = _fleet(rng, 12 if count <= 22 else 24, count, 3)
        optimum = type_count_bottleneck(inst)
        assert math.isfinite(optimum)
        _check_certified(inst, optimum, time_limit_s=5.0, exact=True)
        _check_certified(inst, optimum, time_limit_s=0.0, exact=False)


@pytest.mark.parametrize("count", [18, 24])
def test_frame_costs_optimal_at_18_and_24_devices_against_the_type_count_dp(count: int) -> None:
    rng = random.Random(100 + count)
    for _ in range(2):
        inst = _fleet(rng, 12, count, 3, frames=True)
        optimum = type_count_bottleneck(inst)
        assert math.isfinite(optimum)
        _check_certified(inst, optimum, time_limit_s=5.0, exact=True)
        _check_certified(inst, optimum, time_limit_s=0.0, exact=False)


def _cut_by_share(layers: int, shares: list[float], progress) -> Plan:  # type: ignore[no-untyped-def]
    """Stage s ends where progress(s, j) first reaches the cumulative share (one layer each)."""
    plan, begin, target, k = [], 0, 0.0, len(shares)
    for s, share in enumerate(shares):
        target += share
        end, last = begin + 1, layers - (k - 1 - s)
        while end < last and progress(s, end) < target - 1e-12:
            end += 1
        if s + 1 == k:
            end = layers
        plan.append((s, begin, end))
        begin = end
    return tuple(plan)


def baselines(inst: Instance) -> list[Plan]:
    """Even, memory-proportional and greedy compute-proportional splits, devices in order."""
    layers = inst.model.layers
    devs = inst.devices[: min(len(inst.devices), layers)]
    k = len(devs)
    weights = [0.0]
    for m in inst.model.mem_MB:
        weights.append(weights[-1] + m)
    totals = [sum(d.time_s) for d in devs]
    speed = sum(1 / t for t in totals)
    return [
        _cut_by_share(layers, [1 / k] * k, lambda s, j: j / layers),
        _cut_by_share(layers, [d.mem_MB / sum(x.mem_MB for x in devs) for d in devs],
                      lambda s, j: weights[j] / weights[-1]),
        _cut_by_share(layers, [1 / t / speed for t in totals],
                      lambda s, j: sum(devs[s].time_s[:j]) / totals[s]),
    ]


@pytest.mark.parametrize("time_limit_s", [0.0, 0.3])
def test_never_worse_than_the_baselines(time_limit_s: float) -> None:
    rng = random.Random(41)
    compared = 0
    for n in range(12):
        count = rng.choice([20, 28, 40, 64])
        inst = _fleet(rng, 48, count, count if n % 2 else 8)
        floors = [c.bottleneck_s for p in baselines(inst) if (c := evaluate(inst, p)) is not None]
        try:
            got = schedule(**inst.kwargs(), time_limit_s=time_limit_s)
        except SchedulingError:
            assert not floors and time_limit_s == 0  # nothing to start from, no time to search
            continue
        for floor in floors:
            assert got.bottleneck_s <= floor * (1 + 1e-12)
            compared += 1
        assert got.lower_bound <= got.bottleneck_s
    assert compared >= 6


def test_latency_objective_beyond_the_limit_keeps_the_floor() -> None:
    inst = _fleet(random.Random(5), 24, 12, 12)
    got = schedule(**{**inst.kwargs(), "objective": Objective.LATENCY}, **BEYOND)
    floors = [c.latency_s for p in baselines(inst) if (c := evaluate(inst, p)) is not None]
    assert all(got.latency_s <= f * (1 + 1e-12) for f in floors)
