"""Bring your own checkpoint: a directory saved by transformers is deployed with its own
config.json (no registry name), on real stage processes, and answers like transformers on the
same directory; a registry name whose shipped config disagrees is refused, naming the fields."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pipeedge import models
from pipeedge.client import PipelineClient, TextGenerator
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import HostsFileError, load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.partition import parse_partition
from pipeedge.pipeline_file import Pipeline

NEW_TOKENS = 32
# Same shapes as pipeedge/tiny-llama; only hyper-parameters differ from its shipped config.
TINY_LLAMA = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 160,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 0, "tie_word_embeddings": False, "initializer_range": 0.2}


def save_llama(path, **overrides):
    """A random LlamaForCausalLM built and saved by transformers itself (safetensors)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def deploy(cluster, partition, **hosts):
    dep = load_deployment(cluster.hosts_file(partition=partition, **hosts))
    ranges = parse_partition(partition, dep.model_info().num_layers)
    stages = [deploy_mod.PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    pipeline = deploy_mod.deploy(dep, stages, progress=False)
    return dep, pipeline.save(cluster.workdir / "pipeline.json")


def hf_greedy(hf_dir, prompt, new_tokens):
    import transformers

    # float32 as the stages compute (transformers 5 would otherwise keep a bf16 file in bf16).
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), attn_implementation="eager", dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), [row[0] for row in out.logits]


def generate(dep, pipeline_file, prompt_text="The pipeline says: "):
    with TextGenerator(pipeline_file=pipeline_file, model=dep.model,
                       model_config_json=dep.model_config_json or None) as gen:
        prompt = gen.encode_prompt(prompt_text)
        events = list(gen.generate(prompt, max_new_tokens=NEW_TOKENS, stop_token_ids=(),
                                   return_logits=True))
    return prompt, events


def assert_same_as_transformers(hf_dir, prompt, events):
    want_tokens, want_logits = hf_greedy(hf_dir, prompt, NEW_TOKENS)
    assert [e.token_id for e in events] == want_tokens
    diff = max(float((e.logits - w).abs().max()) for e, w in zip(events, want_logits))
    assert diff <= 1e-4, diff
    assert len(set(want_tokens)) > 3  # not a degenerate repeat of one token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, threads=1, workdir=tmp_path_factory.mktemp("byo")) as c:
        yield c


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("llama-rope"), rope_theta=500000.0,
                      rms_norm_eps=1e-6)


@pytest.mark.parametrize(("partition", "weights"), [
    ("1,3,4,9,10,12", "local"),   # 3 stages, cuts after MLP-in and after attention
    ("1,6,7,12", "push"),         # 2 stages, cut inside block 1 (after attention output)
])
def test_directory_without_model_name_matches_transformers(cluster, llama_dir, partition,
                                                            weights):
    dep, pipeline_file = deploy(cluster, partition, model=None, weights=f"{weights}:{llama_dir}")
    text = (llama_dir / "config.json").read_text()
    assert dep.model == llama_dir.name and dep.model_config_json == text
    info = Pipeline.load(pipeline_file).model_info()  # the client reads the same config
    assert (info.hp.rope.theta, info.hp.norm_eps) == (500000.0, 1e-6)
    prompt, events = generate(dep, pipeline_file)
    assert_same_as_transformers(llama_dir, prompt, events)


def test_registry_name_with_a_disagreeing_directory_is_refused(tmp_path, llama_dir):
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(f"model: pipeedge/tiny-llama\nweights: local:{llama_dir}\n"
                     "hosts:\n  - {address: '127.0.0.1:1'}\n")
    with pytest.raises(HostsFileError) as e:
        load_deployment(hosts)
    msg = str(e.value)
    assert "\n" not in msg and "disagrees with pipeedge/tiny-llama" in msg
    assert "rope.theta (10000.0 vs 500000.0)" in msg and "norm_eps (1e-05 vs 1e-06)" in msg
    assert "omit model:" in msg


def test_unsupported_config_is_refused_at_load(tmp_path):
    import transformers

    config = transformers.LlamaConfig(**TINY_LLAMA, rope_parameters={"rope_type": "yarn",
                                                                     "rope_theta": 1e4,
                                                                     "factor": 4.0})
    config.save_pretrained(str(tmp_path / "yarn"))
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(f"weights: push:{tmp_path / 'yarn'}\nhosts:\n  - {{address: 'x:1'}}\n")
    with pytest.raises(HostsFileError, match=r"rope_parameters.rope_type='yarn' is not "
                                             r"supported \(supported: default, linear, llama3\)"):
        load_deployment(hosts)
    cfg = json.loads((tmp_path / "yarn" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "yarn"  # transformers itself wrote it


def save_hf(path, cls_name, cfg_name, dtype=torch.float32, **config):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**config))
    model.to(dtype).save_pretrained(str(path))
    return path


@pytest.mark.parametrize(("cls", "cfg", "extra", "weights", "partition"), [
    ("Qwen2ForCausalLM", "Qwen2Config", {"tie_word_embeddings": True}, "push", "1,5,6,12"),
    ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 24}, "local", "1,1,2,7,8,12"),
])
def test_new_decoder_families_from_bf16_directories(cluster, tmp_path, cls, cfg, extra, weights,
                                                    partition):
    config = TINY_LLAMA | extra
    directory = save_hf(tmp_path / cls, cls, cfg, torch.bfloat16, **config)
    dep, pipeline_file = deploy(cluster, partition, model=None,
                                weights=f"{weights}:{directory}")
    assert dep.model_info().spec.hf_classes["causal-lm"] == cls
    prompt, events = generate(dep, pipeline_file)
    assert_same_as_transformers(directory, prompt, events)


@pytest.mark.parametrize(("cls", "cfg", "shapes", "dtype", "weights", "partition"), [
    ("RobertaForSequenceClassification", "RobertaConfig",
     {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4}, torch.float32, "push", "1,2,3,6,7,8"),
    ("DistilBertForSequenceClassification", "DistilBertConfig",  # 2 stages, cut after MLP-in
     {"dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4}, torch.bfloat16, "local",
     "1,3,4,8"),
])
def test_text_classifier_with_three_labels(cluster, tmp_path, cls, cfg, shapes, dtype, weights,
                                           partition):
    directory = save_hf(tmp_path / cls, cls, cfg, dtype, vocab_size=300,
                        max_position_embeddings=80, **shapes,
                        id2label={0: "negative", 1: "neutral", 2: "positive"})
    _, pipeline_file = deploy(cluster, partition, model=None, weights=f"{weights}:{directory}")
    info = Pipeline.load(pipeline_file).model_info()
    assert info.labels == ("negative", "neutral", "positive")
    inputs = models.example_inputs(info, 4, seq_len=24, seed=2)
    with PipelineClient(pipeline_file=pipeline_file) as client:
        got = client.infer(inputs)["logits"]
    want = models.build_reference(info, directory)(inputs)["logits"]
    assert got.shape == (4, 3) and (got - want).abs().max() <= 1e-5
