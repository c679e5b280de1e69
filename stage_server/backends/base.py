"""The interface every shard backend implements, and the factory that picks one."""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from pathlib import Path

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


_KNOWN_BACKENDS = (pb.BACKEND_UNSPECIFIED, pb.TORCH, pb.ONNX, pb.ECHO)
_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d{1,3})?$")
# Bounds on what an assignment may ask of the process: threads=2**31-1 aborted the whole stage
# (libgomp "Out of memory allocating"), and queue lengths size in-memory queues.
MAX_THREADS = 256
MAX_QUEUE = 1024


def check_target(assignment: pb.AssignRequest) -> None:
    """Reject an unknown backend or device before anything is loaded (found by
    tests/integration/test_fuzz.py: backend 99 silently ran torch; device "meta" was accepted as a shard
    that cannot compute, replacing a working assignment; "tpu" failed with a bare traceback)."""
    if assignment.backend not in _KNOWN_BACKENDS:
        raise ValueError(f"backend {assignment.backend} is unknown; use TORCH, ONNX or ECHO")
    if assignment.device and not _DEVICE.match(assignment.device):
        raise ValueError(f"device {assignment.device[:64]!r} is not supported; use cpu, cuda, "
                         "cuda:N or mps")
    check_threads(assignment.threads)
    for field in ("queue_in", "queue_out"):
        if getattr(assignment, field) > MAX_QUEUE:
            raise ValueError(f"{field} {getattr(assignment, field)} is over the limit of "
                             f"{MAX_QUEUE} microbatches")


def check_threads(threads: int) -> None:
    if threads > MAX_THREADS:
        raise ValueError(f"threads {threads} is over the limit of {MAX_THREADS}")


def load_backend(assignment: pb.AssignRequest, state: Mapping[str, torch.Tensor], *,
                 cache_dir: Path | None = None) -> ShardBackend:
    """Build the backend an assignment asks for from the shard's own tensors.

    `cache_dir` is the stage's cache root, for backends that keep derived files (ONNX exports).
    """
    if assignment.backend == pb.ECHO:
        from pipeedge.stage_server.backends.echo_backend import EchoBackend

        return EchoBackend()
    if assignment.backend == pb.ONNX and assignment.model_name:
        # Decoders keep a per-session KV cache, which only the torch backend implements.
        from pipeedge.stage_server.shard_loader import assignment_info

        info = assignment_info(assignment)
        if info.is_decoder:
            raise ValueError(f"{info.name} is a decoder (text generation); serve it with the "
                             "torch backend (backend: torch)")
    if assignment.backend == pb.ONNX:
        from pipeedge.stage_server.backends.onnx_backend import OnnxShardBackend

        return OnnxShardBackend(assignment, state, cache_dir=cache_dir)
    from pipeedge.stage_server.backends.torch_backend import TorchShardBackend

    return TorchShardBackend(assignment, state)
