"""Pooling from a sentence-transformers directory: ``modules.json``, its Pooling module's
``config.json`` and a following ``Normalize``, read once into a frozen ``Pooling``.

A sentence-transformers checkpoint is a transformers directory (module 0, path ``""``) plus
modules applied to its token states. PipeEdge implements the common ones on the last stage:
Pooling with one of mean / cls / max, optionally followed by Normalize (L2). Anything else
(``mean_sqrt_len_tokens``, ``weightedmean``, ``lasttoken``, several modes at once, Dense, other
modules) is refused with one line naming the file, key and value, so no directory computes
something other than what sentence-transformers would.

Example:
    >>> read_pooling("all-MiniLM-L6-v2")
    Pooling(mode='mean', normalize=True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .hf_config import ConfigError

if TYPE_CHECKING:
    from pipeedge._proto import stage_pb2 as pb

MODULES_FILE = "modules.json"
PoolingMode = Literal["mean", "cls", "max"]
MODES: tuple[PoolingMode, ...] = ("mean", "cls", "max")
# sentence-transformers' legacy booleans (ST < 6 writes these) -> mode; unset booleans mean false.
_LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean",
                "pooling_mode_lasttoken": "lasttoken"}
_DIMENSION_KEYS = ("embedding_dimension", "word_embedding_dimension")
# Keys of the Pooling config that do not change plain encode(): include_prompt only matters
# when a prompt is passed, which PipeEdge's clients never do.
_IGNORED_KEYS = ("include_prompt",)


@dataclass(frozen=True)
class Pooling:
    """How the last stage turns token states (B, T, H) into one embedding (B, H) per sequence."""

    mode: PoolingMode
    normalize: bool = False  # L2-normalize the pooled embedding (a Normalize module follows)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"pooling mode {self.mode!r} is not implemented; use one of "
                             f"{', '.join(MODES)}")

    def describe(self) -> str:
        """``mean``, ``cls + normalize``: for errors and logs."""
        return self.mode + (" + normalize" if self.normalize else "")


def read_pooling(directory: str | os.PathLike[str], *, hidden_size: int | None = None
                 ) -> Pooling | None:
    """The directory's sentence-transformers pooling; None without modules.json or without a
    Pooling module (the model's own outputs). ConfigError (one line: file, key, value) for a
    module or mode PipeEdge does not implement, or a dimension other than ``hidden_size``."""
    path = Path(directory) / MODULES_FILE
    if not path.is_file():
        return None
    modules = _load(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(f"{path} must be a list of modules ({{idx, name, path, type}})")
    modules = sorted(modules, key=lambda m: int(m.get("idx", 0)))
    pooling: Pooling | None = None
    for i, module in enumerate(modules):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = str(module.get("path", ""))
        if i == 0:
            if kind != "Transformer" or sub:
                raise _refuse(path, f"[{i}].type/path", f"{module.get('type')} at {sub!r}",
                              "module 0 must be the Transformer at the directory itself")
        elif kind == "Pooling" and pooling is None and i == 1:
            pooling = Pooling(_pooling_mode(Path(directory) / sub, hidden_size))
        elif kind == "Normalize" and pooling is not None and not pooling.normalize:
            _check_normalize(Path(directory) / sub)
            pooling = Pooling(pooling.mode, normalize=True)
        else:
            raise _refuse(path, f"[{i}].type", module.get("type"),
                          "supported: Transformer, then Pooling, then optionally Normalize")
    return pooling


def _pooling_mode(folder: Path, hidden_size: int | None) -> PoolingMode:
    path = folder / "config.json"
    config = _load(path) if path.is_file() else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must be a JSON object")
    for key, value in config.items():
        if key not in (*_LEGACY_KEYS, "pooling_mode", *_DIMENSION_KEYS, *_IGNORED_KEYS):
            raise _refuse(path, key, value, "unknown Pooling setting")
    dims = [config[k] for k in _DIMENSION_KEYS if k in config]
    if hidden_size is not None and dims and int(dims[0]) != hidden_size:
        key = next(k for k in _DIMENSION_KEYS if k in config)
        raise _refuse(path, key, dims[0], f"the model's hidden size is {hidden_size}")
    # As sentence-transformers reads it: pooling_mode wins over the legacy booleans; no mode at
    # all means mean.
    if "pooling_mode" in config:
        key, modes = "pooling_mode", config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        on = [k for k in _LEGACY_KEYS if config.get(k)]
        key, modes = (on[0] if len(on) == 1 else "pooling_mode_*"), [_LEGACY_KEYS[k] for k in on]
        modes = modes or ["mean"]
    if len(modes) != 1:
        raise _refuse(path, key, modes, "one mode at a time")
    if modes[0] not in MODES:
        value = config[key] if key in config else modes[0]
        raise _refuse(path, key, value, f"implemented: {', '.join(MODES)}")
    return modes[0]


def _check_normalize(folder: Path) -> None:
    """Normalize of the sentence embedding (its default); token-level Normalize is refused."""
    path = folder / "config.json"
    config = _load(path) if path.is_file() else {}
    for key in ("module_input_name", "module_output_name"):
        value = config.get(key, "sentence_embedding") if isinstance(config, dict) else config
        if value != "sentence_embedding":
            raise _refuse(path, key, value, "only the sentence embedding is normalized")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None


def _refuse(path: Path, key: str, value: Any, supported: str) -> ConfigError:
    return ConfigError(f"{path}: {key}={value!r} is not supported ({supported}); deploy the "
                       "directory without modules.json for its token states, or use another model")


# -- proto twin (AssignRequest.pooling) -------------------------------------------------------------


def to_proto(pooling: Pooling | None) -> pb.Pooling:
    """``stage_pb2.Pooling``; mode NONE for None."""
    from pipeedge._proto import stage_pb2 as pb

    if pooling is None:
        return pb.Pooling()
    return pb.Pooling(mode=pb.Pooling.Mode.Value(pooling.mode.upper()), normalize=pooling.normalize)


def from_proto(message: pb.Pooling) -> Pooling | None:
    """None for an unset message or mode NONE."""
    from pipeedge._proto import stage_pb2 as pb

    if message.mode == pb.Pooling.NONE:
        return None
    name = pb.Pooling.Mode.Name(message.mode).lower()
    if name not in MODES:
        raise ValueError(f"pooling mode {message.mode} is unknown; use MEAN, CLS or MAX")
    return Pooling(name, normalize=message.normalize)
