"""The directory is the model: what a checkpoint directory saved by transformers describes.

A directory's ``config.json`` picks the family (``architectures`` / ``model_type``), the shapes
and the hyper-parameters. Its exact text is what the coordinator sends every stage
(``AssignRequest.model_config_json``), so stages compute with the checkpoint's own config and
cache keys follow it. A registry name given alongside is only accepted when the directory's
config reads the same as the shipped one; otherwise the fields that differ are named.
A sentence-transformers directory's pooling (``modules.json``) goes to the last stage
(``AssignRequest.pooling``; ``resolve_pooling``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .hf_config import ConfigError
from .registry import MODEL_NAMES, ModelInfo, model_info
from .sentence_transformers import MODULES_FILE, Pooling, read_pooling

CONFIG_FILE = "config.json"


def config_text(directory: str | os.PathLike[str]) -> str:
    """The directory's config.json, as text (sent to stages unchanged)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} has no {CONFIG_FILE}; point weights at a directory saved "
                          "with save_pretrained, or name a shipped model in model:")
    return path.read_text(encoding="utf-8")


def default_name(directory: str | os.PathLike[str]) -> str:
    """A model name for a directory deployed without one: its folder name, unless that is a
    registry name (which would select the registry's family), then its absolute path."""
    path = Path(directory)
    name = path.name or str(path.resolve())
    return str(path.resolve()) if name in MODEL_NAMES else name


def directory_info(directory: str | os.PathLike[str], name: str | None = None) -> ModelInfo:
    """The model a directory holds, read from its config.json (family from the config unless
    ``name`` is a registry name)."""
    return model_info(name or default_name(directory), config_text(directory))


def differences(a: ModelInfo, b: ModelInfo) -> list[str]:
    """'field (a vs b)' for every typed config field (and the family) where ``a`` and ``b``
    differ, e.g. ``['rope.theta (10000.0 vs 500000.0)']``; empty when they compute the same."""
    out = [] if a.family == b.family else [f"family ({a.family} vs {b.family})"]
    if type(a.hp) is not type(b.hp):
        return out or [f"config kind ({type(a.hp).__name__} vs {type(b.hp).__name__})"]
    out += _diff(a.hp, b.hp, "")
    return out


def _diff(x: object, y: object, prefix: str) -> list[str]:
    out = []
    for f in dataclasses.fields(x):  # type: ignore[arg-type]
        u, v = getattr(x, f.name), getattr(y, f.name)
        if dataclasses.is_dataclass(u) and dataclasses.is_dataclass(v):
            out += _diff(u, v, f"{prefix}{f.name}.")
        elif u != v:
            shown = (f"{len(u)} labels", f"{len(v)} labels") if f.name == "labels" and \
                len(u) != len(v) else (u, v)
            out.append(f"{prefix}{f.name} ({shown[0]} vs {shown[1]})")
    return out


def resolve(model: str | None, directory: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(model name, config.json text to send stages; "" = the shipped config) for hosts.yml's
    ``model:`` and a weights directory the coordinator can read (None when it cannot).

    Raises:
        ConfigError: no model and no readable directory; a directory config this family cannot
            serve; or a registry name whose shipped config the directory's disagrees with.
    """
    if directory is None or not (Path(directory) / CONFIG_FILE).is_file():
        if not model:
            where = f"{directory} has no {CONFIG_FILE}" if directory else "weights are not " \
                "a directory"
            raise ConfigError(f"hosts.yml has no model: and {where}; name a model "
                              f"({', '.join(MODEL_NAMES[:3])}, ...) or point weights: local:/"
                              "push: at a directory saved with save_pretrained")
        return model, ""
    text = config_text(directory)
    if not model:
        name = default_name(directory)
        model_info(name, text)  # refuse an unsupported config here, not on the stages
        return name, text
    if model not in MODEL_NAMES:  # a name of the user's choosing: the directory decides
        model_info(model, text)
        return model, text
    diff = differences(model_info(model), model_info(model, text))
    if diff:
        raise ConfigError(f"{Path(directory) / CONFIG_FILE} disagrees with {model} on "
                          f"{', '.join(diff)}; omit model: to deploy the directory as it is")
    return model, text



def resolve_pooling(model: str, config_json: str, directory: str | os.PathLike[str] | None
                    ) -> Pooling | None:
    """The sentence-transformers pooling a deployment of ``model`` (as ``resolve`` returned it)
    applies on its last stage: the directory's modules.json, checked against the model.

    Raises:
        ConfigError: a module or mode not implemented (``read_pooling``); pooling on a model
            that cannot pool (vision, decoders, classifiers); or a registry name whose own
            pooling (all-MiniLM-L6-v2: mean + normalize; others: none) the directory's differs
            from.
    """
    if directory is None:
        return None
    info = model_info(model, config_json or None)
    pooling = read_pooling(directory, hidden_size=info.hidden_size)
    if pooling is None:
        return None
    if model in MODEL_NAMES and pooling != info.pooling:
        has = info.pooling.describe() if info.pooling else "no pooling"
        raise ConfigError(f"{Path(directory) / MODULES_FILE} pools {pooling.describe()} but "
                          f"{model} has {has}; omit model: to deploy the directory as it is")
    model_info(model, config_json or None, pooling=pooling)  # refuses models that cannot pool
    return pooling
