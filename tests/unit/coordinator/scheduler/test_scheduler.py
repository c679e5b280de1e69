"""The scheduler returns the true optimum: brute force on hundreds of small random instances,
an independent exact DP on the seed's published example, and the seed's own answer for scale.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
from test_scheduler_reference import (
    Instance,
    brute_force,
    evaluate,
    random_instance,
    seed_dp_plan,
    type_count_bottleneck,
)

from pipeedge.coordinator.scheduler import (
    DeviceProfile,
    Link,
    ModelProfile,
    NetworkLinks,
    Objective,
    SchedulingError,
    load_inputs,
    schedule,
)
from pipeedge.coordinator.scheduler import evaluate as evaluate_plan

FIXTURES = Path("/work/shared/fixtures/pipeedge-format")
VIT_BASE, VIT_LARGE = "google/vit-base-patch16-224", "google/vit-large-patch16-224"

CASES = {  # name: (seed, instances, generator options)
    "distinct": (11, 120, {"max_layers": 7, "max_devices": 4}),
    "shared-types": (12, 120, {"max_layers": 7, "max_devices": 5, "shared_types": True}),
    "links": (13, 120, {"max_layers": 6, "max_devices": 4, "links": True}),
    "links-client-legs": (
        14,
        100,
        {
            "max_layers": 6,
            "max_devices": 4,
            "links": True,
            "client_legs": True,
            "shared_types": True,
        },
    ),
    "frames": (
        16,
        120,
        {"max_layers": 7, "max_devices": 4, "shared_types": True, "links": True, "frames": True},
    ),
    "proportional": (
        15,
        80,
        {"max_layers": 7, "max_devices": 4, "proportional": True, "links": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_brute_force(case: str) -> None:
    seed, count, options = CASES[case]
    rng = random.Random(seed)
    feasible = multi_stage = 0
    for n in range(count):
        inst = random_instance(rng, **options)
        want = brute_force(inst)
        if want is None:
            with pytest.raises(SchedulingError, match="no viable schedule"):
                schedule(**inst.kwargs())
            continue
        got = schedule(**inst.kwargs())
        plan = tuple(
            (
                inst.devices.index(next(d for d in inst.devices if d.host == s.host)),
                s.first_layer - 1,
                s.last_layer,
            )
            for s in got.stages
        )
        costs = evaluate(inst, plan)
        assert costs is not None, f"{case} #{n}: the scheduler's plan is invalid"
        assert got.exact, f"{case} #{n}"
        # Dyadic inputs: the keys are exact, so objective, tie-break and stage count all match.
        assert costs.key(inst.objective) == pytest.approx(
            want[0].key(inst.objective), rel=1e-12, abs=1e-12
        ), f"{case} #{n}: got {plan}, brute force {want[1]}"
        assert got.bottleneck_s == pytest.approx(costs.bottleneck_s, rel=1e-12)
        assert got.latency_s == pytest.approx(costs.latency_s, rel=1e-12)
        feasible += 1
        multi_stage += len(plan) > 1
    assert count // 4 < feasible < count  # both feasible and memory-infeasible instances
    assert multi_stage > count // 8


def _fixture(model: str) -> Instance:
    inputs = load_inputs(
        model_name=model,
        models_file=FIXTURES / "models.yml",
        dev_types_file=FIXTURES / "device_types.yml",
        dev_file=FIXTURES / "devices.yml",
    )
    return Instance(
        model=inputs.model,
        devices=inputs.devices,
        batch_size=8,
        dtype="torch.float32",
        buffers_in=2,
        buffers_out=2,
    )


@pytest.mark.parametrize("model, seed_slower", [(VIT_BASE, 0.11), (VIT_LARGE, 0.13)])
def test_seed_example_is_optimal_and_beats_the_seed(model: str, seed_slower: float) -> None:
    inst = _fixture(model)
    got = schedule(**inst.kwargs())
    optimum = type_count_bottleneck(inst)
    assert got.exact
    assert got.bottleneck_s == pytest.approx(optimum, rel=1e-12)
    # The seed's DP costs every type with the first device's profile; on its own example its
    # schedule is about 11% (ViT-Base) and 13% (ViT-Large) slower than the optimum.
    seed = evaluate(inst, seed_dp_plan(inst))
    assert seed is not None
    assert seed.bottleneck_s / got.bottleneck_s - 1 == pytest.approx(seed_slower, abs=0.01)


def test_seed_example_prefix_matches_brute_force() -> None:
    """A slice of the example small enough to enumerate: ViT-Base's first 12 layers, 2+2 hosts."""
    full = _fixture(VIT_BASE)
    model = ModelProfile(
        "vit-base[:12]",
        full.model.mem_MB[:12],
        full.model.parameters_in,
        full.model.parameters_out[:12],
    )
    devices = tuple(
        DeviceProfile(d.host, d.device_type, 120.0, d.bw_Mbps, d.time_s[:12])
        for d in full.devices
        if d.host in {"mb-0", "mb-1", "rcc-0", "rcc-1"}
    )
    inst = Instance(
        model=model,
        devices=devices,
        batch_size=8,
        dtype="torch.float32",
        buffers_in=2,
        buffers_out=2,
    )
    want = brute_force(inst)
    assert want is not None and len(want[1]) > 1
    assert schedule(**inst.kwargs()).bottleneck_s == pytest.approx(want[0].bottleneck_s, rel=1e-12)


def test_seed_example_solves_in_milliseconds() -> None:
    inst = _fixture(VIT_LARGE)
    schedule(**inst.kwargs())
    start = time.perf_counter()
    for _ in range(5):
        schedule(**inst.kwargs())
    assert (time.perf_counter() - start) / 5 < 0.05


def _distinct_instance(
    rng: random.Random, layers: int, count: int, objective: Objective, memory: float = 2.0
) -> Instance:
    """ViT-like layers (4 sub-layers per block) on distinct devices with per-pair links."""
    pattern_out, pattern_t = (302592, 151296, 756480, 151296), (0.35, 0.08, 0.35, 0.30)
    mem = tuple(20 + 10 * rng.random() for _ in range(layers))
    model = ModelProfile("vit-like", mem, 150528, tuple(pattern_out[i % 4] for i in range(layers)))
    devices = []
    for d in range(count):
        speed = 0.5 + 1.5 * rng.random()
        devices.append(
            DeviceProfile(
                f"h{d}",
                f"type{d}",
                memory * sum(mem) * (0.5 + rng.random()) / count,
                1000.0,
                tuple(pattern_t[i % 4] * speed * (0.9 + 0.2 * rng.random()) for i in range(layers)),
            )
        )
    links = NetworkLinks(
        {
            (a.host, b.host): Link(100 + 900 * rng.random(), 0.1 + rng.random())
            for a in devices
            for b in devices
            if a is not b
        }
    )
    return Instance(
        model=model,
        devices=tuple(devices),
        links=links,
        batch_size=8,
        dtype="torch.float32",
        buffers_in=2,
        buffers_out=2,
        objective=objective,
    )


def test_sixteen_distinct_devices_128_layers_exact() -> None:
    inst = _distinct_instance(random.Random(2), 128, 16, Objective.THROUGHPUT)
    start = time.perf_counter()
    got = schedule(**inst.kwargs())
    elapsed = time.perf_counter() - start
    assert got.exact and len(got.stages) == 16
    assert elapsed < 3.0  # about 0.3 s on 2 cores; generous for a loaded CI machine


def test_beyond_the_exact_limit_exact_or_says_so_with_a_gap() -> None:
    inst = _distinct_instance(random.Random(3), 48, 24, Objective.THROUGHPUT, memory=6.0)
    got = schedule(**inst.kwargs())
    assert got.exact and got.gap == 0 and got.lower_bound == got.bottleneck_s
    assert "exact bottleneck" in got.method
    got = schedule(**inst.kwargs(), time_limit_s=0.0)  # no time: a baseline and the bound
    assert not got.exact and "proven lower bound" in got.method
    assert 0 < got.lower_bound <= got.bottleneck_s
    assert got.gap == pytest.approx(got.bottleneck_s / got.lower_bound - 1)
    assert math.isfinite(got.gap)


def test_no_viable_schedule_names_the_fix() -> None:
    inst = _fixture(VIT_LARGE)
    one = (DeviceProfile("mb-0", "Minnowboard-E3845", 2048.0, 1000.0, inst.devices[0].time_s),)
    with pytest.raises(SchedulingError, match=r"no viable schedule: .*needs \d+ MB.*add hosts"):
        schedule(model=inst.model, devices=one)


def test_argument_errors_are_scheduling_errors() -> None:
    inst = _fixture(VIT_BASE)
    with pytest.raises(SchedulingError, match="unknown objective"):
        schedule(model=inst.model, devices=inst.devices, objective="speed")
    with pytest.raises(SchedulingError, match="no devices"):
        schedule(model=inst.model, devices=())
    with pytest.raises(SchedulingError, match="batch size must be"):
        schedule(model=inst.model, devices=inst.devices, batch_size=0)


def test_evaluate_prices_a_plan_as_the_cost_model_does() -> None:
    """evaluate(): the scheduler's own plan costs what schedule() said; a hand-computed even
    split on two devices; a plan over a device's memory is refused by name."""
    model = ModelProfile("m", mem_MB=(10.0, 10.0, 10.0, 10.0), parameters_in=4,
                         parameters_out=(4, 4, 4, 4))
    devices = [DeviceProfile("a", "fast", 100.0, 1000.0, (1.0, 1.0, 1.0, 1.0)),
               DeviceProfile("b", "slow", 25.0, 1000.0, (3.0, 3.0, 3.0, 3.0))]
    best = schedule(model=model, devices=devices, batch_size=1)
    again = evaluate_plan(model=model, devices=devices, batch_size=1,
                          plan=[(s.host, s.first_layer, s.last_layer) for s in best.stages])
    assert again.bottleneck_s == pytest.approx(best.bottleneck_s)
    even = evaluate_plan(model=model, devices=devices, batch_size=1,
                         plan=[("a", 1, 2), ("b", 3, 4)])
    assert even.bottleneck_s == pytest.approx(6.0)  # b: 2 layers x 3 s; a 1-element wire is ~0
    with pytest.raises(SchedulingError, match="need .* MB on b, which has 25 MB"):
        evaluate_plan(model=model, devices=devices, batch_size=1,
                      plan=[("a", 1, 1), ("b", 2, 4)])
