"""The interface every shard backend implements, and the factory that picks one."""

from __future__ import annotations

import abc
from pathlib import Path
from collections.abc import Mapping

import torch

from pipeedge._proto import stage_pb2 as pb


class ShardBackend(abc.ABC):
    """Runs one contiguous layer range of one model on this device."""

    parameter_bytes: int = 0

    @abc.abstractmethod
    def validate(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise ValueError naming the tensor and the expected shape/dtype if inputs don't fit."""

    @abc.abstractmethod
    def run(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the shard's outputs for one microbatch."""

    def close(self) -> None:
        """Free memory held by the shard."""


def load_backend(assignment: pb.AssignRequest, state: dict[str, torch.Tensor], *,
                 cache_dir: Path | None = None) -> ShardBackend:
    """Build the backend an assignment asks for from the shard's own tensors.

    `cache_dir` is the stage's cache root, for backends that keep derived files (ONNX exports).
    """
    if assignment.backend == pb.ECHO:
        from pipeedge.stage_server.backends.echo_backend import EchoBackend

        return EchoBackend()
    if assignment.backend == pb.ONNX:
        from pipeedge.stage_server.backends.onnx_backend import OnnxShardBackend

        return OnnxShardBackend(assignment, state, cache_dir=cache_dir)
    from pipeedge.stage_server.backends.torch_backend import TorchShardBackend

    return TorchShardBackend(assignment, state)
