"""Pooling from a sentence-transformers directory (modules.json, 1_Pooling/config.json,
2_Normalize): read into a typed value, applied by the last shard, sent to the last stage only,
and equal to sentence-transformers' math on transformers' own hidden states; modes that are not
implemented are refused in one line naming file, key and value."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pipeedge import models
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import HostsFileError, load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.models.checkpoint import config_text
from pipeedge.models.hf_config import ConfigError
from pipeedge.models.sentence_transformers import Pooling, from_proto, read_pooling, to_proto
from pipeedge.partition import parse_partition

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_BERT = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 80}
TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
# (folder, 1_Pooling/config.json, Normalize follows, expected value): both config spellings.
CASES = [
    ("st-mean", {"word_embedding_dimension": 64, "pooling_mode_cls_token": False,
                 "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                 "pooling_mode_mean_sqrt_len_tokens": False}, True, Pooling("mean", True)),
    ("st-cls", {"embedding_dimension": 64, "pooling_mode": "cls", "include_prompt": True},
     False, Pooling("cls")),
    ("st-max", {"word_embedding_dimension": 64, "pooling_mode_max_tokens": True}, False,
     Pooling("max")),
    ("st-max-norm", {"embedding_dimension": 64, "pooling_mode": ["max"]}, True,
     Pooling("max", True)),
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A random BertModel saved by transformers itself (safetensors)."""
    import transformers

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("st-bert") / "bert"
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(str(path))
    return path


def st_layout(root, bert_dir, name, pooling_config, normalize, extra_modules=()):
    """``bert_dir``'s files plus a hand-written sentence-transformers layout."""
    directory = root / name
    directory.mkdir()
    for f in bert_dir.iterdir():
        (directory / f.name).symlink_to(f)
    modules = [TRANSFORMER, {"idx": 1, "name": "1", "path": "1_Pooling",
                             "type": "sentence_transformers.models.Pooling"}]
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    if normalize:  # all-MiniLM-L6-v2 lists 2_Normalize without shipping the (empty) folder
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    modules += [{"idx": len(modules) + i, **m} for i, m in enumerate(extra_modules)]
    (directory / "modules.json").write_text(json.dumps(modules))
    return directory


def st_reference(directory, inputs, pooling_config, normalize):
    """sentence-transformers' math on transformers' hidden states, written out here."""
    import transformers

    model = transformers.BertModel.from_pretrained(str(directory), attn_implementation="eager")
    with torch.no_grad():
        hidden = model.eval()(**inputs).last_hidden_state  # (B, T, H)
    mask = inputs["attention_mask"].unsqueeze(-1)
    mode = pooling_config.get("pooling_mode") or next(
        m for k, m in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                       ("pooling_mode_max_tokens", "max")) if pooling_config.get(k))
    mode = mode[0] if isinstance(mode, list) else mode
    if mode == "mean":
        out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif mode == "cls":
        out = hidden[:, 0]
    else:  # masked positions never win the max
        out = torch.where(mask.bool(), hidden, torch.full_like(hidden, -1e9)).max(1).values
    return torch.nn.functional.normalize(out, p=2, dim=1) if normalize else out


def tiny_inputs():
    info = models.model_info("tiny", json.dumps({"architectures": ["BertModel"], **TINY_BERT}))
    inputs = models.example_inputs(info, 4, seq_len=20, seed=3)
    assert inputs["attention_mask"].min() == 0  # padded rows: the mask matters
    return inputs


@pytest.mark.parametrize(("name", "config", "normalize", "expected"), CASES)
def test_pooling_in_process_matches_sentence_transformers(tmp_path, bert_dir, name, config,
                                                          normalize, expected):
    directory = st_layout(tmp_path, bert_dir, name, config, normalize)
    pooling = read_pooling(directory, hidden_size=64)
    assert pooling == expected and from_proto(to_proto(pooling)) == pooling
    info = models.model_info(name, config_text(directory), pooling=pooling)
    inputs = tiny_inputs()
    tensors = inputs
    for first, last in ((1, 6), (7, info.num_layers)):  # cut inside block 1
        state = models.load_shard_state(info, first, last, directory)
        assert not any("pooler" in k for k in state)  # pooling shards need no pooler
        tensors = models.build_shard(info, first, last, state)(tensors)
    want = st_reference(directory, inputs, config, normalize)
    assert list(tensors) == ["embeddings"] and tensors["embeddings"].shape == (4, 64)
    assert float((tensors["embeddings"] - want).abs().max()) <= 1e-5
    ref = models.build_reference(info, directory)(inputs)["embeddings"]
    assert float((ref - want).abs().max()) <= 1e-5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(2, threads=1, workdir=tmp_path_factory.mktemp("st")) as c:
        yield c


def deploy(cluster, partition, **hosts):
    dep = load_deployment(cluster.hosts_file(partition=partition, **hosts))
    ranges = parse_partition(partition, dep.model_info().num_layers)
    stages = [deploy_mod.PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    return dep, stages, deploy_mod.deploy(dep, stages, progress=False).save(
        cluster.workdir / "pipeline.json")


@pytest.mark.parametrize(("case", "weights"), [(0, "push"), (1, "local"), (3, "local")])
def test_deployed_without_model_name_matches_sentence_transformers(cluster, tmp_path, bert_dir,
                                                                   case, weights):
    name, config, normalize, expected = CASES[case]
    directory = st_layout(tmp_path, bert_dir, name, config, normalize)
    dep, stages, pipeline_file = deploy(cluster, "1,3,4,8", model=None,
                                        weights=f"{weights}:{directory}")
    assert dep.pooling == expected
    # Only the last stage pools.
    first = deploy_mod.assign_request(dep, stages[0], stages[1].host.address,
                                      dep.weights.to_proto())
    last = deploy_mod.assign_request(dep, stages[1], "", dep.weights.to_proto())
    assert not first.HasField("pooling") and from_proto(last.pooling) == expected
    inputs = tiny_inputs()
    with PipelineClient(pipeline_file=pipeline_file) as client:
        got = client.infer(inputs)["embeddings"]
    want = st_reference(directory, inputs, config, normalize)
    assert got.shape == (4, 64) and float((got - want).abs().max()) <= 1e-5


def test_minilm_directory_without_model_name_equals_registry_name(cluster, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    texts = ["A man is eating food.", "PipeEdge splits transformers across edge devices."]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    out = {}
    for model in (None, MINILM):
        dep, _, pipeline_file = deploy(cluster, "1,10,11,24", model=model,
                                       weights=f"local:{minilm_path}")
        assert dep.pooling == Pooling("mean", normalize=True)
        with PipelineClient(pipeline_file=pipeline_file) as client:
            out[model] = client.infer(batch)["embeddings"]
    assert out[None].shape == (2, 384)
    assert float((out[None] - out[MINILM]).abs().max()) <= 1e-5
    # The registry MiniLM without a directory keeps its own mean + normalize head.
    assert models.model_info(MINILM).pooling == Pooling("mean", normalize=True)


@pytest.mark.parametrize(("config", "extra", "key", "value"), [
    ({"pooling_mode_mean_sqrt_len_tokens": True}, (), "pooling_mode_mean_sqrt_len_tokens",
     "True"),
    ({"pooling_mode": "weightedmean"}, (), "pooling_mode", "'weightedmean'"),
    ({"pooling_mode": "lasttoken"}, (), "pooling_mode", "'lasttoken'"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, (), "pooling_mode_*",
     "['max', 'mean']"),
    ({"pooling_mode": "mean"}, ({"name": "2", "path": "2_Dense",
                                 "type": "sentence_transformers.models.Dense"},),
     "[2].type", "'sentence_transformers.models.Dense'"),
])
def test_unimplemented_pooling_is_refused_in_one_line(tmp_path, bert_dir, config, extra, key,
                                                      value):
    directory = st_layout(tmp_path, bert_dir, "refused", config, False, extra)
    with pytest.raises(ConfigError) as e:
        read_pooling(directory)
    msg = str(e.value)
    assert "\n" not in msg and f"{key}={value}" in msg and "is not supported" in msg
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(f"weights: local:{directory}\nhosts:\n  - {{address: '127.0.0.1:1'}}\n")
    with pytest.raises(HostsFileError, match="is not supported"):
        load_deployment(hosts)


def test_registry_name_whose_pooling_differs_is_refused(tmp_path, minilm_path):
    directory = tmp_path / "minilm-cls"
    directory.mkdir()
    for f in ("config.json", "model.safetensors"):
        (directory / f).symlink_to(Path(minilm_path) / f)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode": "cls"}')
    (directory / "modules.json").write_text(json.dumps([TRANSFORMER, {
        "idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(f"model: {MINILM}\nweights: local:{directory}\n"
                     "hosts:\n  - {address: '127.0.0.1:1'}\n")
    with pytest.raises(HostsFileError, match=f"pools cls but {MINILM} has mean"):
        load_deployment(hosts)
    hosts.write_text(f"weights: local:{directory}\nhosts:\n  - {{address: '127.0.0.1:1'}}\n")
    assert load_deployment(hosts).pooling == Pooling("cls")  # without model: the directory decides


def test_onnx_last_stage_pools_like_torch_and_keys_the_cache_by_pooling(tmp_path):
    pytest.importorskip("onnxruntime")
    from pipeedge._proto import stage_pb2 as pb
    from pipeedge.stage_server.backends import load_backend

    info = models.model_info("pipeedge/tiny-bert")
    first, last = 5, info.num_layers
    state = models.load_shard_state(info, first, last, 0)
    x = models.example_inputs(info, 3, seq_len=11, seed=1)
    x = models.build_shard(info, 1, first - 1, models.load_shard_state(info, 1, first - 1, 0))(x)
    stems = set()
    for pooling in (Pooling("cls"), Pooling("max", normalize=True)):
        req = pb.AssignRequest(model_name=info.name, first_layer=first, last_layer=last,
                               threads=1, weights=pb.WeightSource(random_seed=0),
                               pooling=to_proto(pooling))
        torch_out = load_backend(req, state).run(x)["embeddings"]
        req.backend = pb.ONNX
        onnx = load_backend(req, state, cache_dir=tmp_path)
        stems.add(onnx.key.stem)
        assert float((onnx.run(x)["embeddings"] - torch_out).abs().max()) <= 1e-4
    assert {s.rsplit(".", 1)[1] for s in stems} == {"cls", "max-norm"}
