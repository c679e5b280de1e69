"""On-device cache of exported shards, so a restarted stage does not export again.

An entry is keyed by model (and its config), weights (and their dtype, with the version of its
conversion recipe), layer range and opset. The key lives in the models layer because two sides
compute it: the stage's ONNX backend from its AssignRequest, and `pipeedge-coord export-onnx`
from the deployment, for files copied onto devices ahead of time.
In the cache directory (``<--cache-dir>/onnx``, default ``~/.cache/pipeedge/onnx``) it is:

- ``<key>.onnx``       the shard's graph and, up to 1 GiB, its weights;
- ``<key>.onnx.data``  the weights of larger shards (absent otherwise);
- ``<key>.json``       a manifest with the sha256 of each file, written last.

An entry counts only when its manifest exists and every hash matches, so a truncated copy, a
garbage file or an export that died half-way is noticed and rebuilt. `pipeedge-coord export-onnx`
writes entries in this same layout; copying ``<key>.*`` into a device's cache dir installs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError
from pipeedge.models.onnx_weights import recipe_tag

if TYPE_CHECKING:
    from pipeedge.models.registry import ModelInfo
    from pipeedge.models.sentence_transformers import Pooling

log = logging.getLogger(__name__)

DEFAULT_DIR = Path.home() / ".cache" / "pipeedge" / "onnx"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class OnnxCacheError(PipeEdgeError, ValueError):
    """A cache entry could not be written; the message names the entry and the fix."""


@dataclass(frozen=True)
class ShardKey:
    """What makes two exports interchangeable."""

    model: str
    first_layer: int
    last_layer: int
    weights: str      # from seed_id / pushed_id / state_id
    opset: int
    config: str       # config_id of the model config the shard was built from
    pooling: str = ""  # pooling_id: a sentence-transformers head other than the model's own
    weights_dtype: str = ""  # "" = float32; else onnx_weights.recipe_tag: int8v2, float16, ...

    @property
    def stem(self) -> str:
        """File name without extension, e.g. ``google--vit-base-patch16-224.L1-12.seed0.op17.c1f2e3d4``."""
        model = _UNSAFE.sub("_", self.model.replace("/", "--"))
        return (f"{model}.L{self.first_layer}-{self.last_layer}.{self.weights}."
                f"op{self.opset}.c{self.config}" + (f".{self.pooling}" if self.pooling else "")
                + (f".{self.weights_dtype}" if self.weights_dtype else ""))

    def describe(self) -> str:
        return f"{self.model} layers {self.first_layer}-{self.last_layer}"


def seed_id(seed: int) -> str:
    return f"seed{int(seed)}"


def pushed_id(sha256: str) -> str:
    """Pushed weights are named by the blob's own sha256; no hashing needed."""
    return f"push-{sha256[:16]}"


def state_id(state: Mapping[str, torch.Tensor]) -> str:
    """Digest of a shard's tensors (names, dtypes, shapes, bytes), without copying them."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().data)
    return f"state-{h.hexdigest()[:16]}"


def config_id(config: Mapping[str, Any]) -> str:
    """A custom config.json (AssignRequest.model_config_json) changes the graph, so the key."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def pooling_id(pooling: Pooling | None, head_default: Pooling | None) -> str:
    """``mean``, ``cls-norm``...: the last shard's pooling where it is not the head's own."""
    if pooling is None or pooling == head_default:
        return ""
    return pooling.mode + ("-norm" if pooling.normalize else "")


def weights_id(source: pb.WeightSource, state: Mapping[str, torch.Tensor]) -> str:
    """The weights part of the key: pushed sha256, digest of local tensors, or the seed."""
    kind = source.WhichOneof("source")
    if kind == "pushed_sha256":
        return pushed_id(source.pushed_sha256)
    if kind == "local_path":
        return state_id(state)
    return seed_id(source.random_seed if kind == "random_seed" else 0)


def shard_key(info: ModelInfo, first_layer: int, last_layer: int, *, weights: str, opset: int,
              weights_dtype: str) -> ShardKey:
    """The key of `info`'s layers `first_layer`..`last_layer` exported at `opset`, weights
    named by `weights_id` and stored as `weights_dtype` (float32, float16, int8, int4)."""
    from pipeedge.models.registry import HEAD_POOLING

    last = last_layer == info.num_layers
    return ShardKey(model=info.name, first_layer=first_layer, last_layer=last_layer,
                    weights=weights, opset=opset, config=config_id(info.config),
                    pooling=pooling_id(info.pooling, HEAD_POOLING.get(info.head)) if last else "",
                    weights_dtype=recipe_tag(weights_dtype))


class OnnxCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or DEFAULT_DIR)
        self.root.mkdir(parents=True, exist_ok=True)

    def model_path(self, key: ShardKey) -> Path:
        return self.root / f"{key.stem}.onnx"

    def manifest_path(self, key: ShardKey) -> Path:
        return self.root / f"{key.stem}.json"

    def lookup(self, key: ShardKey) -> Path | None:
        """The entry's model file if it is complete and intact; a damaged entry is removed."""
        manifest = self.manifest_path(key)
        if not manifest.is_file():
            return None
        problem = self._check(manifest)
        if problem:
            log.warning("ONNX cache entry %s is damaged (%s); rebuilding it", key.stem, problem)
            self.discard(key)
            return None
        return self.model_path(key)

    def store(self, key: ShardKey, build: Callable[[Path], object]) -> Path:
        """Build an entry with ``build(model_path)`` in a scratch dir, then move it into place.

        The manifest is moved last, so readers never take a half-written entry for a whole one.
        """
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".build-") as tmp:
            staged = Path(tmp) / f"{key.stem}.onnx"
            build(staged)
            if not staged.is_file():
                raise OnnxCacheError(f"building {key.describe()} wrote no {staged.name}")
            files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
            digests = {p.name: _sha256(p) for p in files}
            manifest = {"key": key.stem, "model": key.model,
                        "layers": [key.first_layer, key.last_layer], "weights": key.weights,
                        "opset": key.opset, "weights_dtype": key.weights_dtype or "float32",
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "files": digests}
            # Replaced in place (atomic per file), never deleted first: another stage process
            # sharing this directory may be opening the same entry right now.
            for p in files:
                os.replace(p, self.root / p.name)
            tmp_manifest = Path(tmp) / "manifest.json"
            tmp_manifest.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp_manifest, self.manifest_path(key))
            stale = self.root / f"{key.stem}.onnx.data"
            if stale.name not in digests:
                stale.unlink(missing_ok=True)
        log.info("cached ONNX %s (%.1f MB)", key.stem, sum(
            (self.root / n).stat().st_size for n in digests) / 1e6)
        return self.model_path(key)

    def entry_bytes(self, key: ShardKey) -> int:
        """Bytes of an entry's model file and its weights file."""
        return sum(p.stat().st_size for p in (self.model_path(key),
                                              self.root / f"{key.stem}.onnx.data") if p.exists())

    def discard(self, key: ShardKey) -> None:
        """Remove an entry (manifest first, so it stops counting before its files go)."""
        self.manifest_path(key).unlink(missing_ok=True)
        for suffix in (".onnx", ".onnx.data"):
            (self.root / f"{key.stem}{suffix}").unlink(missing_ok=True)

    def _check(self, manifest: Path) -> str:
        """Empty when every file the manifest lists is present with its recorded hash."""
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "unreadable manifest"
        if not isinstance(files, dict) or not files:
            return "manifest lists no files"
        for name, digest in files.items():
            path = self.root / name
            if not path.is_file():
                return f"{name} is missing"
            if _sha256(path) != digest:
                return f"{name} does not match its sha256"
        return ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
