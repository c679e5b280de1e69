"""Planning decoders for generation, in process on hand-written files: hosts.yml's sessions x
context, KV cache in each layer's memory, decode-step costs driving the plan. The real Profile
rpc -> plan path is tests/integration/test_decoder_profiling.py."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from pipeedge import models
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import HostsFileError, load_deployment
from pipeedge.coordinator.scheduler import SchedulingError
from pipeedge.models.kv_cache import KVCache, cache_capacity

MODEL = "pipeedge/tiny-gpt2"  # 12 sub-layers, attention in 1, 5, 9; 64 wide; 256 positions


LAYERS = 12


def _hosts(tmp_path, model=MODEL, **top):
    path = tmp_path / "hosts.yml"
    hosts = [{"name": n, "address": f"127.0.0.1:{5000 + i}", "device_type": n}
             for i, n in enumerate(top.pop("names", ["small", "big"]))]
    path.write_text(yaml.safe_dump({"model": model, "microbatch": 2, "hosts": hosts, **top}))
    return path


def test_hosts_generation_load_parsed_defaulted_and_refused(tmp_path):
    info = models.model_info(MODEL)
    dep = load_deployment(_hosts(tmp_path, sessions=4, context=100))
    assert (dep.sessions, dep.context) == (4, 100) and dep.generation_load(info) == (4, 100)
    assert load_deployment(_hosts(tmp_path)).generation_load(info) == (1, 256)
    for top, words in [({"sessions": 0}, "sessions must be a positive whole number"),
                       ({"context": "long"}, "context must be a positive whole number"),
                       ({"sessions": 2.5}, "sessions must be"),
                       ({"context": 257}, "over pipeedge/tiny-gpt2's 256 positions"),
                       ({"model": "pipeedge/tiny-vit", "sessions": 2},
                        ("'sessions' size the KV cache of text generation, but "
                         "pipeedge/tiny-vit is not a decoder model; remove them"))]:
        with pytest.raises(HostsFileError, match=words) as err:
            load_deployment(_hosts(tmp_path, **top))
        assert "\n" not in str(err.value)


def test_cache_capacity_matches_what_a_session_allocates():
    for steps, max_length in [([100, 200], 1024), ([64], 1024), ([65], 1024), ([10] * 100, 1024),
                              ([250], 256), ([5] + [1] * 250, 256)]:
        cache = KVCache([1], max_length=max_length)
        for t in steps:
            k = torch.zeros(1, 1, t, 2)
            cache.update(1, k, k)
            cache.advance(t)
        assert cache_capacity(cache.length, max_length) == cache._k[1].shape[2], steps


def _files(tmp_path, *, small_mb, step_types=("small", "big"), prefill=None, step=None):
    """A `small` device type (fast, `small_mb` MB) and a `big` one (1000x slower, 1 GB) on fast
    links;
    0.2 MB weights per layer (2.4 MB in all)."""
    prefill = prefill or {"small": 0.001, "big": 1.0}
    step = step or {"small": 0.001, "big": 1.0}
    (tmp_path / "models.yml").write_text(yaml.safe_dump({MODEL: {
        "layers": LAYERS, "mem_MB": [0.2] * LAYERS, "parameters_in": 128,
        "parameters_out": [8192] * LAYERS, "step_parameters_in": 1,
        "step_parameters_out": [64] * LAYERS}}))
    types = {}
    for name, mem in (("small", small_mb), ("big", 1000)):
        run = {"batch_size": 2, "dtype": "torch.float32", "time_s": [prefill[name]] * LAYERS}
        if name in step_types:
            run.update(step_time_s=[step[name]] * LAYERS, step_context=255)
        types[name] = {"bw_Mbps": 10_000, "mem_MB": mem, "model_profiles": {MODEL: [run]}}
    (tmp_path / "device_types.yml").write_text(yaml.safe_dump(types))
    (tmp_path / "devices.yml").write_text(yaml.safe_dump({"small": ["small"], "big": ["big"]}))


def test_kv_cache_memory_moves_layers_off_a_device_it_does_not_fit(tmp_path):
    # Weights (2.4 MB) fit the 3 MB device. The cache of one 64-wide attention layer is
    # 2 (K, V) x 64 x 4 bytes = 512 bytes per token per sequence, 3 attention layers.
    _files(tmp_path, small_mb=3.0)
    alone = planning.plan(load_deployment(_hosts(tmp_path, sessions=1, context=256)))
    assert [s.host.name for s in alone.stages] == ["small"]  # + 0.375 MB of cache: fits
    assert "KV cache of 0.4 MB for 1 session(s) x 256 tokens, decode-step times" in alone.how
    loaded = planning.plan(load_deployment(_hosts(tmp_path, sessions=4, context=256)))
    assert sorted(s.host.name for s in loaded.stages) == ["big", "small"]  # 3.9 MB > 3 MB
    small = next(s for s in loaded.stages if s.host.name == "small")
    kv_layers = [x for x in range(small.layers.first, small.layers.last + 1) if x % 4 == 1]
    assert 0.2 * small.layers.count + 0.5 * len(kv_layers) <= 3.0
    # Memory is sized as allocated: 129 tokens occupy 256 slots, like 256 tokens.
    same = planning.plan(load_deployment(_hosts(tmp_path, sessions=4, context=129)))
    assert [s.layers for s in same.stages] == [s.layers for s in loaded.stages]
    # Nothing fits: the one-line error says which knobs to turn.
    with pytest.raises(SchedulingError, match=r"includes a KV cache of 1.5 MB for 4 session\(s\) x "
                                              r"256 tokens; if memory is what does not fit, "
                                              r"lower sessions: or context: in hosts.yml\)$"):
        planning.plan(load_deployment(_hosts(tmp_path, sessions=4, context=256,
                                             names=["small"])))


def test_decode_step_profiles_drive_the_plan_else_prefill_with_a_note(tmp_path, caplog):
    # Prefill favours `small`, decode steps favour `big` (both hold everything).
    slow_steps = {"small": 0.01, "big": 0.001}
    _files(tmp_path, small_mb=1000, step=slow_steps)
    dep = load_deployment(_hosts(tmp_path, sessions=2, context=255))
    plan = planning.plan(dep)
    assert plan.stages[0].host.name == "big" and "decode-step times" in plan.how
    stage = plan.schedule.stages[0]
    assert stage.compute_s == pytest.approx(0.001 * stage.last_layer - 0.001 * (
        stage.first_layer - 1))
    # One device type lacks step times: prefill times for all, with a logged note.
    _files(tmp_path, small_mb=1000, step=slow_steps, step_types=("big",))
    with caplog.at_level(logging.INFO, logger="pipeedge.coordinator.planning"):
        plan = planning.plan(dep)
    assert plan.stages[0].host.name == "small" and "prefill times" in plan.how
    assert "no decode-step profile" in caplog.text
