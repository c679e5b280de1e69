"""Every supported family and config variant against transformers itself, in process: a small
random model built and saved by transformers (safetensors; bf16 where real checkpoints are),
read back as PipeEdge shards from the directory alone, with cuts inside blocks.

Encoders: outputs within 1e-5. Decoders: 32 greedy tokens identical (prefill, then one step at a
time through the per-shard KV caches), logits within 1e-4.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pipeedge import models
from pipeedge.models.checkpoint import directory_info, resolve
from pipeedge.models.hf_config import ConfigError

NEW_TOKENS = 32
DECODER = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 160,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
           "pad_token_id": 0, "initializer_range": 0.2}
ENCODER = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 80,
           "initializer_range": 0.2}
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "initializer_range": 0.2}


def save(tmp_path, cls_name, cfg_name, dtype=torch.float32, **config):
    """Build transformers' own ``cls_name`` from ``cfg_name(**config)`` and save_pretrained it."""
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**config))
    with torch.no_grad():  # biases and norms start at 0/1: perturb them so they must map right
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    out = tmp_path / cls_name
    model.to(dtype).save_pretrained(str(out))
    return out


def chain(info, directory, bounds):
    edges = [0, *bounds, info.num_layers]
    return [models.build_shard(info, a + 1, b, models.load_shard_state(info, a + 1, b, directory))
            for a, b in itertools.pairwise(edges)]


def run(shards, tensors, caches=None):
    """Chain the shards as stages do (the last returns only the head's outputs)."""
    with torch.inference_mode():
        for i, s in enumerate(shards):
            tensors = s(tensors, cache=caches[i]) if caches else s(tensors)
    return tensors


def greedy(shards, prompt):
    caches = [s.new_cache() for s in shards]
    ids, tokens, logits = torch.tensor([prompt]), [], []
    for _ in range(NEW_TOKENS):
        row = run(shards, {"input_ids": ids}, caches)["logits"][0]
        logits.append(row)
        tokens.append(int(row.argmax()))
        ids = torch.tensor([[tokens[-1]]])
    return tokens, logits


def assert_decoder_parity(directory, bounds_list):
    import transformers

    info = directory_info(directory)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32).eval()
    prompt = [5, 17, 99, 3, 250, 42, 7]
    out = ref.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                       min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                       pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    want_tokens = out.sequences[0, len(prompt):].tolist()
    assert len(set(want_tokens)) > 3  # a real sequence, not one token repeated
    for bounds in bounds_list:
        tokens, logits = greedy(chain(info, directory, bounds), prompt)
        assert tokens == want_tokens, (directory.name, bounds)
        diff = max(float((g - w[0]).abs().max()) for g, w in zip(logits, out.logits))
        assert diff <= 1e-4, (directory.name, bounds, diff)
    return info


# -- decoders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "cfg", "config", "dtype", "check"), [
    ("LlamaForCausalLM", "LlamaConfig",  # Llama-3.x: llama3 rope scaling, tied head, bf16 file
     {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16},
      "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
     torch.bfloat16, lambda hp: hp.rope.kind == "llama3" and hp.tie_word_embeddings),
    ("LlamaForCausalLM", "LlamaConfig",  # linear rope, untied, attention + mlp biases
     {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
      "tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True},
     torch.float32, lambda hp: hp.qkv_bias and hp.o_bias and hp.mlp_bias),
    ("Qwen2ForCausalLM", "Qwen2Config", {"tie_word_embeddings": True},  # q/k/v bias, no o bias
     torch.bfloat16, lambda hp: hp.qkv_bias and not hp.o_bias),
    ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 24, "tie_word_embeddings": False},  # q/k norm
     torch.float32, lambda hp: hp.qk_norm and hp.head_dim == 24),
    ("MistralForCausalLM", "MistralConfig", {"sliding_window": None},
     torch.float16, lambda hp: not hp.qkv_bias),
    ("MistralForCausalLM", "MistralConfig", {"sliding_window": 4096},  # window > context: full
     torch.float32, lambda hp: hp.max_positions == 256),
])
def test_llama_style_decoders_match_transformers(tmp_path, cls, cfg, config, dtype, check):
    directory = save(tmp_path, cls, cfg, dtype, **DECODER, **config)
    # Cuts after every sub-layer kind: attention (1), attention output (6), MLP-in (3, 11),
    # a whole block (8); 3 and 4 stages.
    info = assert_decoder_parity(directory, [[1, 8], [3, 6, 11]])
    assert check(info.hp)


def test_gpt2_with_more_layers_than_shipped_uses_its_own_config(tmp_path):
    directory = save(tmp_path, "GPT2LMHeadModel", "GPT2Config", vocab_size=320, n_embd=64,
                     n_layer=4, n_head=4, n_positions=128, initializer_range=0.2)
    info = assert_decoder_parity(directory, [[5], [2, 9, 14]])
    assert (info.family, info.num_blocks, info.max_positions) == ("gpt2", 4, 128)
    with pytest.raises(ConfigError, match=r"disagrees with pipeedge/tiny-gpt2 on num_layers "
                                          r"\(3 vs 4\), intermediate_size \(192 vs 256\), "
                                          r"max_positions \(256 vs 128\)"):
        resolve("pipeedge/tiny-gpt2", directory)


@pytest.mark.parametrize(("cfg", "config", "needle"), [
    ("MistralConfig", {"sliding_window": 16}, "sliding_window=16 is not supported"),
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 32, "max_window_layers": 0},
     "sliding_window=32 is not supported"),
    ("LlamaConfig", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4,
                                         "factor": 2.0}},
     "rope_parameters.rope_type='dynamic' is not supported"),
    ("LlamaConfig", {"hidden_act": "relu2"}, "hidden_act='relu2' is not supported"),
    ("LlamaConfig", {"pretraining_tp": 2}, "pretraining_tp=2 is not supported"),
])
def test_unsupported_decoder_configs_are_refused_naming_the_field(tmp_path, cfg, config, needle):
    import transformers

    getattr(transformers, cfg)(**DECODER, **config).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=needle) as e:
        directory_info(tmp_path)
    assert "\n" not in str(e.value)


def test_unsupported_architecture_is_refused(tmp_path):
    import transformers

    transformers.LlamaConfig(**DECODER, architectures=["LlamaForSequenceClassification"]) \
        .save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"architectures=\['LlamaForSequenceClassification'\] "
                                          r"is not a supported architecture; supported: .*"
                                          r"Qwen3ForCausalLM"):
        directory_info(tmp_path)


# -- encoders -------------------------------------------------------------------------------------


def assert_encoder_parity(directory, bounds_list, inputs=None):
    info = directory_info(directory)
    ref = models.build_reference(info, directory)
    inputs = inputs or models.example_inputs(info, 3, seq_len=20, seed=1)
    want = ref(inputs)
    for bounds in bounds_list:
        got = run(chain(info, directory, bounds), dict(inputs))
        assert sorted(got) == sorted(want), bounds
        for k in want:
            assert (got[k] - want[k]).abs().max() <= 1e-5, (directory.name, bounds, k)
            assert want[k].abs().max() > 0.1
    return info


@pytest.mark.parametrize(("cls", "cfg", "config", "head", "labels"), [
    ("RobertaModel", "RobertaConfig", {"type_vocab_size": 1}, "base", 2),
    ("RobertaForSequenceClassification", "RobertaConfig", {"num_labels": 3},
     "sequence-classification", 3),
    ("XLMRobertaModel", "XLMRobertaConfig", {}, "base", 2),
    ("BertForSequenceClassification", "BertConfig",
     {"id2label": {str(i): f"class-{i}" for i in range(10)}}, "sequence-classification", 10),
])
def test_text_encoders_match_transformers(tmp_path, cls, cfg, config, head, labels):
    directory = save(tmp_path, cls, cfg, **ENCODER, **config)
    info = assert_encoder_parity(directory, [[1], [3, 6]])
    assert (info.head, info.num_labels) == (head, labels)
    if "id2label" in config:
        assert info.labels == tuple(f"class-{i}" for i in range(10))


def test_roberta_padding_offsets_positions(tmp_path):
    """A padded row's real tokens embed exactly as the same row unpadded (positions count from
    pad_token_id + 1 over real tokens only, as transformers does)."""
    directory = save(tmp_path, "RobertaModel", "RobertaConfig", **ENCODER)
    info = directory_info(directory)
    shards = chain(info, directory, [2])
    ids = torch.tensor([[0, 50, 60, 70, 2]])
    alone = run(shards, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})["hidden"]
    padded_ids = torch.tensor([[0, 50, 60, 70, 2, 1, 1], [0, 9, 2, 1, 1, 1, 1]])
    mask = (padded_ids != 1).long()
    padded = run(shards, {"input_ids": padded_ids, "attention_mask": mask})["hidden"]
    assert (padded[0, :5] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize(("cls", "cfg", "labels"), [
    ("ViTForImageClassification", "ViTConfig", 3),
    ("DeiTForImageClassificationWithTeacher", "DeiTConfig", 10),
])
def test_vision_heads_with_their_own_labels(tmp_path, cls, cfg, labels):
    directory = save(tmp_path, cls, cfg, **VISION, num_labels=labels)
    info = assert_encoder_parity(directory, [[2], [1, 7]])
    assert info.num_labels == labels and info.labels[0] == "LABEL_0"


# DistilBertConfig spells the shapes dim / n_layers / n_heads / hidden_dim.
DISTILBERT = {"vocab_size": 300, "dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4,
              "max_position_embeddings": 80, "initializer_range": 0.2}


@pytest.mark.parametrize(("cls", "dtype", "config", "head", "outputs"), [
    ("DistilBertModel", torch.float32, {"activation": "relu"}, "base", ["hidden"]),
    ("DistilBertForSequenceClassification", torch.bfloat16,
     {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}, "sequence-classification",
     ["logits"]),
])
def test_distilbert_matches_transformers(tmp_path, cls, dtype, config, head, outputs):
    directory = save(tmp_path, cls, "DistilBertConfig", dtype, **DISTILBERT, **config)
    # Cuts after every sub-layer kind: attention output (2), MLP-in (7) on 3 shards; attention
    # (1), MLP-in (3), a whole block (4) on 4 shards.
    info = assert_encoder_parity(directory, [[2, 7], [1, 3, 4]])
    assert (info.family, info.head, info.num_blocks, info.layer_norm_eps) == \
        ("distilbert", head, 2, 1e-12)
    assert [s.name for s in models.build_shard(info, 8, 8, None).output_spec()] == outputs
    if head == "sequence-classification":
        assert info.labels == ("negative", "neutral", "positive")
    else:
        assert info.hp.hidden_act == "relu"
    first = models.build_shard(info, 1, 1, None)
    assert [s.name for s in first.input_spec()] == ["input_ids", "attention_mask"]  # no types


def test_distilbert_sinusoidal_positions_are_refused(tmp_path):
    import transformers

    transformers.DistilBertConfig(**DISTILBERT, sinusoidal_pos_embds=True) \
        .save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"sinusoidal_pos_embds=True is not supported "
                                          r"\(learned position embeddings only\)") as e:
        directory_info(tmp_path)
    assert "\n" not in str(e.value)
