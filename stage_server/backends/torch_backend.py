"""PyTorch shard backend: our own shard modules, on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeedge import codec, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.models import KVCache, weights_dtype
from pipeedge.stage_server.backends.base import ShardBackend
from pipeedge.stage_server.shard_loader import assignment_info


def compute_dtype(assignment: pb.AssignRequest) -> torch.dtype:
    if assignment.dtype == pb.DTYPE_UNSPECIFIED:
        return torch.float32
    return codec.dtype_from_wire(assignment.dtype)


class TorchShardBackend(ShardBackend):
    """Weights in ``AssignRequest.weights_dtype`` (``pipeedge.models.weights_dtype``); frames
    leave in the assignment's ``dtype`` whatever the weights, so stages mix freely."""

    def __init__(self, assignment: pb.AssignRequest, state: Mapping[str, torch.Tensor]) -> None:
        info = assignment_info(assignment)
        self.device = torch.device(assignment.device or "cpu")
        self.wire_dtype = compute_dtype(assignment)
        if self.wire_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype {self.wire_dtype} is not a compute dtype; use float32, "
                             "float16 or bfloat16 (weights_dtype: int8 for int8 weights)")
        self.weights_dtype = weights_dtype.check(
            weights_dtype.from_assignment(assignment), "torch",
            where=f"{info.name} layers {assignment.first_layer}-{assignment.last_layer}")
        if self.weights_dtype == "int8" and self.device.type != "cpu":
            raise ValueError(f"int8 weights run on the CPU only, not {self.device}; set "
                             "device: cpu or another weights_dtype")
        if self.weights_dtype == "int8":  # quantized as it is read (stage_server/shard_loader.py)
            self.module = weights_dtype.build_int8(info, assignment.first_layer,
                                                   assignment.last_layer, state)
        else:
            self.module = models.build_shard(info, assignment.first_layer,
                                             assignment.last_layer, state,
                                             dtype=weights_dtype.build_dtype(self.weights_dtype))
            self.module.to(self.device).eval()
        self.parameter_bytes = weights_dtype.weight_bytes(self.module)
        self._spec = self.module.input_spec()
        # Decoder-only models: per-session KV cache of this shard's layers (sessions.py).
        self.sessions = None
        if isinstance(self.module, models.DecoderShard):
            from pipeedge.stage_server.sessions import SessionStore

            self.sessions = SessionStore(self.module.new_cache, stage=assignment.stage_name)

    def validate(self, tensors: Mapping[str, torch.Tensor]) -> None:
        models.validate_inputs(self._spec, tensors)

    def run(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
            return self._to_wire(self.module(inputs))

    def _to_wire(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.wire_dtype) if v.is_floating_point() else v
                for k, v in outputs.items()}

    def run_session(self, tensors: Mapping[str, torch.Tensor], session_id: str,
                    step: int) -> dict[str, torch.Tensor]:
        if self.sessions is None:  # stateless model: the session is only a label
            return super().run_session(tensors, session_id, step)

        def compute(inputs: Mapping[str, torch.Tensor], cache: KVCache) -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
                return self._to_wire(self.module(inputs, cache=cache))

        return self.sessions.run(tensors, session_id, step, compute)

    def close(self) -> None:
        if self.sessions is not None:
            self.sessions.close()
        self.module = None  # type: ignore[assignment]
