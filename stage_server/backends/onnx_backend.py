"""ONNX Runtime shard backend: the shard exported to ONNX once, then run by onnxruntime on the CPU.

The export is cached on the device (see ``pipeedge.models.onnx_cache``), keyed by model, weights (and their
``weights_dtype``: float32, float16 or int8, ``pipeedge.models.onnx_weights``), layer range and
opset, so a restarted stage loads the file instead of exporting again. Frames are validated
against the same ``input_spec`` as the torch backend and outputs carry the same names and dtypes
(float32), so torch and onnx stages mix freely in one pipeline.

Settings (environment of ``pipeedge-stage``):

- ``AssignRequest.threads`` (else ``pipeedge-stage --threads``; 0 = onnxruntime's default, one
  per core): intra-op threads of the session.
- ``PIPEEDGE_ORT_OPT_LEVEL``: graph optimization level, ``disable``, ``basic``, ``extended`` or
  ``all`` (default ``all``).
- ``PIPEEDGE_ORT_SPIN``: ``1`` lets idle intra-op threads spin (lowest latency on an otherwise
  idle device), ``0`` (default) makes them sleep, leaving the cores to the stage's receive and
  send threads and to other processes.
- ``PIPEEDGE_ONNX_OPSET``: opset to export with (default 17); part of the cache key, so files
  built by ``pipeedge-coord export-onnx --opset N`` are found only with the same N.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.models import weights_dtype
from pipeedge.models.onnx_cache import OnnxCache, shard_key, weights_id
from pipeedge.models.onnx_export import DEFAULT_OPSET, OUTPUT_PREFIX, export_shard
from pipeedge.stage_server.backends.base import ShardBackend
from pipeedge.stage_server.shard_loader import assignment_info

if TYPE_CHECKING:  # onnxruntime ships no type information: these read as Any
    import onnxruntime as ort

log = logging.getLogger(__name__)

_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtSettings:
    """How this stage runs onnxruntime; from the assignment and the environment."""

    threads: int = 0
    opt_level: str = "all"
    spin: bool = False
    opset: int = DEFAULT_OPSET

    @classmethod
    def from_env(cls, threads: int = 0, env: Mapping[str, str] | None = None) -> OrtSettings:
        env = os.environ if env is None else env
        level = env.get("PIPEEDGE_ORT_OPT_LEVEL", "all").strip().lower()
        if level not in _OPT_LEVELS:
            raise ValueError(f"PIPEEDGE_ORT_OPT_LEVEL={level!r} is unknown; use one of "
                             f"{', '.join(_OPT_LEVELS)}")
        spin = env.get("PIPEEDGE_ORT_SPIN", "0").strip()
        if spin not in ("0", "1"):
            raise ValueError(f"PIPEEDGE_ORT_SPIN={spin!r} is invalid; use 0 or 1")
        opset = env.get("PIPEEDGE_ONNX_OPSET", str(DEFAULT_OPSET)).strip()
        if not opset.isdigit():
            raise ValueError(f"PIPEEDGE_ONNX_OPSET={opset!r} is not a number; use e.g. 17")
        return cls(threads=threads, opt_level=level, spin=spin == "1", opset=int(opset))

    def session_options(self) -> ort.SessionOptions:
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.opt_level]
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return so


class OnnxShardBackend(ShardBackend):
    """``cache_dir`` is the stage's cache root (exports go to its ``onnx/``); None = the default
    ``~/.cache/pipeedge/onnx``."""

    def __init__(self, assignment: pb.AssignRequest, state: Mapping[str, torch.Tensor],
                 cache_dir: Path | None = None, *, settings: OrtSettings | None = None) -> None:
        _require_runtime()
        info = assignment_info(assignment)
        what = f"{info.name} layers {assignment.first_layer}-{assignment.last_layer}"
        if assignment.dtype not in (pb.DTYPE_UNSPECIFIED, pb.FLOAT32):
            raise ValueError(f"backend onnx takes and gives {what} in float32 only; set dtype: "
                             "float32 (weights_dtype: float16 or int8 for smaller weights) or "
                             "backend: torch")
        if (assignment.device or "cpu") != "cpu":
            raise ValueError(f"backend onnx runs {what} on the CPU only, not "
                             f"{assignment.device}; set device: cpu or backend: torch")
        self.weights_dtype = weights_dtype.check(weights_dtype.from_assignment(assignment),
                                                 "onnx", where=what)
        self.settings = settings or OrtSettings.from_env(threads=assignment.threads)
        # The structure only: a cached export needs no weights read (a device sized for int8
        # never holds the float32 shard); `_open` builds the real one to export.
        structure = models.shard_structure(info, assignment.first_layer, assignment.last_layer)
        self.parameter_bytes = models.parameter_bytes(structure)
        self._spec = structure.input_spec()
        self._order = tuple(s.name for s in structure.output_spec())
        self._max_tokens = info.max_positions if structure.is_first and not info.is_vision else 0
        self.key = shard_key(info, assignment.first_layer, assignment.last_layer,
                             weights=weights_id(assignment.weights, state),
                             opset=self.settings.opset,
                             weights_dtype=weights_dtype.from_assignment(assignment))
        self.cache = OnnxCache(cache_dir / "onnx" if cache_dir else None)
        self.cache_hit = True
        self.export_seconds = 0.0
        start = time.perf_counter()
        self.session = self._open(lambda: models.build_shard(
            info, assignment.first_layer, assignment.last_layer, state))
        self.load_seconds = time.perf_counter() - start - self.export_seconds  # session only
        if self.weights_dtype != "float32":  # as stored: the converted file's initializers
            self.parameter_bytes = self.cache.entry_bytes(self.key)
        graph_in = {i.name for i in self.session.get_inputs()}
        self._inputs = tuple(s for s in self._spec if s.name in graph_in)
        self._outputs = tuple(o.name for o in self.session.get_outputs())
        log.info("onnx %s: %s (export %.2fs, load %.2fs, %s threads, opt %s)", what,
                 "from cache" if self.cache_hit else "exported", self.export_seconds,
                 self.load_seconds, self.settings.threads or "default", self.settings.opt_level)

    def _open(self, build: Callable[[], models.ShardModule]) -> ort.InferenceSession:
        """The cached export's session; else `build()` the shard, export it and cache that."""
        path = self.cache.lookup(self.key)
        if path is not None:
            try:
                return self._session(path)
            except Exception as exc:  # noqa: BLE001 - hashes fine, yet onnxruntime rejects it
                log.warning("cached ONNX %s does not load (%s); exporting again", self.key.stem,
                            " ".join(str(exc).split())[:200])
                self.cache.discard(self.key)
        self.cache_hit = False
        start = time.perf_counter()
        shard = build()
        path = self.cache.store(self.key, functools.partial(
            export_shard, shard, opset=self.settings.opset, weights_dtype=self.weights_dtype))
        del shard  # the session holds its own copy of the weights
        self.export_seconds = time.perf_counter() - start
        try:
            return self._session(path)
        except Exception as exc:
            self.cache.discard(self.key)
            raise ValueError(f"onnxruntime cannot load the export of {self.key.describe()}: "
                             f"{' '.join(str(exc).split())[:300]}; use backend torch") from exc

    def _session(self, path: Path) -> ort.InferenceSession:
        import onnxruntime as ort

        return ort.InferenceSession(str(path), sess_options=self.settings.session_options(),
                                    providers=["CPUExecutionProvider"])

    def validate(self, tensors: Mapping[str, torch.Tensor]) -> None:
        models.validate_inputs(self._spec, tensors)

    def run(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._max_tokens and tensors["input_ids"].shape[1] > self._max_tokens:
            # What the torch shard's embeddings raise; the graph would fail less clearly.
            raise ValueError(f"input_ids has {tensors['input_ids'].shape[1]} tokens but the "
                             f"model has {self._max_tokens} positions; truncate the input")
        feeds = {s.name: _array(tensors[s.name] if s.name in tensors
                                else _zeros(s, tensors)) for s in self._inputs}
        values = self.session.run(self._outputs, feeds)
        computed = {n[len(OUTPUT_PREFIX):]: torch.from_numpy(v)
                    for n, v in zip(self._outputs, values)}
        return {n: computed[n] if n in computed else tensors[n] for n in self._order}

    def close(self) -> None:
        self.session = None


def _require_runtime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"backend onnx needs onnx and onnxruntime on this device ({exc}); "
                         "pip install 'pipeedge[onnx]' or use backend torch") from None


def _array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (no copy when it is already contiguous and float32/int64)."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()  # as the torch shard casts floats to its compute dtype
    return t.contiguous().numpy()


def _zeros(spec: models.TensorSpec, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An optional input left out (BERT token_type_ids): zeros, as the torch shard uses."""
    like = next(iter(tensors.values()))
    return torch.zeros(tuple(like.shape[: len(spec.shape)]), dtype=spec.dtype)
