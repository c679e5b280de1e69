"""Supported models: their family, head and shipped Hugging Face config.

The configs live in ``configs/`` inside this package (``/`` in a name becomes ``--``), so nothing is
downloaded to learn a model's shape. ``google/vit-huge-patch14-224-in21k`` is served like the seed
serves it: with the 21843-class ImageNet-21k head of Google's ``ViT-H_14.npz`` (the hub
checkpoint of that name is a headless ``ViTModel``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

Family = Literal["vit", "deit", "bert", "gpt2", "llama"]
Head = Literal["image-classification", "sequence-classification", "base", "mean-pooling", "causal-lm"]

# Decoder-only (autoregressive) families: shards keep a per-session KV cache (see ``decoder.py``).
DECODER_FAMILIES: tuple[str, ...] = ("gpt2", "llama")
# Checkpoint prefix of the backbone where it is not ``<family>.``.
_PREFIXES = {"gpt2": "transformer.", "llama": "model."}

# name -> (family, head). DeiT here always means the *distilled* variant (cls + distillation token).
_MODELS: dict[str, tuple[Family, Head]] = {
    "google/vit-base-patch16-224": ("vit", "image-classification"),
    "google/vit-large-patch16-224": ("vit", "image-classification"),
    "google/vit-huge-patch14-224-in21k": ("vit", "image-classification"),
    "facebook/deit-base-distilled-patch16-224": ("deit", "image-classification"),
    "facebook/deit-small-distilled-patch16-224": ("deit", "image-classification"),
    "facebook/deit-tiny-distilled-patch16-224": ("deit", "image-classification"),
    "bert-base-uncased": ("bert", "base"),
    "bert-large-uncased": ("bert", "base"),
    "textattack/bert-base-uncased-CoLA": ("bert", "sequence-classification"),
    "sentence-transformers/all-MiniLM-L6-v2": ("bert", "mean-pooling"),
    # Small random-weight models for fast mechanical tests.
    "pipeedge/tiny-vit": ("vit", "image-classification"),
    "pipeedge/tiny-deit": ("deit", "image-classification"),
    "pipeedge/tiny-bert": ("bert", "base"),
    # Decoder-only models (text generation).
    "gpt2": ("gpt2", "causal-lm"),
    "gpt2-medium": ("gpt2", "causal-lm"),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": ("llama", "causal-lm"),
    "pipeedge/tiny-gpt2": ("gpt2", "causal-lm"),
    "pipeedge/tiny-llama": ("llama", "causal-lm"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

# Architectures named in a config.json, for models outside the table that bring their own config.
_ARCHITECTURES: dict[str, tuple[Family, Head]] = {
    "ViTForImageClassification": ("vit", "image-classification"),
    "DeiTForImageClassificationWithTeacher": ("deit", "image-classification"),
    "BertModel": ("bert", "base"),
    "BertForSequenceClassification": ("bert", "sequence-classification"),
    "GPT2LMHeadModel": ("gpt2", "causal-lm"),
    "LlamaForCausalLM": ("llama", "causal-lm"),
}

_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class ModelInfo:
    """What a shard needs to know about a model: its layout and its config.json contents."""

    name: str
    family: Family
    head: Head
    config: dict[str, Any] = field(hash=False, repr=False)
    num_blocks: int = field(init=False)
    # 4 sub-layers per transformer block, numbered 1..num_layers as in the seed's partitions.
    num_layers: int = field(init=False)

    def __post_init__(self) -> None:
        missing = [k for k in _REQUIRED_KEYS if k not in self.config]
        if missing:
            raise ValueError(f"config of {self.name} lacks {missing}; pass a complete config.json")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"config of {self.name}: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_heads}"
            )
        object.__setattr__(self, "num_blocks", int(self.config["num_hidden_layers"]))
        object.__setattr__(self, "num_layers", 4 * self.num_blocks)

    @property
    def max_positions(self) -> int:
        """Longest sequence the position embeddings cover (decoders: prompt + generated)."""
        return int(self.config.get("max_position_embeddings", 2048))

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def intermediate_size(self) -> int:
        return int(self.config["intermediate_size"])

    @property
    def num_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def layer_norm_eps(self) -> float:
        return float(self.config.get("layer_norm_eps", 1e-12))

    @property
    def num_labels(self) -> int:
        """Classifier width (2, as in transformers, when the config gives no count or labels)."""
        if "num_labels" in self.config:
            return int(self.config["num_labels"])
        if "id2label" in self.config:
            return len(self.config["id2label"])
        return 2

    @property
    def prefix(self) -> str:
        """Checkpoint prefix of the backbone (``vit.``, ``deit.``, ``bert.``, ``transformer.`` for
        GPT-2, ``model.`` for Llama); heads have none."""
        return _PREFIXES.get(self.family, f"{self.family}.")

    @property
    def is_decoder(self) -> bool:
        """Decoder-only language model: sessions, KV cache, logits of the last position."""
        return self.family in DECODER_FAMILIES

    @property
    def is_vision(self) -> bool:
        return self.family in ("vit", "deit")

    @property
    def image_size(self) -> int:
        return int(self.config.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        return int(self.config.get("patch_size", 16))

    @property
    def num_channels(self) -> int:
        return int(self.config.get("num_channels", 3))

    @property
    def seq_len(self) -> int | None:
        """Tokens of a vision model (patches + cls [+ distillation]); None for text (dynamic)."""
        if not self.is_vision:
            return None
        extra = 2 if self.family == "deit" else 1
        return (self.image_size // self.patch_size) ** 2 + extra


def _config_file(name: str) -> resources.abc.Traversable:
    return resources.files(__package__).joinpath("configs", name.replace("/", "--") + ".json")


def model_info(name: str, config_json: str | None = None) -> ModelInfo:
    """Look up a model by its hub name.

    Args:
        name: a name from ``MODEL_NAMES``, or any name when ``config_json`` is given.
        config_json: config.json *text* to use instead of the shipped one (e.g. received from the
            coordinator); for a name outside the table its ``architectures`` pick family and head.

    Returns:
        The model's ``ModelInfo``.

    Example:
        >>> model_info("google/vit-base-patch16-224").num_layers
        48
    """
    if config_json is not None:
        try:
            config = json.loads(config_json)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"config_json for {name} is not valid JSON ({e}); pass config.json text"
            ) from e
        if not isinstance(config, dict):
            raise ValueError(
                f"config_json for {name} must be a JSON object, got {type(config).__name__}"
            )
    elif name in _MODELS:
        config = json.loads(_config_file(name).read_text(encoding="utf-8"))
    else:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")

    if name in _MODELS:
        family, head = _MODELS[name]
    else:
        archs = [a for a in config.get("architectures") or [] if a in _ARCHITECTURES]
        if not archs:
            raise ValueError(
                f"unknown model {name!r} and its config names no supported architecture "
                f"({', '.join(_ARCHITECTURES)}); known models: {', '.join(MODEL_NAMES)}"
            )
        family, head = _ARCHITECTURES[archs[0]]
    if family == "gpt2":
        config = _gpt2_canonical_keys(config)
    return ModelInfo(name=name, family=family, head=head, config=config)


def _gpt2_canonical_keys(config: dict[str, Any]) -> dict[str, Any]:
    """GPT-2 configs name the core fields n_embd/n_layer/n_head/n_inner (transformers maps them
    through ``GPT2Config.attribute_map``); add the common names beside them, as GPT2Config accepts
    both, so every shard reads ``hidden_size`` etc. the same way."""
    out = dict(config)
    aliases = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
               "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}
    for key, alias in aliases.items():
        if key not in out and alias in out:
            out[key] = out[alias]
    if "intermediate_size" not in out and "hidden_size" in out:
        out["intermediate_size"] = out.get("n_inner") or 4 * int(out["hidden_size"])
    return out
