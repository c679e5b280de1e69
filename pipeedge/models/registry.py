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
from typing import Any

from .family import FamilySpec, Head, family_for_config, family_spec
from .hf_config import ConfigError, DecoderConfig, EncoderConfig, HParams
from .sentence_transformers import Pooling

# Family names (``FamilySpec.name``); the specs live in each family's own file.
Family = str

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
# Heads that pool by themselves when no sentence-transformers pooling is given.
HEAD_POOLING = {"mean-pooling": Pooling("mean", normalize=True)}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


@dataclass(frozen=True)
class ModelInfo:
    """What a shard needs to know about a model: its family, head, config.json as given
    (``config``) and as read (``hp``, typed and checked once by the family's reader), and the
    sentence-transformers pooling of the last shard (``pooling``: from the directory's
    modules.json or the assignment; the ``mean-pooling`` head's own when not given)."""

    name: str
    family: Family
    head: Head
    config: dict[str, Any] = field(hash=False, repr=False)
    pooling: Pooling | None = None
    hp: HParams = field(init=False, compare=False, repr=False)
    num_blocks: int = field(init=False)
    # 4 sub-layers per transformer block, numbered 1..num_layers as in the seed's partitions.
    num_layers: int = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if self.head not in spec.hf_classes:
            raise ConfigError(f"{self.name}: the {self.family} family has no {self.head!r} head; "
                              f"it serves {', '.join(spec.hf_classes)}")
        object.__setattr__(self, "hp", spec.read_config(self.name, self.config))
        if self.pooling is None:
            object.__setattr__(self, "pooling", HEAD_POOLING.get(self.head))
        elif spec.kind != "text-encoder" or self.head == "sequence-classification":
            raise ConfigError(f"{self.name}: sentence-transformers pooling "
                              f"({self.pooling.describe()}) applies to text encoders without a "
                              f"classifier, not a {self.family} {self.head} model")
        object.__setattr__(self, "num_blocks", self.hp.num_layers)
        object.__setattr__(self, "num_layers", 4 * self.num_blocks)

    @property
    def spec(self) -> FamilySpec:
        return family_spec(self.family)

    @property
    def max_positions(self) -> int:
        """Longest sequence the model covers (decoders: prompt + generated); the family's
        reader fills in its own default, so this is the only reading of max_position_embeddings."""
        if isinstance(self.hp, EncoderConfig) and self.is_vision:
            return self.seq_len or 0
        return self.hp.max_positions

    @property
    def hidden_size(self) -> int:
        return self.hp.hidden_size

    @property
    def intermediate_size(self) -> int:
        return self.hp.intermediate_size

    @property
    def num_heads(self) -> int:
        return self.hp.num_heads

    @property
    def layer_norm_eps(self) -> float:
        hp = self.hp
        return hp.norm_eps if isinstance(hp, DecoderConfig) else hp.layer_norm_eps

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in logit order (config.json id2label; LABEL_i where unnamed)."""
        return self.hp.labels

    @property
    def num_labels(self) -> int:
        """Classifier width (2, as in transformers, when the config gives no count or labels)."""
        return self.hp.num_labels

    @property
    def vocab_size(self) -> int:
        return self.hp.vocab_size

    @property
    def prefix(self) -> str:
        """Checkpoint prefix of the backbone (``vit.``, ``deit.``, ``bert.``, ``transformer.`` for
        GPT-2, ``model.`` for Llama); heads have none."""
        return self.spec.prefix

    @property
    def is_decoder(self) -> bool:
        """Decoder-only language model: sessions, KV cache, logits of the last position."""
        return self.spec.kind == "decoder"

    @property
    def is_vision(self) -> bool:
        return self.spec.kind == "vision"

    @property
    def encoder(self) -> EncoderConfig:
        """``hp`` of an encoder (vision or text) family; TypeError for a decoder."""
        if not isinstance(self.hp, EncoderConfig):
            raise TypeError(f"{self.name} is a decoder; it has no encoder hyper-parameters")
        return self.hp

    @property
    def decoder(self) -> DecoderConfig:
        """``hp`` of a decoder family; TypeError for an encoder."""
        if not isinstance(self.hp, DecoderConfig):
            raise TypeError(f"{self.name} is an encoder; it has no decoder hyper-parameters")
        return self.hp

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def num_channels(self) -> int:
        return self.encoder.num_channels

    @property
    def seq_len(self) -> int | None:
        """Tokens of a vision model (patches + cls [+ distillation]); None for text (dynamic)."""
        if not self.is_vision:
            return None
        extra = 2 if self.family == "deit" else 1
        return (self.image_size // self.patch_size) ** 2 + extra


def _config_file(name: str) -> resources.abc.Traversable:
    return resources.files(__package__).joinpath("configs", name.replace("/", "--") + ".json")


def model_info(name: str, config_json: str | None = None, *,
               pooling: Pooling | None = None) -> ModelInfo:
    """Look up a model by its hub name.

    Args:
        name: a name from ``MODEL_NAMES``, or any name when ``config_json`` is given.
        config_json: config.json *text* to use instead of the shipped one (e.g. received from the
            coordinator); for a name outside the table its ``architectures`` pick family and head.
        pooling: sentence-transformers pooling of the last shard (``read_pooling``,
            ``AssignRequest.pooling``); None = the head's own.

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
        if config_json is not None and (config.get("architectures") or config.get("model_type")):
            spec, _ = family_for_config(name, config)
            if spec.name != family:
                raise ConfigError(f"{name} is a {family} model but the config.json given for it "
                                  f"is a {spec.name} model; omit the model name to deploy the "
                                  "directory as it is")
    else:
        spec, head = family_for_config(name, config)
        family = spec.name
    return ModelInfo(name=name, family=family, head=head, config=config, pooling=pooling)
