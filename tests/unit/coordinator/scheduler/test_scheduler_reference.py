"""Independent Python reference for the scheduler tests.

The seed's cost model re-implemented in plain Python, brute force over every assignment, a
random instance generator whose numbers are dyadic (sums are exact, so ties are real ties), the
seed's own DP with its device-index bug, and a correct min-max DP over device-type counts for
instances too large to enumerate. Nothing here calls the scheduler; the tests at the bottom
check the reference itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeedge.coordinator.scheduler import (
    DeviceProfile,
    Link,
    ModelProfile,
    NetworkLinks,
    Objective,
)

MIB = 1024.0 * 1024.0
DTYPE_BYTES = {"torch.float32": 4, "torch.int8": 1}
Plan = tuple[tuple[int, int, int], ...]  # (device index, begin, end): layers begin+1..end


@dataclass(frozen=True)
class Instance:
    model: ModelProfile
    devices: tuple[DeviceProfile, ...]
    links: NetworkLinks | None = None
    batch_size: int = 1
    dtype: str = "torch.int8"
    buffers_in: int = 0
    buffers_out: int = 0
    objective: Objective = Objective.THROUGHPUT

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``schedule()``."""
        return {
            "model": self.model,
            "devices": self.devices,
            "links": self.links,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "buffers_in": self.buffers_in,
            "buffers_out": self.buffers_out,
            "objective": self.objective,
        }


@dataclass(frozen=True)
class Costs:
    bottleneck_s: float
    latency_s: float
    stages: int

    def key(self, objective: Objective) -> tuple[float, float, int]:
        if objective is Objective.THROUGHPUT:
            return (self.bottleneck_s, self.latency_s, self.stages)
        return (self.latency_s, self.bottleneck_s, self.stages)


# --- the seed's cost model -------------------------------------------------------------------


def _bytes_out(inst: Instance, j: int) -> float:
    return inst.model.parameters_out[j - 1] * inst.batch_size * DTYPE_BYTES[inst.dtype]


def _bytes_in(inst: Instance, i: int) -> float:
    if i == 0:
        return inst.model.parameters_in * inst.batch_size * DTYPE_BYTES[inst.dtype]
    return _bytes_out(inst, i)


def memory_MB(inst: Instance, i: int, j: int) -> float:
    """Weights of layers i+1..j plus the seed's buffers (no receive queue on the first stage)."""
    data_in, data_out = _bytes_in(inst, i), _bytes_out(inst, j)
    buffers = (
        inst.buffers_out * data_out
        + data_in
        + data_out
        + (inst.buffers_in * data_in if i > 0 else 0)
    )
    return sum(inst.model.mem_MB[i:j]) + buffers / MIB


def stage_s(inst: Instance, d: int, i: int, j: int) -> float:
    """Device d's busy time for layers i+1..j: the layers, plus its own frame costs (a fixed
    part, and per MB of the activation it receives and of the one it sends)."""
    dev = inst.devices[d]
    frames = dev.frame_s + dev.wire_s_per_MB * (_bytes_in(inst, i) + _bytes_out(inst, j)) / MIB
    return sum(dev.time_s[i:j]) + frames


def seconds(nbytes: float, bw_Mbps: float) -> float:
    if nbytes <= 0:
        return 0.0
    return math.inf if bw_Mbps <= 0 else nbytes * 8 / (bw_Mbps * MIB)


def link(inst: Instance, a: int, b: int) -> Link:
    da, db = inst.devices[a], inst.devices[b]
    if inst.links is None:
        return Link(min(da.bw_Mbps, db.bw_Mbps), 0.0)
    return inst.links.host_to_host[(da.host, db.host)]


def evaluate(inst: Instance, plan: Plan) -> Costs | None:
    """Costs of a plan, or None if a stage does not fit or a transfer is impossible."""
    hosts = [inst.devices[d].host for d, _, _ in plan]
    bottleneck = latency = 0.0
    if inst.links is not None and inst.links.client_to_host is not None:
        leg = inst.links.client_to_host[hosts[0]]
        bottleneck = seconds(_bytes_in(inst, 0), leg.bw_Mbps)
        latency = bottleneck + leg.latency_ms / 1000
    for k, (d, i, j) in enumerate(plan):
        if memory_MB(inst, i, j) > inst.devices[d].mem_MB:
            return None
        compute = stage_s(inst, d, i, j)
        if k + 1 < len(plan):
            leg = link(inst, d, plan[k + 1][0])
            transfer, hop = seconds(_bytes_out(inst, j), leg.bw_Mbps), leg.latency_ms / 1000
        elif inst.links is not None and inst.links.host_to_client is not None:
            leg = inst.links.host_to_client[hosts[-1]]
            transfer, hop = seconds(_bytes_out(inst, j), leg.bw_Mbps), leg.latency_ms / 1000
        else:
            transfer, hop = 0.0, 0.0
        bottleneck = max(bottleneck, compute, transfer)
        latency += compute + transfer + hop
    if not math.isfinite(bottleneck):
        return None
    return Costs(bottleneck, latency, len(plan))


# --- brute force ---------------------------------------------------------------------------


def brute_force(inst: Instance) -> tuple[Costs, Plan] | None:
    """The best plan by enumerating every ordered choice of distinct devices and every cut."""
    layers, best = inst.model.layers, None
    for k in range(1, min(len(inst.devices), layers) + 1):
        for cuts in itertools.combinations(range(1, layers), k - 1):
            bounds = (0, *cuts, layers)
            for order in itertools.permutations(range(len(inst.devices)), k):
                plan = tuple((order[s], bounds[s], bounds[s + 1]) for s in range(k))
                costs = evaluate(inst, plan)
                if costs is not None and (
                    best is None or costs.key(inst.objective) < best[0].key(inst.objective)
                ):
                    best = (costs, plan)
    return best


def _dyadic_model(rng: random.Random, layers: int) -> ModelProfile:
    unit = 2**14  # elements: at batch 1, 1 byte each, 2^17 elements take 1 s at 1 Mbit/s
    # After an "MLP intermediate" layer the activation is 4x bigger: later cuts can be worse.
    out = tuple(unit * (16 if rng.random() < 0.3 else 4) for _ in range(layers))
    return ModelProfile(
        name="random",
        mem_MB=tuple(float(rng.randint(1, 4)) for _ in range(layers)),
        parameters_in=unit * rng.randint(1, 8),
        parameters_out=out,
    )


def random_instance(
    rng: random.Random,
    *,
    max_layers: int = 6,
    max_devices: int = 4,
    shared_types: bool = False,
    links: bool = False,
    client_legs: bool = False,
    proportional: bool = False,
    frames: bool = False,
) -> Instance:
    """A small instance with dyadic numbers: memory-infeasible ones included on purpose."""
    layers = rng.randint(1, max_layers)
    model = _dyadic_model(rng, layers)
    bws = (0.5, 1.0, 2.0, 4.0, 8.0)
    base = [rng.randint(0, 12) / 8 for _ in range(layers)]
    kinds: list[DeviceProfile] = []
    devices: list[DeviceProfile] = []
    for d in range(rng.randint(1, max_devices)):
        if shared_types and kinds and rng.random() < 0.5:
            kind = rng.choice(kinds)
            devices.append(dataclasses.replace(kind, host=f"h{d}"))
            continue
        factor = rng.randint(1, 4) / 2
        times = tuple(b * factor if proportional else rng.randint(0, 12) / 8 for b in base)
        dev = DeviceProfile(f"h{d}", f"t{d}", float(rng.randint(3, 14)), rng.choice(bws), times)
        if frames:  # a frame costs up to 0.5 s; an activation is 1/16 to 1/2 MB
            dev = dataclasses.replace(dev, frame_s=rng.randint(0, 4) / 8,
                                      wire_s_per_MB=rng.randint(0, 8) / 4)
        kinds.append(dev)
        devices.append(dev)
    net = None
    if links or client_legs:
        ms = 1000 / 1024  # latencies of k/1024 s stay exact
        pairs = (
            {
                (a.host, b.host): Link(
                    rng.choice(bws) * (rng.random() > 0.1), rng.randint(0, 3) * ms
                )
                for a in devices
                for b in devices
                if a is not b
            }
            if links
            else {
                (a.host, b.host): Link(min(a.bw_Mbps, b.bw_Mbps))
                for a in devices
                for b in devices
                if a is not b
            }
        )
        legs = (
            (lambda: {d.host: Link(rng.choice(bws), rng.randint(0, 2) * ms) for d in devices})
            if client_legs
            else (lambda: None)
        )
        net = NetworkLinks(host_to_host=pairs, client_to_host=legs(), host_to_client=legs())
    return Instance(
        model=model,
        devices=tuple(devices),
        links=net,
        batch_size=rng.randint(1, 2),
        buffers_in=rng.randint(0, 2),
        buffers_out=rng.randint(0, 2),
        objective=Objective.LATENCY if rng.random() < 0.25 else Objective.THROUGHPUT,
    )


# --- the seed's DP, bug included -------------------------------------------------------------


def _types(inst: Instance) -> list[tuple[str, list[int]]]:
    """Device types in the seed's order (by name) with their device indices."""
    by_type: dict[str, list[int]] = {}
    for idx, d in enumerate(inst.devices):
        by_type.setdefault(d.device_type, []).append(idx)
    return sorted(by_type.items())


def seed_dp_plan(inst: Instance) -> Plan:
    """The seed's schedule_device_types(): a DP over type counts that, for type index u,
    reads the profile of device *instance* u (devices are listed type by type), so every type
    but the first is costed with the wrong device's profile. Ties keep the first found."""
    types = _types(inst)
    counts = [len(idx) for _, idx in types]
    instances = [idx for _, members in types for idx in members]  # the seed's `devices` vector
    prof = [
        inst.devices[instances[u]] for u in range(len(types))
    ]  # the bug: instance u, not type u
    radix = [math.prod(c + 1 for c in counts[:k]) for k in range(len(counts))]
    size, layers = math.prod(c + 1 for c in counts), inst.model.layers
    prefix = [list(itertools.accumulate(p.time_s, initial=0.0)) for p in prof]

    def used(s: int, u: int) -> int:
        return s // radix[u] % (counts[u] + 1)

    def fits(u: int, i: int, j: int) -> bool:  # strictly greater, as the seed
        return prof[u].mem_MB > memory_MB(inst, i, j)

    inf = 1e60
    h = [[[inf] * len(types) for _ in range(size)] for _ in range(layers + 1)]
    parent: dict[tuple[int, int, int], tuple[int, int]] = {}
    for u in range(len(types)):
        h[0][0][u] = 0.0
    best, best_at = inf, None
    for i in range(layers):
        for s in range(size):
            for u in range(len(types)):
                if h[i][s][u] > 1e59 or used(s, u) == counts[u]:
                    continue
                for j in range(i + 1, layers + 1):
                    if not fits(u, i, j):
                        continue
                    comp = prefix[u][j] - prefix[u][i]
                    if j == layers and max(h[i][s][u], comp) < best:
                        best, best_at = max(h[i][s][u], comp), (i, s, u)
                    for v in range(len(types)):
                        if used(s, v) == counts[v]:
                            continue
                        comm = seconds(_bytes_out(inst, j), min(prof[u].bw_Mbps, prof[v].bw_Mbps))
                        cost = max(h[i][s][u], comp, comm)
                        if cost < h[j][s + radix[u]][v]:
                            h[j][s + radix[u]][v] = cost
                            parent[(j, s + radix[u], v)] = (i, u)
    assert best_at is not None, "the seed finds no schedule"
    i, s, u = best_at
    stages = [(u, i, layers)]
    while i > 0:
        last_i, last_u = parent[(i, s, u)]
        s -= radix[last_u]
        stages.append((last_u, last_i, i))
        i, u = last_i, last_u
    stages.reverse()
    next_host = [0] * len(types)  # schedule_types_to_hosts(): hosts of a type in file order
    plan = []
    for u, i, j in stages:
        plan.append((types[u][1][next_host[u]], i, j))
        next_host[u] += 1
    return tuple(plan)


def type_count_bottleneck(inst: Instance) -> float:
    """Least bottleneck by a min-max DP over (position, per-type counts used, last type), for
    instances without a links file, where devices of one type are interchangeable. An exact
    method independent of the scheduler's (threshold search over bitsets)."""
    types = _types(inst)
    counts = [len(idx) for _, idx in types]
    prof = [inst.devices[idx[0]] for _, idx in types]
    radix = [math.prod(c + 1 for c in counts[:k]) for k in range(len(counts))]
    layers = inst.model.layers
    busy = {(u, i, j): stage_s(inst, idx[0], i, j) for u, (_, idx) in enumerate(types)
            for i in range(layers) for j in range(i + 1, layers + 1)}
    fit = {(i, j): memory_MB(inst, i, j) for i in range(layers) for j in range(i + 1, layers + 1)}
    # best[(i, s, u)]: least bottleneck with layers 1..i done by the counts s, u's stage last.
    best: dict[tuple[int, int, int], float] = {}
    for u, p in enumerate(prof):
        for j in range(1, layers + 1):
            if fit[(0, j)] <= p.mem_MB:
                key = (j, radix[u], u)
                best[key] = min(best.get(key, math.inf), busy[(u, 0, j)])
    answer = math.inf
    for i in range(1, layers + 1):
        for (pos, s, u), value in sorted((k, v) for k, v in best.items() if k[0] == i):
            if pos == layers:
                answer = min(answer, value)
                continue
            for v, p in enumerate(prof):
                if s // radix[v] % (counts[v] + 1) == counts[v]:
                    continue
                comm = seconds(_bytes_out(inst, pos), min(prof[u].bw_Mbps, p.bw_Mbps))
                for j in range(pos + 1, layers + 1):
                    if fit[(pos, j)] <= p.mem_MB:
                        key = (j, s + radix[v], v)
                        cost = max(value, comm, busy[(v, pos, j)])
                        if cost < best.get(key, math.inf):
                            best[key] = cost
    return answer


# --- checks of the reference itself -----------------------------------------------------------


def _two_device_instance(objective: Objective = Objective.THROUGHPUT) -> Instance:
    model = ModelProfile("m", (1.0, 1.0, 1.0), 2**17, (2**17, 2**19, 2**17))
    devices = tuple(DeviceProfile(f"h{d}", "t", 10.0, 1.0, (1.0, 1.0, 1.0)) for d in range(2))
    return Instance(model=model, devices=devices, objective=objective)


def test_reference_costs_a_plan_by_hand() -> None:
    inst = _two_device_instance()
    costs = evaluate(inst, ((0, 0, 1), (1, 1, 3)))
    assert costs == Costs(bottleneck_s=2.0, latency_s=1.0 + 1.0 + 2.0, stages=2)
    assert memory_MB(inst, 1, 3) == 2.0 + (2**17 + 2**17) / MIB  # weights + in and out buffers


def test_reference_costs_frames_by_hand() -> None:
    inst = _two_device_instance()
    slow = dataclasses.replace(inst.devices[1], frame_s=0.25, wire_s_per_MB=2.0)
    inst = dataclasses.replace(inst, devices=(inst.devices[0], slow))
    # h1 receives 2^17 bytes (1/8 MB at batch 1, int8) and sends 2^17: 0.25 + 2 * 0.25 s
    costs = evaluate(inst, ((0, 0, 1), (1, 1, 3)))
    assert costs == Costs(bottleneck_s=2.75, latency_s=1.0 + 1.0 + 2.75, stages=2)


def test_reference_brute_force_avoids_the_wide_cut() -> None:
    costs, plan = brute_force(_two_device_instance())
    assert costs.bottleneck_s == 2.0
    assert plan[0][2] == 1  # cutting after layer 2 would send 4 s of activation


def test_reference_seed_dp_matches_brute_force_on_one_type() -> None:
    rng = random.Random(5)
    for _ in range(30):
        inst = random_instance(rng, shared_types=False, max_devices=1)
        found = brute_force(inst)
        if found is None:
            continue
        seed = evaluate(inst, seed_dp_plan(inst))
        assert seed is not None and seed.bottleneck_s == found[0].bottleneck_s


def test_reference_type_count_dp_matches_brute_force() -> None:
    rng = random.Random(6)
    checked = 0
    for n in range(60):
        inst = random_instance(rng, shared_types=True, max_devices=4, frames=n % 2 == 1)
        inst = Instance(
            inst.model,
            inst.devices,
            None,
            inst.batch_size,
            inst.dtype,
            inst.buffers_in,
            inst.buffers_out,
            Objective.THROUGHPUT,
        )
        found = brute_force(inst)
        assert type_count_bottleneck(inst) == (found[0].bottleneck_s if found else math.inf)
        checked += found is not None
    assert checked > 20


def plan_hosts(inst: Instance, plan: Sequence[tuple[int, int, int]]) -> list[dict[str, list[int]]]:
    """A plan in the seed's output form."""
    return [{inst.devices[d].host: [i + 1, j]} for d, i, j in plan]
