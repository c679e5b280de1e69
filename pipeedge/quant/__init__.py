"""Activation compression for links between stages: float16, bfloat16 and uniform quantization.

Edge links are slow (5 Mbps - 1 Gbps), so a stage may send its float activations narrower than
float32. This package turns a tensor into the (data, params) pair of a wire `Encoding` and back;
`pipeedge.codec` calls it for every non-RAW encoding. Functions are pure and thread-safe.

Kinds (lower-case names of `Encoding.Kind`; matching ignores case):

* ``float16`` / ``bfloat16``: data is the IEEE half / bfloat16 values, little-endian; no params;
  `bits` is ignored. Decoding equals torch's own casts.
* ``uniform``: affine quantization to `bits` (2..16) bits, codes packed tightly LSB first
  (ceil(numel * bits / 8) bytes for the whole tensor); params is float32 (scale, shift) per
  group, little-endian. `granularity` picks the groups: ``"sample"`` (default) one per sample
  (dim 0), ``"row"`` one per row of the last dimension, prod(shape[:-1]) rows (per token of a
  [batch, seq, hidden] activation: tighter ranges, 8 bytes per row). See `pipeedge.quant.uniform`
  for the NaN/inf and constant-group rules and `pipeedge.quant.clipping` for the optional
  ``"laplace"`` / ``"gelu"`` clipping (its statistics are per group too).

A 0-d tensor counts as one sample and one row. Every malformed argument or payload raises
`ValueError` with a one-line message naming the field, the value received and what was expected.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeedge.quant import packing, uniform
from pipeedge.quant.cast import serial_cast
from pipeedge.quant.clipping import CLIPS, LAPLACE_ALPHA, laplace_alpha
from pipeedge.quant.packing import MAX_BITS, MIN_BITS

__all__ = ["CLIPS", "GRANULARITIES", "KINDS", "LAPLACE_ALPHA", "MAX_BITS", "MIN_BITS", "decode",
           "encode", "encoded_nbytes", "laplace_alpha", "pack_codes", "params_nbytes",
           "unpack_codes"]

logger = logging.getLogger(__name__)

KINDS = ("float16", "bfloat16", "uniform")
GRANULARITIES = ("sample", "row")  # what one uniform (scale, shift) pair covers
_HALF_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def encode(t: torch.Tensor, *, kind: str, bits: int = 8, clip: str = "",
           granularity: str = "sample") -> tuple[bytes, bytes]:
    """Compress a float tensor for the wire: returns (data, params) for an `Encoding` of `kind`."""
    kind = _check_kind(kind)
    granularity = _check_granularity(granularity, kind)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor is a {type(t).__name__}; expected a torch.Tensor")
    if not t.is_floating_point():
        raise ValueError(f"tensor dtype {t.dtype} cannot use encoding '{kind}'; expected a "
                         "floating-point tensor (send integer tensors RAW)")
    clip = _check_clip(clip, kind)
    if kind != "uniform":
        half = serial_cast(t, _HALF_TORCH[kind])
        # numpy has no bfloat16: both kinds travel as their 16-bit patterns.
        return half.view(torch.int16).numpy().astype("<i2", copy=False).tobytes(), b""
    bits = _check_bits(bits)
    return uniform.quantize(t, bits=bits, clip=clip,
                            samples=_groups(tuple(t.shape), granularity))


def decode(data: bytes | memoryview, params: bytes | memoryview, *, kind: str, bits: int,
           shape: Sequence[int], dtype: torch.dtype,
           granularity: str = "sample") -> torch.Tensor:
    """Rebuild a float tensor of `shape` and `dtype` from a frame's data and params.

    Lengths are checked against `shape` before any data is touched. The result is a fresh,
    writable CPU tensor.
    """
    kind = _check_kind(kind)
    granularity = _check_granularity(granularity, kind)
    shape = _check_shape(shape)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype} cannot be decoded from encoding '{kind}'; expected a "
                         "floating-point torch dtype")
    if kind == "uniform":
        bits = _check_bits(bits)
    data_view = _bytes_view(data, "data")
    params_view = _bytes_view(params, "params")
    check_lengths(data_view.nbytes, params_view.nbytes, kind=kind, bits=bits, shape=shape,
                  granularity=granularity)
    if kind == "uniform":
        return uniform.dequantize(data_view, params_view, bits=bits, shape=shape,
                                  samples=_groups(shape, granularity), dtype=dtype)
    return _decode_half(data_view, kind=kind, shape=shape, dtype=dtype)


def check_lengths(data_nbytes: int, params_nbytes_: int, *, kind: str, bits: int,
                  shape: Sequence[int], granularity: str = "sample") -> None:
    """Raise ValueError unless `data` and `params` lengths are exactly what `shape` encoded
    this way needs: checked on a frame's header before anything is decoded or allocated."""
    kind = _check_kind(kind)
    granularity = _check_granularity(granularity, kind)
    shape = _check_shape(shape)
    if kind == "uniform":
        bits = _check_bits(bits)
    expected = encoded_nbytes(shape, kind=kind, bits=bits)
    if data_nbytes != expected:
        detail = f"{bits}-bit codes" if kind == "uniform" else "2 bytes per element"
        raise ValueError(f"data has {data_nbytes} bytes; expected {expected} for shape "
                         f"{list(shape)} with encoding '{kind}' ({detail})")
    expected_params = params_nbytes(shape, kind, granularity)
    if params_nbytes_ != expected_params:
        per = ("8 per sample along dim 0" if granularity == "sample"
               else "8 per row of the last dimension")
        raise ValueError(f"params has {params_nbytes_} bytes; expected {expected_params} "
                         f"for encoding '{kind}' and shape {list(shape)}"
                         + (f" ({per})" if kind == "uniform" else ""))


def encoded_nbytes(shape: Sequence[int], *, kind: str, bits: int = 8) -> int:
    """Exact `data` length for a tensor of `shape`, so frames can be validated before decoding."""
    kind = _check_kind(kind)
    numel = math.prod(_check_shape(shape))
    if kind == "uniform":
        return packing.packed_nbytes(numel, _check_bits(bits))
    return 2 * numel


def params_nbytes(shape: Sequence[int], kind: str, granularity: str = "sample") -> int:
    """Exact `params` length: for uniform 8 bytes per sample, or per row of the last dimension
    with granularity "row"; none for the float kinds."""
    kind = _check_kind(kind)
    granularity = _check_granularity(granularity, kind)
    shape = _check_shape(shape)
    return uniform.PARAMS_PER_SAMPLE * _groups(shape, granularity) if kind == "uniform" else 0


def pack_codes(codes: np.ndarray | Sequence[int], bits: int) -> bytes:
    """Pack unsigned integer codes (< 2**bits) tightly, LSB first; exposed for tests and tools."""
    bits = _check_bits(bits)
    arr = np.asarray(codes)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << bits):
        raise ValueError(f"codes range [{arr.min()}, {arr.max()}] does not fit {bits} bits; "
                         f"expected values in 0..{(1 << bits) - 1}")
    return packing.pack(arr.astype(packing.code_dtype(bits)), bits, consume=True)


def unpack_codes(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`: `count` codes as uint8 (bits <= 8) or uint16."""
    bits = _check_bits(bits)
    view = _bytes_view(data, "data")
    expected = packing.packed_nbytes(count, bits)
    if view.nbytes != expected:
        raise ValueError(f"data has {view.nbytes} bytes; expected {expected} for {count} "
                         f"codes of {bits} bits")
    return packing.unpack(np.frombuffer(view, np.uint8), bits, count).copy()


# ------------------------------------------------------------------------------------------------


def _decode_half(view: memoryview, *, kind: str, shape: tuple[int, ...],
                 dtype: torch.dtype) -> torch.Tensor:
    """float16/bfloat16 payload -> `dtype`.

    One copy of the 16-bit patterns into tensor-owned memory (so no tensor aliases the
    read-only frame), then torch's vectorized cast (~30x numpy's float16 conversion), kept off
    torch's thread pool.
    """
    patterns = torch.empty(shape, dtype=torch.int16)
    patterns.numpy().reshape(-1)[:] = np.frombuffer(view, "<i2")
    half = patterns.view(_HALF_TORCH[kind])
    return half if dtype == half.dtype else serial_cast(half, dtype)


def _check_kind(kind: object) -> str:
    name = kind.lower() if isinstance(kind, str) else kind
    if name not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown; expected one of {list(KINDS)} "
                         "(RAW is handled by the codec)")
    return name


def _check_bits(bits: Any) -> int:
    try:
        value = operator.index(bits)
    except TypeError:
        raise ValueError(f"bits {bits!r} is not an integer; expected {MIN_BITS}..{MAX_BITS} "
                         "for uniform encoding") from None
    if isinstance(bits, bool) or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"bits {bits!r} is out of range; expected {MIN_BITS}..{MAX_BITS} for "
                         "uniform encoding")
    return value


def _check_clip(clip: object, kind: str) -> str:
    if clip not in CLIPS:
        raise ValueError(f"clip {clip!r} is unknown; expected one of {list(CLIPS)}")
    if clip and kind != "uniform":
        raise ValueError(f"clip {clip!r} applies only to uniform encoding; got kind '{kind}' "
                         "(use clip='')")
    return clip


def _check_granularity(granularity: object, kind: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is unknown; expected one of "
                         f"{list(GRANULARITIES)}")
    if granularity != "sample" and kind != "uniform":
        raise ValueError(f"granularity {granularity!r} applies only to uniform encoding; got "
                         f"kind '{kind}' (use granularity='sample')")
    return str(granularity)


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"shape {shape!r} is invalid; expected a sequence of non-negative "
                         "integers") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {list(dims)} has a negative dimension; expected non-negative "
                         "integers")
    return dims


def _groups(shape: tuple[int, ...], granularity: str) -> int:
    """(scale, shift) pairs: samples along dim 0, or rows of the last dimension
    (prod(shape[:-1])); a 0-d tensor is a single sample and a single row."""
    if not shape:
        return 1
    return shape[0] if granularity == "sample" else math.prod(shape[:-1])


def _bytes_view(buf: object, field: str) -> memoryview:
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{field} is a {type(buf).__name__}; expected bytes or memoryview") \
            from None
    if not view.c_contiguous:
        raise ValueError(f"{field} is a non-contiguous buffer; expected contiguous bytes")
    return view
