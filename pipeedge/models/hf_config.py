"""A model's config.json, read once into a typed, frozen value (``EncoderConfig``/``DecoderConfig``).

Each family file has a reader (``FamilySpec.read_config``) that takes the raw config.json and
returns one of these, with every default in that reader and nowhere else. A field the family
cannot honour (an unknown rope type, sliding-window attention, a head the family lacks) is
refused there with ``ConfigError``, naming the field and its value, so a checkpoint that needs
something not implemented fails at deploy time instead of computing something else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeedge.errors import PipeEdgeError


class ConfigError(PipeEdgeError, ValueError):
    """config.json asks for something this family does not implement (one line, names the field)."""


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of an encoder (ViT/DeiT, BERT, RoBERTa, DistilBERT), family-neutral."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    hidden_act: str
    labels: tuple[str, ...]      # id2label in id order: the classifier's width and names
    problem_type: str | None     # single_label_classification, multi_label_..., regression
    # Text encoders (0 for vision).
    vocab_size: int = 0
    max_positions: int = 0
    type_vocab_size: int = 0
    pad_token_id: int = 0
    # Vision encoders (0 for text).
    image_size: int = 0
    patch_size: int = 0
    num_channels: int = 0
    qkv_bias: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding, as transformers' modeling_rope_utils computes it."""

    theta: float
    kind: str = "default"            # default | linear | llama3
    factor: float = 1.0              # linear, llama3
    low_freq_factor: float = 1.0     # llama3
    high_freq_factor: float = 4.0    # llama3
    original_max_positions: int = 0  # llama3: the context the model was pre-trained at


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only LM (GPT-2, Llama, Qwen2, Qwen3, Mistral)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    rope: RopeConfig | None = None   # None: learned absolute positions (GPT-2)
    qkv_bias: bool = False           # bias on q/k/v projections (Qwen2; Llama attention_bias)
    o_bias: bool = False             # bias on the attention output projection
    mlp_bias: bool = False
    qk_norm: bool = False            # RMSNorm of each head's q and k before rope (Qwen3)
    bos_token_id: int | None = None

    # Labels: a decoder has no classifier; kept so every config answers the same questions.
    labels: tuple[str, ...] = ()
    problem_type: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)


HParams = EncoderConfig | DecoderConfig


# -- helpers for the family readers ---------------------------------------------------------------


def refuse(model: str, key: str, value: Any, supported: str) -> ConfigError:
    """The one-line error for an unsupported config.json value."""
    return ConfigError(f"{model}: config.json {key}={value!r} is not supported ({supported}); "
                       "use a checkpoint without it or another model")


def need(model: str, config: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present in config.json; ConfigError naming them if none is."""
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    raise ConfigError(f"{model}: config.json lacks {' / '.join(keys)}; pass the complete "
                      "config.json saved with the checkpoint")


def one_of(model: str, config: Mapping[str, Any], key: str, default: Any,
           allowed: Iterable[Any]) -> Any:
    """config[key] (``default`` when absent or null), refused unless it is in ``allowed``."""
    value = config.get(key)
    value = default if value is None else value
    allowed = tuple(allowed)
    if value not in allowed:
        raise refuse(model, key, value, "supported: " + ", ".join(repr(a) for a in allowed))
    return value


def labels_of(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Classifier labels in id order. transformers sizes a head by ``num_labels`` (written or
    implied by ``id2label``; 2 when neither is given) and names ids LABEL_i where unnamed."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    count = config.get("num_labels")
    count = int(count) if count is not None else (len(id2label) if id2label else 2)
    return tuple(id2label.get(i, f"LABEL_{i}") for i in range(count))


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def encoder_fields(model: str, c: Mapping[str, Any],
                   activations: Iterable[str]) -> dict[str, Any]:
    """The EncoderConfig fields every encoder family reads alike (BertConfig/ViTConfig names and
    defaults): shapes, norm epsilon, activation and the classifier's labels."""
    hidden, heads = int(c.get("hidden_size", 768)), int(c.get("num_attention_heads", 12))
    check_heads(model, hidden, heads)
    one_of(model, c, "problem_type", PROBLEM_TYPES[0], PROBLEM_TYPES)
    return {"hidden_size": hidden, "num_layers": int(c.get("num_hidden_layers", 12)),
            "num_heads": heads, "intermediate_size": int(c.get("intermediate_size", 3072)),
            "layer_norm_eps": float(c.get("layer_norm_eps", 1e-12)),
            "hidden_act": one_of(model, c, "hidden_act", "gelu", activations),
            "labels": labels_of(c), "problem_type": c.get("problem_type")}


def check_heads(model: str, hidden: int, heads: int) -> None:
    if heads < 1 or hidden % heads:
        raise ConfigError(f"{model}: config.json hidden size {hidden} is not a multiple of "
                          f"{heads} attention heads; pass a consistent config.json")
