"""Weights dtype of a shard (hosts.yml ``weights_dtype:``): the names, which backend runs which,
and the torch int8 path. One owner, so hosts.yml, deploy, the stage and profiling agree.

- ``float32`` (default), ``float16``, ``bfloat16``: weights stored in that dtype, compute in it.
- ``int4`` (onnx stages only): 4-bit matmul weights in blocks of 32 (onnxruntime MatMulNBits),
  activations float32 (quantized to int8 inside the kernel).
- ``int8``: the matmul weights (every ``nn.Linear`` but a decoder's ``lm_head``, GPT-2's
  ``Conv1D`` too) stored as int8 with one scale per output channel, activations quantized per
  call (dynamic quantization); norms, embeddings and biases stay float32.

Whatever the weights, activations enter and leave a stage in the pipeline's ``dtype`` (the
backend casts at the shard boundary), so a quantized stage mixes with float32 stages.

Why torch's own ``torch.ao.quantization.quantize_dynamic`` for torch int8 (measured with torch
2.13 on the 2-core x86 CI machine, ViT-Base MLP, batch 8): its fbgemm/x86 int8 GEMM ran 2.5x
faster than float32, while torchao 0.18 (PyPI) ran int8 weight-only at float32 speed
(dequantize, then a float GEMM) and int8 dynamic-activation 2x slower than float32 (no fused CPU
kernel); torchao's int4 needs GPU kernels (``mslk``), so torch refuses int4.
``torch.ao.quantization`` is deprecated in favour of torchao and warns; the day it is removed, this module is the one place to change.
Its x86 kernels quantize activations to 7 bits (fbgemm's reduce_range), which costs accuracy:
MiniLM pooled-embedding cosine 0.974-0.981 against float32 where onnxruntime's int8 (8-bit
activations) reaches 0.993 (bench/REPORT.md); the QNNPACK engine has 8-bit activations and
0.993 too, but ran slower than float32 on x86, so it is not used.
ONNX stages use onnxruntime's own tooling (``pipeedge.models.onnx_weights``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError

NAMES = ("float32", "float16", "bfloat16", "int8", "int4")
BACKENDS = {"torch": ("float32", "float16", "bfloat16", "int8"),
            "onnx": ("float32", "float16", "int8", "int4")}
_TO_PROTO = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16,
             "int8": pb.INT8, "int4": pb.INT4}
_FROM_PROTO = {v: k for k, v in _TO_PROTO.items()}
_FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WHY_NOT = {
    ("onnx", "bfloat16"): "onnxruntime's CPU provider has no bfloat16 MatMul; use float16 or "
                          "int8, or backend: torch",
    ("torch", "int4"): "torch has no CPU int4 kernel here (torchao's int4 needs GPU kernels); "
                       "use int8, or backend: onnx (onnxruntime MatMulNBits)",
}


class WeightsDtypeError(PipeEdgeError, ValueError):
    """A weights dtype that is unknown or that the chosen backend cannot run."""


def check(name, backend: str = "torch", *, where: str = "") -> str:
    """The canonical name of ``name`` for ``backend``; one-line WeightsDtypeError otherwise."""
    text = str(name).strip().lower()
    at = f" for {where}" if where else ""
    if text not in NAMES:
        raise WeightsDtypeError(f"weights_dtype '{name}'{at} is unknown; use one of "
                                f"{', '.join(NAMES)}")
    if text not in BACKENDS.get(backend, NAMES):
        why = _WHY_NOT.get((backend, text), f"use one of {', '.join(BACKENDS[backend])}")
        raise WeightsDtypeError(f"weights_dtype {text}{at}: backend {backend} cannot run it; "
                                f"{why}")
    return text


def to_proto(name: str) -> int:
    return _TO_PROTO[name]


def from_assignment(req) -> str:
    """The weights dtype an AssignRequest / ProfileRequest asks for (unset = its ``dtype``)."""
    value = req.weights_dtype or (req.dtype if req.dtype in (pb.FLOAT16, pb.BFLOAT16)
                                  else pb.FLOAT32)
    if value not in _FROM_PROTO:
        raise WeightsDtypeError(f"weights_dtype {value} is not a weights dtype; use one of "
                                f"{', '.join(NAMES)}")
    return _FROM_PROTO[value]


def build_dtype(name: str) -> torch.dtype:
    """The dtype to build the shard in before ``quantize`` (int8 starts from float32)."""
    return _FLOATS.get(name, torch.float32)


def quantize(module: nn.Module, name: str) -> nn.Module:
    """Turn a shard built in ``build_dtype(name)`` into its ``name`` form, in place."""
    if name != "int8":
        return module
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for parent in list(module.modules()):  # GPT-2's Conv1D -> the nn.Linear it is
        for child_name, child in list(parent.named_children()):
            if hasattr(child, "as_linear"):
                setattr(parent, child_name, child.as_linear())
    # lm_head's weight is read directly (tied to the embeddings): it stays float32.
    spec = {n: per_channel_dynamic_qconfig for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    if not spec:
        return module
    with warnings.catch_warnings():  # torch.ao's deprecation notice, once per shard
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the module's weights as stored: parameters, buffers and int8 packed weights."""
    total = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total
