"""Build the onnx stages' exports ahead of time, on a machine stronger than the devices.

Each file is written under the name a device would look it up by (same key: model, weights and
their dtype, layer range, opset; see ``pipeedge/models/onnx_cache.py``), with its hash manifest. To
install, copy an entry's files (``<key>.onnx``, ``<key>.json`` and ``<key>.onnx.data`` if
present) into ``<cache-dir>/onnx/`` on the device that serves those layers (default
``~/.cache/pipeedge/onnx``), e.g. ``rsync -a out/ device:~/.cache/pipeedge/onnx/``. The next
assignment of those layers then loads the file instead of exporting.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import Deployment
from pipeedge.errors import PipeEdgeError
from pipeedge.models import weights_dtype
from pipeedge.records import PlannedStage

log = logging.getLogger(__name__)


class ExportOnnxError(PipeEdgeError, ValueError):
    """The exports cannot be built; the message names the setting and the fix."""


@dataclass(frozen=True)
class ExportedShard:
    host: str
    first_layer: int
    last_layer: int
    stem: str            # cache key: every file of the entry starts with it
    files: tuple[Path, ...]
    seconds: float       # 0 when the entry was already in the output directory

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def with_weights_dtype(dep: Deployment, name: str) -> Deployment:
    """`dep` with every host storing weights as `name` (export-onnx --weights-dtype)."""
    from dataclasses import replace

    from pipeedge.coordinator.hosts import check_weights_dtypes

    dep = replace(dep, weights_dtype=str(name).strip().lower(),
                  hosts=tuple(replace(h, weights_dtype="") for h in dep.hosts))
    check_weights_dtypes(dep)
    return dep


def onnx_stages(dep: Deployment, stages: list[PlannedStage],
                all_stages: bool = False) -> list[PlannedStage]:
    """The stages that will run the onnx backend (or all of them)."""
    chosen = [s for s in stages if all_stages or (s.host.backend or dep.backend) == "onnx"]
    if not chosen:
        raise ExportOnnxError("no stage uses backend onnx in this deployment; set backend: onnx "
                              "(top level or per host) in hosts.yml, or pass --all")
    return chosen


def export_stages(dep: Deployment, stages: list[PlannedStage], out: Path, *, opset: int,
                  weights_path: Path | None = None) -> list[ExportedShard]:
    """Export each stage's layer range into ``out``, skipping entries already there intact."""
    from pipeedge.models.onnx_cache import OnnxCache, shard_key, weights_id
    from pipeedge.models.onnx_export import export_shard

    if dep.dtype != "float32":
        raise ExportOnnxError(f"dtype {dep.dtype}: backend onnx takes and gives float32 only; "
                              "set dtype: float32 in hosts.yml (weights_dtype: float16 or int8 "
                              "for smaller weights)")
    info = dep.model_info()
    cache = OnnxCache(out)
    done = []
    for stage in stages:
        state = _shard_state(dep, info, stage, weights_path)
        dtype = weights_dtype.check(dep.host_weights_dtype(stage.host), "onnx",
                                    where=f"host {stage.host.name}")
        key = shard_key(info, stage.layers.first, stage.layers.last, opset=opset,
                        weights=weights_id(_weight_source(dep, state), state),
                        weights_dtype=dtype)
        start, seconds = time.perf_counter(), 0.0
        if cache.lookup(key) is None:
            shard = models.build_shard(info, stage.layers.first, stage.layers.last, state)
            cache.store(key, functools.partial(export_shard, shard, opset=opset,
                                               weights_dtype=dtype))
            seconds = time.perf_counter() - start
        files = tuple(p for p in (cache.model_path(key), cache.root / f"{key.stem}.onnx.data",
                                  cache.manifest_path(key)) if p.exists())
        done.append(ExportedShard(stage.host.name, stage.layers.first, stage.layers.last,
                                  key.stem, files, seconds))
        log.info("%s layers %s -> %s (%.1fs)", stage.host.name, stage.layers, key.stem, seconds)
    return done


def _shard_state(dep: Deployment, info: models.ModelInfo, stage: PlannedStage,
                 weights_path: Path | None):
    """The tensors the stage will hold, read where this machine has them."""
    first, last = stage.layers.first, stage.layers.last
    if dep.weights.kind == "random":
        return models.load_shard_state(info, first, last, dep.weights.seed)
    path = weights_path or Path(dep.weights.path)
    if not path.exists():
        raise ExportOnnxError(f"weights path {path} does not exist on this machine; copy the "
                              "model here or pass --weights-path")
    return models.load_shard_state(info, first, last, path)


def _weight_source(dep: Deployment, state) -> pb.WeightSource:
    """As deploy sends it: for push, the sha256 of the very blob deploy would push."""
    if dep.weights.kind == "push":
        blob = models.save_safetensors_bytes(state)
        return dep.weights.to_proto(pushed_sha256=hashlib.sha256(blob).hexdigest())
    return dep.weights.to_proto()
