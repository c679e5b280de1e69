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
``torch.ao.quantization`` is deprecated in favour of torchao and warns; the day it is removed,
this module is the one place to change.

Accuracy (MiniLM pooled embeddings, cosine vs float32 transformers; docs/weights.md): the loss is
in the activations, which dynamic quantization scales per tensor. Two choices fix it:

- 8-bit activations. torch's dynamic Linear hard-codes fbgemm's ``reduce_range`` (7-bit
  activations: without VNNI, x86's u8*s8 pair sums saturate int16 at 8 bits); where a one-off
  probe shows this CPU's int8 GEMM exact at 8 bits (VNNI), ``_Linear8`` asks for the full range.
  MiniLM cosine min 0.969 -> 0.990.
- The first block's FFN down-projection stays float32 (``keep_float``). Its input, the GELU
  output, has the most extreme outliers of the model (max/std 80 in MiniLM blocks 0-1, 13-17 for
  q/k/v), so a per-tensor scale leaves the bulk of its values a level or two, and its error runs
  through every later block (Bondarenko et al., EMNLP 2021, found the same in BERT's FFNs and
  kept them in higher precision). Alone it is the layer that loses most (0.992 when only it is
  quantized); in float32 the whole model reaches 0.9937. It is 1/12 of a block's weights, in one
  block of the model (MiniLM +1.8 MB; a shard without block 0 is unaffected).
ONNX stages use onnxruntime's own tooling (``pipeedge.models.onnx_weights``), same choices.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError

if TYPE_CHECKING:
    from .registry import ModelInfo
    from .shard import ShardModule

with warnings.catch_warnings():  # torch.ao's deprecation notice
    warnings.simplefilter("ignore")
    from torch.ao.nn.quantized import dynamic as _dynamic


@runtime_checkable
class _AsLinear(Protocol):
    """A module that is a Linear in another layout (GPT-2's ``Conv1D``)."""

    def as_linear(self) -> nn.Linear: ...

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


def check(name: object, backend: str = "torch", *, where: str = "") -> str:
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


def to_proto(name: str) -> pb.DType:
    return _TO_PROTO[name]


def from_assignment(req: pb.AssignRequest | pb.ProfileRequest) -> str:
    """The weights dtype an AssignRequest / ProfileRequest asks for (unset = its ``dtype``)."""
    value = req.weights_dtype or (req.dtype if req.dtype in (pb.FLOAT16, pb.BFLOAT16)
                                  else pb.FLOAT32)
    if value not in _FROM_PROTO:
        raise WeightsDtypeError(f"weights_dtype {value} is not a weights dtype; use one of "
                                f"{', '.join(NAMES)}")
    return _FROM_PROTO[value]


def build_dtype(name: str) -> torch.dtype:
    """The dtype a float shard is built in (int8: ``build_int8``)."""
    return _FLOATS.get(name, torch.float32)


def keep_float(module: nn.Module, intermediate_size: int | None) -> set[str]:
    """Names of the Linears that int8 keeps float32: the model's first block's FFN
    down-projection, when this shard holds it. See the module docstring for why."""
    return {n for n, m in module.named_modules() if _kept_float(n, m, intermediate_size)}


def _kept_float(name: str, module: nn.Module, intermediate_size: int | None) -> bool:
    """Block 0's FFN down-projection: in_features = the intermediate size, first index 0."""
    first = re.search(r"\.(\d+)\.", f".{name}.")
    return (bool(intermediate_size) and isinstance(module, nn.Linear)
            and module.in_features == intermediate_size
            and first is not None and first.group(1) == "0")


# A pre-quantized state (``quantized_state``) stores a quantized matmul's weight as its int8
# values under the weight's own key, and its per-channel scales and zero points beside it.
INT8_SCALE, INT8_ZERO_POINT = ".int8_scale", ".int8_zero_point"


def is_prequantized(keys: Iterable[str]) -> bool:
    """Whether a state's tensor names are those of a ``quantized_state``."""
    return any(k.endswith(INT8_SCALE) for k in keys)


def build_int8(info: ModelInfo, first_layer: int, last_layer: int,
               state: Mapping[str, torch.Tensor], *,
               record: Callable[[str, _dynamic.Linear, bool], None] | None = None) -> ShardModule:
    """The int8 shard, each matmul quantized as soon as its weights are read, so with a lazy
    ``state`` (``weights.lazy_shard_state``) the stage peaks at its int8 weights plus one float32
    matmul, not a whole float32 shard (ViT-Large, 6 blocks: 666 -> see docs/weights.md).

    Quantized: every ``nn.Linear`` (GPT-2's ``Conv1D`` as the Linear it is) but a decoder's
    ``lm_head`` (read directly: tied to the embeddings) and ``keep_float``'s. A pre-quantized
    ``state`` (``quantized_state``) gives the same module without quantizing again.
    ``record(name, quantized, transposed)`` sees each quantized matmul (``quantized_state``)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    from .build import build_shard_streaming
    from .weights import WeightsMismatchError, candidate_keys

    linear = _Linear8 if full_range_activations() else _dynamic.Linear
    dropped = [0]  # float bytes released since the heap was last handed back
    prequantized = is_prequantized(state)

    def weight_key(name: str) -> str:
        key = f"{name}.weight"
        return next((k for k in candidate_keys(info, key) if k in state), key)

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        swapped = module.as_linear() if isinstance(module, _AsLinear) else None
        module = swapped or module
        if (not isinstance(module, nn.Linear) or name.endswith("lm_head")
                or _kept_float(name, module, info.intermediate_size)):
            if prequantized and weight_key(name) + INT8_SCALE in state:
                raise WeightsMismatchError(
                    f"pre-quantized weights quantize {name} but this stage keeps it float32 "
                    "(another quantization recipe); deploy again to push weights for it")
            return swapped
        if prequantized:
            key = weight_key(name)
            if key + INT8_SCALE not in state:
                raise WeightsMismatchError(
                    f"pre-quantized weights hold {name} unquantized but this stage quantizes it "
                    "(another quantization recipe); deploy again to push weights for it")
            qweight = torch._make_per_channel_quantized_tensor(
                module.weight.to(torch.int8), state[key + INT8_SCALE].double(),
                state[key + INT8_ZERO_POINT].long(), 0)
            # torch.ao's constructor has no annotations; through _Linear8 mypy does not see
            # that it is torch's (as in full_range_activations).
            quantized = linear(module.in_features, module.out_features,  # type: ignore[no-untyped-call]
                               dtype=torch.qint8)
            quantized.set_weight_bias(qweight, module.bias)
        else:
            # torch.ao reads `qconfig`, a plain attribute; Module.__setattr__ is typed for
            # modules.
            module.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
            with warnings.catch_warnings():  # torch.ao's deprecation notice
                warnings.simplefilter("ignore")
                quantized = linear.from_float(module)
        if record is not None:
            record(name, quantized, swapped is not None)
        dropped[0] += module.weight.numel() * 4
        del module, swapped
        if dropped[0] > 32 << 20:  # the dropped float Linears sit in reference cycles
            dropped[0] = 0
            _give_back_memory()
        return quantized

    int_weights = {k for k in state if k + INT8_SCALE in state} if prequantized else set()
    module = build_shard_streaming(info, first_layer, last_layer, state, convert,
                                   int_weights=int_weights)
    _give_back_memory()
    return module


def quantized_state(info: ModelInfo, first_layer: int, last_layer: int,
                    state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as a torch int8 stage holds it, to push instead of float32 (about 4x fewer
    bytes on the matmuls): each quantized matmul's weight as its int8 values (in the
    checkpoint's own layout: GPT-2's Conv1D transposed back) plus per-channel scales and zero
    points; everything else as it was. ``build_int8`` on it gives the module ``build_int8`` on
    ``state`` gives, without quantizing on the device."""
    from .weights import candidate_keys

    out = dict(state)

    def record(name: str, quantized: _dynamic.Linear, transposed: bool) -> None:
        key = next(k for k in candidate_keys(info, f"{name}.weight") if k in out)
        qweight = quantized.weight()
        ints = qweight.int_repr()
        out[key] = (ints.t() if transposed else ints).contiguous()
        # Stored narrower than torch keeps them (float64, int64), losslessly: the observer
        # computes float32 scales, and symmetric qint8 zero points are 0.
        scales, zero_points = qweight.q_per_channel_scales(), qweight.q_per_channel_zero_points()
        out[key + INT8_SCALE] = _narrowed(scales, torch.float32)
        out[key + INT8_ZERO_POINT] = _narrowed(zero_points, torch.int8)

    build_int8(info, first_layer, last_layer, state, record=record)
    return out


def _narrowed(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    narrow = t.to(dtype)
    if not torch.equal(narrow.to(t.dtype), t):
        raise AssertionError(f"{t.dtype} -> {dtype} would change quantization parameters")
    return narrow


def _give_back_memory() -> None:
    """Free the dropped float matmuls and hand the heap back to the OS (glibc; elsewhere
    nothing), as the stage does after a Release (stage_server/servicer.py)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.cache
def full_range_activations() -> bool:
    """Whether this CPU's int8 GEMM is exact with 8-bit activations (no int16 saturation).

    The probe is the worst case: every activation 255 and every weight 127, whose pair sums
    (64770) overflow int16 where the kernel has no VNNI; a saturating kernel returns about half.
    """
    from torch.ao.quantization import default_dynamic_qconfig

    float_linear = nn.Linear(64, 4, bias=False)
    nn.init.ones_(float_linear.weight)
    float_linear.qconfig = default_dynamic_qconfig  # type: ignore[assignment]  # as above
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch.ao's from_float has no annotations; through our subclass, untyped_calls_exclude
        # (pyproject) does not see that it is torch's.
        probe = _Linear8.from_float(float_linear)  # type: ignore[no-untyped-call]
    try:
        with torch.inference_mode():
            out = probe(torch.ones(2, 64))
    except RuntimeError:
        return False
    return bool(torch.allclose(out, torch.full_like(out, 64.0), rtol=1e-2))


class _Linear8(_dynamic.Linear):
    """torch's dynamic int8 Linear with 8-bit activations (its own forward hard-codes
    ``reduce_range=True``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                               reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear8"


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
