"""``FamilySpec``: everything PipeEdge knows about one model family, registered once.

Each family's own file (``vit.py``, ``bert.py``, ``llama.py``, ...) ends with one ``register``
call: its config reader, shard class, checkpoint prefix, transformers classes and the
``architectures``/``model_type`` names that select it. The registry, shard builder, weight loader
and transformers reference all read this instead of keeping tables of their own, so adding a
family is one new file plus its name in ``_FAMILY_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .hf_config import ConfigError, HParams

if TYPE_CHECKING:  # shard imports torch; families register lazily
    from .shard import ShardModule

Head = Literal["image-classification", "sequence-classification", "base", "mean-pooling",
               "causal-lm"]
Kind = Literal["vision", "text-encoder", "decoder"]

# Modules that register a family when imported (lazily: they import torch and the shard code).
_FAMILY_MODULES = ("vit", "bert", "roberta", "distilbert", "gpt2", "llama", "qwen2", "qwen3",
                   "mistral")


@dataclass(frozen=True)
class FamilySpec:
    name: str                                   # "llama"; ModelInfo.family
    kind: Kind
    read_config: Callable[[str, Mapping[str, Any]], HParams]  # (model name, config.json) -> typed
    shard_class: type[ShardModule]
    prefix: str                                 # backbone's checkpoint prefix, e.g. "model."
    # transformers class for each head this family serves (reference, write_hf_directory).
    hf_classes: Mapping[str, str]
    # config.json ``architectures`` entries -> the head they mean.
    architectures: Mapping[str, Head]
    model_types: tuple[str, ...]                # config.json ``model_type`` values
    default_head: Head                          # head for a config naming only a model_type
    embedding: str = ""                         # decoders: input embedding a tied head shares
    # Image models: the preprocessor_config.json a directory without one is read with
    # (``preprocessing.image_preprocessing``), as a function of the model (its input size).
    preprocessor: Callable[[Any], Mapping[str, Any]] | None = None

    @property
    def backbone_attr(self) -> str:
        """Attribute of the shard module holding the backbone (the prefix without its dot)."""
        return self.prefix.rstrip(".")


_SPECS: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    """Called once at the bottom of each family's file."""
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise RuntimeError(f"model family {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


_loaded = False


def _load_all() -> dict[str, FamilySpec]:
    # A flag, not a count of specs: some files register several families (vit/deit, roberta/
    # xlm-roberta), so a count could be reached before every file was imported.
    global _loaded
    if not _loaded:
        for mod in _FAMILY_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True
    return _SPECS


def family_spec(name: str) -> FamilySpec:
    specs = _load_all()
    if name not in specs:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(specs))}")
    return specs[name]


def all_families() -> list[FamilySpec]:
    return list(_load_all().values())


def supported_architectures() -> list[str]:
    return sorted(a for s in all_families() for a in s.architectures)


def family_for_config(model: str, config: Mapping[str, Any]) -> tuple[FamilySpec, Head]:
    """(family, head) a config.json selects: its first known ``architectures`` entry, else its
    ``model_type`` with the family's default head. ConfigError (naming what it found and what is
    supported) when neither is known."""
    archs = list(config.get("architectures") or [])
    for spec in all_families():
        for arch in archs:
            if arch in spec.architectures:
                return spec, spec.architectures[arch]
    model_type = config.get("model_type")
    if not archs:
        for spec in all_families():
            if model_type in spec.model_types:
                return spec, spec.default_head
    found = f"architectures={archs}" if archs else f"model_type={model_type!r}"
    raise ConfigError(f"{model}: config.json {found} is not a supported architecture; "
                      f"supported: {', '.join(supported_architectures())}")
