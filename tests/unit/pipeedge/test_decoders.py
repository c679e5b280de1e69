"""Decoder-only models in process: shards vs transformers (with and without KV cache), every cut,
sessions on a stage backend, sampling, tokenizer, profiler and KV-cache arithmetic."""

from __future__ import annotations

import itertools
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import grpc
import pytest
import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client.generate import SamplingParams, _Run, sample_token
from pipeedge.models import KVCache, build_shard, kv_cache_bytes_per_layer, model_info
from pipeedge.stage_server.sessions import SessionError, SessionStore
from pipeedge.tokenizer import ByteTokenizer, TextStream, load_tokenizer

TINY = ["pipeedge/tiny-gpt2", "pipeedge/tiny-llama"]


def hf_model(info, state=None, seed=0):
    """The unsplit transformers model holding exactly our seeded random weights (no disk)."""
    import transformers

    state = state if state is not None else models.load_shard_state(info, 1, info.num_layers, seed)
    cfg_cls = transformers.AutoConfig.for_model(info.config["model_type"])
    config = type(cfg_cls).from_dict({k: v for k, v in info.config.items()
                                      if k not in ("architectures", "_name_or_path")})
    config._attn_implementation = "eager"
    cls = getattr(transformers, info.spec.hf_classes[info.head])
    model = cls(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    model.tie_weights()
    assert all(k == "lm_head.weight" for k in missing), missing
    return model


def chain(info, bounds, seed=0):
    edges = [0, *bounds, info.num_layers]
    return [build_shard(info, a + 1, b, models.load_shard_state(info, a + 1, b, seed))
            for a, b in itertools.pairwise(edges)]


def run_chain(shards, caches, ids):
    t = {"input_ids": ids}
    with torch.inference_mode():
        for s, c in zip(shards, caches):
            t = s(t, cache=c)
    return t["logits"]


# -- shards vs transformers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_every_cut_with_cache_matches_transformers(name):
    info = model_info(name)
    ref = hf_model(info)
    ids = torch.randint(3, 320, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = ref(input_ids=ids).logits  # (B, T, V)
    assert full.abs().max() > 0.1
    for cut in range(1, info.num_layers):
        shards = chain(info, [cut])
        caches = [s.new_cache() for s in shards]
        got = [run_chain(shards, caches, ids[:, :6])]           # prefill 6 tokens
        got.append(run_chain(shards, caches, ids[:, 6:7]))      # one decode step
        got.append(run_chain(shards, caches, ids[:, 7:11]))     # several tokens at once
        want = [full[:, 5], full[:, 6], full[:, 10]]
        for g, w in zip(got, want):
            assert (g - w).abs().max() <= 1e-5, f"{name} cut after {cut}"
        assert [c.length for c in caches] == [11, 11]
        # The stateless forward (profiling, scoring) gives the same last-position logits.
        assert (run_chain(shards, [None, None], ids) - full[:, -1]).abs().max() <= 1e-5


def test_llama_variants_gqa_head_dim_and_llama3_rope():
    info = model_info("pipeedge/tiny-llama")
    cfg = dict(info.config, head_dim=24, num_key_value_heads=1, attention_bias=True,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    info = model_info("custom/llama", json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    # The cut after sub-layer 1 carries the attention context: heads x head_dim = 96, not 64.
    assert models.boundary_spec(info, 1, torch.float32)[0].shape == (-1, -1, 96)
    state = models.load_shard_state(info, 1, info.num_layers, 0)
    g = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if k.endswith("bias"):
            v.add_(torch.randn(v.shape, generator=g) * 0.1)  # non-zero biases must map right
    ref = hf_model(info, state)
    ids = torch.randint(3, 320, (1, 90), generator=g)  # past the rope's original context
    with torch.no_grad():
        full = ref(input_ids=ids).logits
    for bounds in ([1], [6, 9]):
        edges = [0, *bounds, info.num_layers]
        shards = [build_shard(info, a + 1, b, {k: state[k] for k in
                                               models.shard_tensor_names(info, a + 1, b)})
                  for a, b in itertools.pairwise(edges)]
        caches = [s.new_cache() for s in shards]
        assert (run_chain(shards, caches, ids[:, :80]) - full[:, 79]).abs().max() <= 1e-5
        for t in range(80, 90):
            assert (run_chain(shards, caches, ids[:, t:t + 1]) - full[:, t]).abs().max() <= 1e-5


def test_gpt2_small_three_stages_with_cache_match_transformers():
    """The real GPT-2 shape (random weights): prefill + 6 decode steps over 3 shards."""
    info = model_info("gpt2")
    state = models.load_shard_state(info, 1, info.num_layers, 0)
    ref = hf_model(info, state)
    ids = torch.randint(0, 50257, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ref(input_ids=ids).logits
    edges = [0, 13, 30, 48]  # cuts after an attention sub-layer and after the MLP intermediate
    shards = [build_shard(info, a + 1, b, models.load_shard_state(info, a + 1, b, state))
              for a, b in itertools.pairwise(edges)]
    caches = [s.new_cache() for s in shards]
    diffs = [float((run_chain(shards, caches, ids[:, :18]) - full[:, 17]).abs().max())]
    for t in range(18, 24):
        diffs.append(float((run_chain(shards, caches, ids[:, t:t + 1]) - full[:, t]).abs().max()))
    assert max(diffs) <= 1e-4, diffs
    # Memory follows the shard: the head is tied to wte, so only the last stage adds lm_head.
    sizes = [models.parameter_bytes(s) for s in shards]
    assert sum(sizes) == sum(t.numel() * 4 for t in state.values()) + 50257 * 768 * 4


def test_tied_head_is_shared_on_a_single_stage_and_read_from_wte():
    info = model_info("pipeedge/tiny-gpt2")
    whole = build_shard(info, 1, info.num_layers, None)
    assert "lm_head.weight" not in whole.state_dict()
    last = models.shard_tensor_names(info, info.num_layers, info.num_layers)
    assert "lm_head.weight" in last
    # A checkpoint without lm_head (as the hub's gpt2) serves the last stage from wte.
    full = models.load_shard_state(info, 1, 4, 0)
    state = models.load_shard_state(info, info.num_layers, info.num_layers,
                                    {"wte.weight": full["transformer.wte.weight"],
                                     "ln_f.weight": torch.ones(64), "ln_f.bias": torch.zeros(64),
                                     "h.2.mlp.c_proj.weight": torch.zeros(192, 64),
                                     "h.2.mlp.c_proj.bias": torch.zeros(64)})
    assert torch.equal(state["lm_head.weight"], full["transformer.wte.weight"])


def test_registry_configs_and_partition_numbering():
    for name, blocks, hidden in [("gpt2", 12, 768), ("gpt2-medium", 24, 1024),
                                 ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 22, 2048),
                                 ("pipeedge/tiny-gpt2", 3, 64), ("pipeedge/tiny-llama", 3, 64)]:
        info = model_info(name)
        assert info.is_decoder and info.head == "causal-lm"
        assert (info.num_blocks, info.num_layers, info.hidden_size) == (blocks, 4 * blocks, hidden)
    assert model_info("gpt2").prefix == "transformer."
    assert model_info("TinyLlama/TinyLlama-1.1B-Chat-v1.0").prefix == "model."
    assert not model_info("pipeedge/tiny-bert").is_decoder


def test_errors_are_one_line():
    info = model_info("pipeedge/tiny-gpt2")
    shard = build_shard(info, 1, info.num_layers, None)
    cache = shard.new_cache()
    shard({"input_ids": torch.ones(2, 3, dtype=torch.int64)}, cache=cache)
    with pytest.raises(ValueError, match="batch 2 but this step has batch 1"):
        shard({"input_ids": torch.ones(1, 1, dtype=torch.int64)}, cache=cache)
    with pytest.raises(ValueError, match="256 positions"):
        shard({"input_ids": torch.ones(2, 254, dtype=torch.int64)}, cache=cache)
    with pytest.raises(ValueError, match="unexpected tensor.*'hidden'.*takes \\['input_ids'\\]"):
        shard({"hidden": torch.ones(1, 1, 64)})
    bad = dict(info.config, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        build_shard(model_info("x/y", json.dumps(bad)), 1, 4, None)
    rope = dict(model_info("pipeedge/tiny-llama").config, rope_scaling={"rope_type": "yarn"})
    with pytest.raises(ValueError, match="rope_scaling.rope_type='yarn' is not supported"):
        model_info("x/l", json.dumps(rope))  # refused when read, before any shard is built


# -- KV cache and sessions -------------------------------------------------------------------------


def test_kv_cache_grows_in_chunks_and_truncates():
    cache = KVCache([0], chunk=4)
    k = torch.randn(1, 2, 3, 5)
    a, _ = cache.update(0, k, k)
    cache.advance(3)
    assert a.shape == (1, 2, 3, 5) and cache.nbytes == 2 * 2 * 4 * 5 * 4
    for i in range(6):
        kk, _ = cache.update(0, torch.full((1, 2, 1, 5), float(i)), torch.zeros(1, 2, 1, 5))
        cache.advance(1)
    assert kk.shape[2] == 9 and torch.equal(kk[:, :, :3], k) and kk[0, 0, -1, 0] == 5
    assert cache.nbytes == 2 * 2 * 16 * 5 * 4  # 4 -> 8 -> 16 tokens of capacity
    cache.truncate(4)
    assert cache.update(0, k[:, :, :1], k[:, :, :1])[0].shape[2] == 5


def test_kv_cache_bytes_per_layer():
    gpt2 = model_info("gpt2")
    per_layer = kv_cache_bytes_per_layer(gpt2, sessions=4, context_len=1024)
    assert len(per_layer) == 48 and per_layer[0] == 2 * 4 * 12 * 1024 * 64 * 4
    assert per_layer[1:4] == [0, 0, 0] and sum(per_layer) == 12 * per_layer[0]
    tl = model_info("TinyLlama/TinyLlama-1.1B-Chat-v1.0")  # GQA: 4 kv heads of 64
    assert kv_cache_bytes_per_layer(tl, context_len=2048, dtype=torch.float16)[0] == \
        2 * 4 * 2048 * 64 * 2
    # A real cache of that length holds what the formula says (capacity = context here).
    info = model_info("pipeedge/tiny-llama")
    shard = build_shard(info, 1, 8, None)
    cache = shard.new_cache()
    shard({"input_ids": torch.ones(1, 64, dtype=torch.int64)}, cache=cache)
    assert cache.nbytes == sum(kv_cache_bytes_per_layer(info, context_len=64)[:8])


def _backend(name="pipeedge/tiny-gpt2", first=1, last=None):
    from pipeedge.stage_server.backends import load_backend

    info = model_info(name)
    last = last or info.num_layers
    req = pb.AssignRequest(model_name=name, first_layer=first, last_layer=last,
                           stage_name="s", weights=pb.WeightSource(random_seed=0))
    return load_backend(req, models.load_shard_state(info, first, last, 0))


def test_backend_sessions_steps_retry_end_and_errors():
    backend = _backend()
    try:
        ids = torch.tensor([[5, 6, 7, 8]])
        ref = backend.run({"input_ids": ids})["logits"]  # stateless
        backend.run_session({"input_ids": ids[:, :3]}, "a", 0)
        first = backend.run_session({"input_ids": ids[:, 3:]}, "a", 1)["logits"]
        assert torch.allclose(first, ref, atol=1e-5)
        # A retried step recomputes from where it began: same answer, same cache length.
        again = backend.run_session({"input_ids": ids[:, 3:]}, "a", 1)["logits"]
        assert torch.allclose(again, first, atol=1e-6)
        assert backend.sessions.session("a").cache.length == 4
        with pytest.raises(SessionError, match="got step 3.*last completed step is 1") as e:
            backend.run_session({"input_ids": ids[:, :1]}, "a", 3)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(SessionError, match="unknown to stage s") as e:
            backend.run_session({"input_ids": ids[:, :1]}, "zzz", 1)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(SessionError, match="batch 1 but this step has batch 2"):
            backend.run_session({"input_ids": torch.ones(2, 1, dtype=torch.int64)}, "a", 2)
        assert backend.sessions.cache_bytes > 0
        assert backend.run_session({}, "a", 2) == {}  # end of session: freed
        assert "a" not in backend.sessions and backend.sessions.cache_bytes == 0
        assert backend.run_session({}, "a", 2) == {}  # ending twice is harmless
    finally:
        backend.close()


def test_session_limits_and_idle_expiry():
    store = SessionStore(lambda: KVCache([0]), stage="s", idle_timeout_s=0.2, max_sessions=2)
    compute = lambda tensors, cache: {"ok": torch.ones(1)}
    x = {"input_ids": torch.ones(1, 1)}
    store.run(x, "a", 0, compute)
    store.run(x, "b", 0, compute)
    with pytest.raises(SessionError, match="holds 2 sessions") as e:
        store.run(x, "c", 0, compute)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    store.run(x, "a", 0, compute)  # restarting an existing session needs no room
    deadline = time.monotonic() + 5
    while len(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store) == 0 and store.expired == 2  # the reaper thread freed both
    store.close()


def test_stateless_backend_ignores_sessions():
    backend = _backend("pipeedge/tiny-bert", 1, 8)
    x = models.example_inputs(model_info("pipeedge/tiny-bert"), 1, seq_len=4)
    assert backend.run_session({}, "a", 0) == {}
    assert set(backend.run_session(x, "a", 0)) == {"hidden", "pooled"}


def test_onnx_backend_refuses_decoders():
    from pipeedge.stage_server.backends import load_backend

    req = pb.AssignRequest(model_name="pipeedge/tiny-gpt2", first_layer=1, last_layer=12,
                           backend=pb.ONNX)
    with pytest.raises(ValueError, match="decoder.*torch backend"):
        load_backend(req, {})


# -- sampling and text ----------------------------------------------------------------------------


def test_sampling_greedy_topk_topp_seed():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
    assert sample_token(logits, SamplingParams()) == 1
    g = lambda s: torch.Generator().manual_seed(s)
    p = SamplingParams(temperature=1.0, top_k=2)
    picks = {sample_token(logits, p, g(s)) for s in range(200)}
    assert picks == {1, 2}
    p = SamplingParams(temperature=1.0, top_p=0.3)  # the top token alone holds > 30%
    assert {sample_token(logits, p, g(s)) for s in range(50)} == {1}
    p = SamplingParams(temperature=5.0)
    assert len({sample_token(logits, p, g(s)) for s in range(300)}) == 5
    seq = [sample_token(logits, p, g(7)) for _ in range(3)]
    assert len(set(seq)) == 1  # same seed, same draw
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad).check()


def test_run_stops_on_tokens_strings_and_length():
    tok = ByteTokenizer(320, eos_token_ids=[2])

    def drive(params, tokens):
        run = _Run(0, [1], params, tok, (2,), False)
        events = []
        for t in tokens:
            logits = torch.full((1, 320), -10.0)
            logits[0, t] = 10.0
            events.append(run.advance(logits))
            if events[-1].finish_reason:
                break
        return run.completion, events

    text = [b + 3 for b in b"hello world"]
    c, ev = drive(SamplingParams(max_new_tokens=5), text)
    assert (c.text, c.finish_reason, len(ev)) == ("hello", "length", 5)
    c, ev = drive(SamplingParams(max_new_tokens=50), text[:3] + [2] + text)
    assert (c.text, c.finish_reason, c.token_ids[-1]) == ("hel", "stop", 2)
    c, ev = drive(SamplingParams(max_new_tokens=50, stop=("o w",)), text)
    assert (c.text, c.finish_reason) == ("hell", "stop")
    assert "".join(e.text for e in ev) == "hell"  # held-back text never leaks past a stop
    c, _ = drive(SamplingParams(max_new_tokens=50, stop_token_ids=()), text[:2] + [2] + text[:1])
    assert c.finish_reason is None and len(c.token_ids) == 4


def test_byte_tokenizer_and_utf8_stream():
    tok = load_tokenizer(None, model_info("pipeedge/tiny-llama").config)
    assert isinstance(tok, ByteTokenizer) and tok.eos_token_ids == (2,)
    ids = tok.encode("héllo ✓")
    assert ids[0] == 1 and tok.decode(ids) == "héllo ✓"
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids[1:]]
    assert "".join(deltas) == "héllo ✓" and "\ufffd" not in "".join(deltas)
    assert tok.decode([300, 2, 0]) == ""
    with pytest.raises(ValueError, match="at least 259"):
        ByteTokenizer(100)


# -- profiling -------------------------------------------------------------------------------------


def test_profiler_times_decoder_layers(tmp_path):
    from pipeedge.stage_server.profiler import profile_layers

    req = pb.ProfileRequest(model_name="pipeedge/tiny-llama", batch_size=2, warmup=1, repeats=1)
    events = list(profile_layers(req, cache_dir=tmp_path, default_threads=1,
                                 default_device="cpu"))
    assert [e.layer for e in events] == list(range(1, 13)) and events[-1].done
    assert all(e.time_s > 0 for e in events)
    assert events[0].parameters_in == 128  # token ids of a 128-token prefill
    assert events[0].parameters_out == 128 * 64 * 2  # context + residual
    assert events[2].parameters_out == 128 * (160 + 64)
    assert events[-1].parameters_out == 320  # last-position logits


def test_profile_decode_reports_prefill_step_and_cache():
    from pipeedge.stage_server.sessions import profile_decode

    first = profile_decode("pipeedge/tiny-gpt2", 1, 6, context_len=32, repeats=2)
    later = profile_decode("pipeedge/tiny-gpt2", 7, 12, context_len=32, repeats=2)
    for r in (first, later):
        assert r["prefill_s"] > 0 and r["step_s"] > 0
    info = model_info("pipeedge/tiny-gpt2")
    assert first["kv_bytes"] == sum(kv_cache_bytes_per_layer(info, context_len=64)[:6])
    with pytest.raises(ValueError, match="not a decoder"):
        profile_decode("pipeedge/tiny-bert", 1, 4)
