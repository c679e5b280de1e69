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

    # Autoregressive decoding (pipeedge.stage_server.sessions): frames with a session_id come
    # here instead of `run`. Stateless backends ignore the session; an end-of-session frame (no
    # tensors) has nothing to free. Decoder backends override this to keep a per-session cache.
    def run_session(self, tensors: Mapping[str, torch.Tensor], session_id: str,
                    step: int) -> dict[str, torch.Tensor]:
        """Compute one step of session `session_id` (step 0 = prefill; no tensors = end it)."""
        return self.run(tensors) if tensors else {}

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
    if assignment.backend == pb.ONNX and assignment.model_name:
        # Decoders keep a per-session KV cache, which only the torch backend implements.
        from pipeedge import models

        info = models.model_info(assignment.model_name, assignment.model_config_json or None)
        if info.is_decoder:
            raise ValueError(f"{info.name} is a decoder (text generation); serve it with the "
                             "torch backend (backend: torch)")
    if assignment.backend == pb.ONNX:
        from pipeedge.stage_server.backends.onnx_backend import OnnxShardBackend

        return OnnxShardBackend(assignment, state, cache_dir=cache_dir)
    from pipeedge.stage_server.backends.torch_backend import TorchShardBackend

    return TorchShardBackend(assignment, state)
