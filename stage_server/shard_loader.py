"""Turn an assignment's weight source into the shard's own tensors (and nothing more)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError
from pipeedge.models import weights_dtype
from pipeedge.models.weights import WeightsMismatchError, lazy_safetensors, lazy_shard_state
from pipeedge.stage_server.weight_cache import WeightCache


class WeightsNotFound(PipeEdgeError):
    """The assignment points at weights this device does not have."""


def assignment_info(assignment: pb.AssignRequest) -> models.ModelInfo:
    """The model an assignment describes: its name, config.json text and, on the last stage,
    the sentence-transformers pooling the head applies (ignored on other stages)."""
    from pipeedge.models.sentence_transformers import from_proto

    last = not assignment.next_hop and assignment.HasField("pooling")
    return models.model_info(assignment.model_name, assignment.model_config_json or None,
                             pooling=from_proto(assignment.pooling) if last else None)


def load_shard_state(assignment: pb.AssignRequest,
                     cache: WeightCache) -> Mapping[str, torch.Tensor]:
    if assignment.backend == pb.ECHO:
        return {}  # echo stages hold no model
    info = assignment_info(assignment)
    source = assignment.weights.WhichOneof("source")
    # Tensors come one at a time, when asked for, where the backend can use that: a torch int8
    # shard quantizes each matmul as it is read, so the stage never holds the float32 shard
    # whole (it could not on a device sized for int8); an ONNX shard found in the export cache
    # reads none, only an export reads them all (local weights load whole: the cache key hashes
    # the shard's tensors, as export-onnx does).
    torch_int8 = (assignment.backend in (pb.BACKEND_UNSPECIFIED, pb.TORCH)
                  and weights_dtype.from_assignment(assignment) == "int8")
    streams = torch_int8 or (assignment.backend == pb.ONNX and source != "local_path")
    load = lazy_shard_state if streams else models.load_shard_state
    first, last = assignment.first_layer, assignment.last_layer
    if source == "pushed_sha256":
        sha = assignment.weights.pushed_sha256
        if not cache.has(sha):
            raise WeightsNotFound(f"pushed weights {sha[:12]} are not cached on this stage; "
                                  "push them first (pipeedge-coord deploy does this)")
        if not cache.verify(sha):  # hashed again: a blob changed on disk is never loaded
            raise WeightsNotFound(f"cached weights {sha[:12]} no longer match their sha256 "
                                  "(changed on disk) and were deleted; push them again "
                                  "(pipeedge-coord deploy does this)")
        lazy = lazy_safetensors(cache.path(sha))
        if weights_dtype.is_prequantized(lazy) and not torch_int8:  # int8 read as floats
            raise WeightsMismatchError(
                f"pushed weights {sha[:12]} are pre-quantized for a torch int8 stage, but this "
                "one runs another backend or weights_dtype; deploy again to push its weights")
        if streams:
            return lazy
        from safetensors.torch import load_file

        return load_file(str(cache.path(sha)))
    if source == "local_path":
        path = Path(assignment.weights.local_path)
        if not path.exists():
            raise WeightsNotFound(f"weights path {path} does not exist on this device; copy the "
                                  "model there or set weights: push in hosts.yml")
        return load(info, first, last, path)
    seed = assignment.weights.random_seed if source == "random_seed" else 0
    return load(info, first, last, int(seed))
