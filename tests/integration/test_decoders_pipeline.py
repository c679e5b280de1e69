"""Text generation end to end: real stage processes on loopback, sessions with KV caches per
stage, greedy parity with transformers' generate(), concurrency, session ends, the HTTP API."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import pytest
import torch

from pipeedge import codec, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import TextGenerator
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.partition import parse_partition

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, threads=1, workdir=tmp_path_factory.mktemp("decoders")) as c:
        yield c


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    dirs = {}

    def get(name):
        if name not in dirs:
            dirs[name] = models.write_hf_directory(models.model_info(name), 0,
                                                   tmp_path_factory.mktemp("hf"))
        return dirs[name]

    return get


def deploy(cluster, model, partition, **kw):
    """Deploy `partition` on the first stages of the cluster; returns the pipeline file."""
    dep = load_deployment(cluster.hosts_file(model, partition=partition, **kw))
    ranges = parse_partition(partition, models.model_info(model).num_layers)
    stages = [deploy_mod.PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    pipeline = deploy_mod.deploy(dep, stages, progress=False)
    return pipeline, pipeline.save(cluster.workdir / "pipeline.json")


def hf_greedy(hf_dir, prompt, new_tokens):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), attn_implementation="eager").eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), [row[0] for row in out.logits]


@pytest.mark.parametrize(("model", "partition"), [
    ("pipeedge/tiny-gpt2", "1,6,7,12"),            # 2 stages, block boundary + 2 sub-layers
    ("pipeedge/tiny-gpt2", "1,5,6,7,8,12"),        # 3 stages, cuts after attention / after MLP-in
    ("pipeedge/tiny-llama", "1,4,5,12"),           # 2 stages, block boundary
    ("pipeedge/tiny-llama", "1,3,4,9,10,12"),      # 3 stages, cuts after MLP-in / after attention
])
def test_greedy_64_tokens_match_transformers_generate(cluster, hf_dirs, model, partition):
    _, pipeline_file = deploy(cluster, model, partition)
    with TextGenerator(pipeline_file=pipeline_file) as gen:
        prompt = gen.encode_prompt("The pipeline says: ")
        events = list(gen.generate(prompt, max_new_tokens=NEW_TOKENS, stop_token_ids=(),
                                   return_logits=True))
    want_tokens, want_logits = hf_greedy(hf_dirs(model), prompt, NEW_TOKENS)
    assert [e.token_id for e in events] == want_tokens
    assert events[-1].finish_reason == "length" and len(events) == NEW_TOKENS
    diff = max(float((e.logits - w).abs().max()) for e, w in zip(events, want_logits))
    assert diff <= 1e-4, diff
    assert max(float(w.abs().max()) for w in want_logits) > 0.1  # not trivially ~0


def test_concurrent_sessions_interleave_and_match_single_runs(cluster, hf_dirs):
    model = "pipeedge/tiny-llama"
    _, pipeline_file = deploy(cluster, model, "1,4,5,8,9,12")
    prompts = ["a", "two words", "a somewhat longer prompt here", "x" * 40, "last"]
    with TextGenerator(pipeline_file=pipeline_file) as gen:
        events = list(gen.generate_many(prompts, concurrency=4, max_new_tokens=12,
                                        stop_token_ids=()))
        alone = [gen.complete(p, max_new_tokens=12, stop_token_ids=()).token_ids
                 for p in prompts]
        sampled = gen.complete_many(prompts, temperature=0.9, top_k=40, top_p=0.95, seed=3,
                                    max_new_tokens=12)
        again = gen.complete_many(prompts, temperature=0.9, top_k=40, top_p=0.95, seed=3,
                                  max_new_tokens=12)
    together = [[e.token_id for e in events if e.index == i] for i in range(len(prompts))]
    assert together == alone
    order = [e.index for e in events]
    # One step per session is in flight: the first 4 results are 4 different sessions, and the
    # fifth prompt starts only when one of them finishes.
    assert set(order[:4]) == {0, 1, 2, 3} and order.index(4) >= 12
    assert [c.token_ids for c in sampled] == [c.token_ids for c in again]  # seeded sampling
    assert [c.token_ids for c in sampled] != alone
    first_prompt = TextGenerator.encode_prompt(gen, prompts[2])
    assert alone[2] == hf_greedy(hf_dirs(model), first_prompt, 12)[0]


def test_more_generations_than_a_stage_holds_sessions_all_complete(cluster_factory,
                                                                     monkeypatch):
    """A stage that holds 2 sessions and 6 concurrent generations: refused steps back off and
    start over (their half-advanced sessions ended first), and every generation completes
    with the tokens it has alone. Refused restarts used to leave sessions behind until the
    idle timeout, keeping the store full: a livelock of up to 5 minutes."""
    monkeypatch.setenv("PIPEEDGE_MAX_SESSIONS", "2")
    small = cluster_factory(2)
    pipeline, pipeline_file = deploy(small, "pipeedge/tiny-gpt2", "1,6,7,12")
    prompts = [[5 + i, 9, 13 + i] for i in range(6)]
    with TextGenerator(pipeline_file=pipeline_file) as gen:
        alone = [gen.complete(p, max_new_tokens=8, stop_token_ids=()).token_ids
                 for p in prompts[:1]]
        crowded = gen.complete_many(prompts, concurrency=6, max_new_tokens=8,
                                    stop_token_ids=())
        assert crowded[0].token_ids == alone[0]
        assert all(len(c.token_ids) == 8 for c in crowded)
        single = [gen.complete(p, max_new_tokens=8, stop_token_ids=()).token_ids
                  for p in prompts]
    assert [c.token_ids for c in crowded] == single
    for s in pipeline.stages:  # and nothing is left behind on the stages: the last session's
        ctl = StageControl(s.name, s.address)  # end (fire and forget) may still be on its way
        try:
            deadline = time.monotonic() + 10
            while (in_flight := ctl.status().in_flight) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            ctl.close()
        assert in_flight == 0


def _direct_step(address, session_id, tensors, step=1, epoch=0):
    ctl = StageControl("probe", address)
    try:
        frame = codec.encode_tensors(pb.Frame(request_id="probe", session_id=session_id,
                                              step=step, epoch=epoch), tensors)
        return ctl.stub.Infer(frame, timeout=20)
    finally:
        ctl.close()


def test_sessions_are_freed_on_every_stage(cluster, monkeypatch):
    pipeline, pipeline_file = deploy(cluster, "pipeedge/tiny-gpt2", "1,4,5,8,9,12")
    ended = []
    original = TextGenerator._end
    monkeypatch.setattr(TextGenerator, "_end",
                        lambda self, run: (ended.append(run.session_id), original(self, run)))
    with TextGenerator(pipeline_file=pipeline_file) as gen:
        stream = gen.generate("cancel me early", max_new_tokens=50, stop_token_ids=())
        assert len([next(stream) for _ in range(3)]) == 3
        stream.close()  # the caller stops reading: the session ends everywhere
        done = gen.complete("run to the end", max_new_tokens=5, stop_token_ids=())
        assert done.finish_reason == "length"
        # An end frame travels behind the session's last step; a stage answers it once done.
        gen.complete("sync", max_new_tokens=1)
    assert len(ended) == 3
    hidden = {"hidden": torch.zeros(1, 1, 64)}
    for sid in ended[:2]:
        for stage, tensors in zip(pipeline.stages, [{"input_ids": torch.ones(1, 1).long()},
                                                    hidden, hidden]):
            with pytest.raises(grpc.RpcError) as err:
                _direct_step(stage.address, sid, tensors, epoch=pipeline.version)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, stage.name
            assert "unknown to stage" in err.value.details()
    # A decode step of a session the stage never saw is refused with a one-line reason.
    with pytest.raises(grpc.RpcError) as err:
        _direct_step(pipeline.entry, "fresh", {"input_ids": torch.ones(1, 1).long()}, step=4)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_async_generator_matches_transformers_and_ends_sessions(cluster, hf_dirs, monkeypatch):
    """`AsyncTextGenerator` (what serve-http awaits): greedy tokens equal transformers'
    generate(), and closing its iterator early ends the session on the stages."""
    import asyncio

    from pipeedge.client import AsyncTextGenerator, SamplingParams

    model = "pipeedge/tiny-gpt2"
    _, pipeline_file = deploy(cluster, model, "1,4,5,8,9,12")
    ended = []
    original = TextGenerator._end
    monkeypatch.setattr(TextGenerator, "_end",
                        lambda self, run: (ended.append(run.session_id), original(self, run)))

    async def run():
        async with AsyncTextGenerator(pipeline_file=pipeline_file) as gen:
            prompt = gen.generator.encode_prompt("async edge devices")
            greedy = SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=())
            tokens = [ev.token_id async for ev in gen.generate_many([prompt], greedy)]
            early = gen.generate_many([prompt], SamplingParams(max_new_tokens=50))
            await early.__anext__()
            await early.aclose()  # the caller stops reading: the session ends (its thread
            for _ in range(200):  # stops at its next token)
                if len(ended) == 2:
                    break
                await asyncio.sleep(0.05)
            return prompt, tokens

    prompt, tokens = asyncio.run(run())
    assert tokens == hf_greedy(hf_dirs(model), prompt, 10)[0]
    assert len(ended) == 2




def _post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def _sse(text):
    lines = [ln[len("data: "):] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_openai_http_completions_chat_and_streaming(cluster):
    from pipeedge.apps.openai_http import make_app, running
    from pipeedge.apps.openai_service import CompletionService

    model = "pipeedge/tiny-gpt2"
    _, pipeline_file = deploy(cluster, model, "1,6,7,12")
    gen = TextGenerator(pipeline_file=pipeline_file)
    with running(make_app([CompletionService(gen)])) as base:  # closes gen when it stops
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
            assert json.load(r)["data"][0]["id"] == model
        expected = gen.complete("Hello", max_new_tokens=10)

        status, ctype, body = _post(base, "/v1/completions", {
            "model": model, "prompt": "Hello", "max_tokens": 10, "temperature": 0})
        data = json.loads(body)
        assert status == 200 and ctype == "application/json"
        assert data["object"] == "text_completion"
        choice = data["choices"][0]
        assert choice["text"] == expected.text
        assert data["usage"]["prompt_tokens"] == len(expected.prompt_ids)
        assert data["usage"]["completion_tokens"] == len(expected.token_ids)
        assert choice["finish_reason"] == expected.finish_reason

        status, ctype, body = _post(base, "/v1/completions", {
            "model": model, "prompt": ["Hello", "Hi"], "max_tokens": 10, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}})
        assert status == 200 and ctype.startswith("text/event-stream")
        chunks = _sse(body)
        text0 = "".join(c["choices"][0]["text"] for c in chunks
                        if c["choices"] and c["choices"][0]["index"] == 0)
        assert text0 == expected.text
        assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
        assert chunks[-1]["usage"]["prompt_tokens"] == len(expected.prompt_ids) + 3

        status, _, body = _post(base, "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": "Hi there"}],
            "max_tokens": 8, "temperature": 0.7, "seed": 1, "stream": True})
        chunks = _sse(body)
        assert chunks[0]["object"] == "chat.completion.chunk"
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        status, _, body = _post(base, "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": "Hi there"}],
            "max_tokens": 8, "temperature": 0.7, "seed": 1})
        message = json.loads(body)["choices"][0]["message"]
        assert status == 200 and message["role"] == "assistant"
        assert message["content"] == streamed  # same seed, same text, streamed or not

        for body, code, needle in [
            ({"model": "gpt-4", "prompt": "x"}, 404, "not served here"),
            ({"model": model, "prompt": "x", "max_tokens": 10_000}, 400, "maximum context"),
            ({"model": model, "prompt": "x", "temperature": -1}, 400, "temperature"),
            ({"model": model, "prompt": "x", "logprobs": 3}, 400, "logprobs"),
            ({"model": model}, 400, "prompt is required"),
        ]:
            status, _, text = _post(base, "/v1/completions", body)
            assert status == code and needle in json.loads(text)["error"]["message"], text
        status, _, text = _post(base, "/v1/chat/completions", {"model": model, "messages": []})
        assert status == 400 and json.loads(text)["error"]["param"] == "messages"
