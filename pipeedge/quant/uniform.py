"""Uniform quantization: float tensor <-> packed `bits`-bit codes + (scale, shift) per group.

Each group gets its own affine map. A group is a sample (index along dim 0; the default), because
activations of different inputs in a microbatch can have very different ranges, or, with per-row
granularity, a row of the last dimension (a token), because tokens of one sample differ too (a
few outlier tokens would otherwise set every token's step). Below, "sample" means the group:

    scale = (hi - lo) / (2^bits - 1),  shift = lo,  code = round((x - shift) / scale)
    x' = code * scale + shift,         so |x' - x| <= scale / 2 inside [lo, hi]

[lo, hi] is the sample's [min, max], narrowed by the optional clipping rule (see `clipping`);
values outside it saturate to the end codes.

Edge cases, chosen so that a receiver never sees silently wrong numbers:

* Constant sample (max == min): scale = 0, every code 0, decoded exactly as `shift`. A range so
  small that its scale underflows float32 to 0 is treated the same way (its error is then below
  2^bits float32 subnormal steps). Ranges wider than float32's max, or with a subnormal scale,
  are quantized in float64 (a rare slow path) so nothing overflows.
* Non-finite input: a sample containing any NaN or +-inf has no finite range to quantize, and a
  transformer stage would turn it into NaN at the next LayerNorm or softmax anyway. Such a sample
  is sent as (scale, shift) = (NaN, NaN) with all codes 0, so it decodes to all-NaN; the other
  samples of the batch are unaffected, and a warning is logged.
* Float dtypes other than float32 are quantized in float32 (float64 values beyond float32's range
  become inf, hence a NaN sample); decode returns the dtype the frame declares.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from pipeedge.quant import packing
from pipeedge.quant.cast import serial_cast
from pipeedge.quant.clipping import clip_range

logger = logging.getLogger(__name__)

PARAMS_PER_SAMPLE = 8  # float32 scale + float32 shift, little-endian
_PARAMS_DTYPE = np.dtype("<f4")
_MAX = float(np.finfo(np.float32).max)
_warned_nonfinite = False


def quantize(t: torch.Tensor, *, bits: int, clip: str, samples: int) -> tuple[bytes, bytes]:
    """(packed codes, params) for `t` viewed as `samples` groups (rows of a 2-D view, one
    (scale, shift) each: samples or rows of the last dimension); inputs already validated.

    The arithmetic is numpy on the calling thread: as fast as single-threaded torch here, and it
    never waits on torch's thread pool (see `cast`).
    """
    numel = t.numel()
    if numel == 0:
        return b"", bytes(PARAMS_PER_SAMPLE * samples)
    x = serial_cast(t, torch.float32).numpy().reshape(samples, numel // samples)  # read only
    levels = (1 << bits) - 1
    with np.errstate(all="ignore"):  # NaN/inf samples are handled explicitly below
        lo, hi = x.min(axis=1), x.max(axis=1)  # NaN propagates, +-inf shows: a bad sample
        bad = ~(np.isfinite(lo) & np.isfinite(hi))
        if bad.any():
            _note_nonfinite(int(bad.sum()), samples)
            lo, hi = np.where(bad, 0, lo), np.where(bad, 0, hi)
        scratch = np.empty_like(x)  # one big temporary, shared by clipping and the codes
        lo, hi = clip_range(x, lo, hi, bits=bits, clip=clip, scratch=scratch)
        lo = np.where(bad, np.float32(0), lo).astype(np.float32)
        span = hi.astype(np.float64) - lo
        scale = (span / levels).astype(np.float32)
        flat = (scale == 0) | bad  # constant sample (or a range below float32's resolution)
        inv = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, scale.astype(np.float64)))
        if (span > _MAX).any() or (inv > _MAX).any():
            # Rare: x - lo or 1/scale would overflow float32 (a range beyond float32's max or a
            # subnormal scale). float64 has the headroom; the codes come out the same.
            q = np.subtract(x, lo[:, None], dtype=np.float64)
            q *= inv[:, None]
        else:
            q = np.subtract(x, lo[:, None], out=scratch)
            q *= inv.astype(np.float32)[:, None]
        np.rint(q, out=q)
        np.clip(q, 0, levels, out=q)
        if bad.any():
            q[bad] = 0  # NaN * 0 is NaN; give bad samples defined codes
            scale = np.where(bad, np.float32("nan"), scale)
            lo = np.where(bad, np.float32("nan"), lo)
        codes = q.astype(packing.code_dtype(bits))
    data = packing.pack(codes, bits, consume=True)
    params = np.stack([scale, lo], axis=1).astype(_PARAMS_DTYPE).tobytes()
    return data, params


def dequantize(data: memoryview, params: memoryview, *, bits: int, shape: tuple[int, ...],
               samples: int, dtype: torch.dtype) -> torch.Tensor:
    """Float tensor of `shape`/`dtype` from packed codes; lengths already validated."""
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    codes = packing.unpack(np.frombuffer(data, np.uint8), bits, numel)
    affine = np.frombuffer(params, _PARAMS_DTYPE).reshape(samples, 2)
    out = np.empty((samples, numel // samples), np.float32)
    wide = affine.astype(np.float64)
    with np.errstate(all="ignore"):  # NaN params (a NaN sample) are meant to propagate
        if (np.abs(wide[:, 1]) + ((1 << bits) - 1) * np.abs(wide[:, 0]) > _MAX).any():
            # Rare: code * scale may overflow float32 for ranges near its max; float64 cannot,
            # and the encoder's range was finite, so a rounding overshoot saturates.
            np.clip(codes.reshape(out.shape) * wide[:, :1] + wide[:, 1:], -_MAX, _MAX,
                    out=out, casting="same_kind")
        else:
            np.multiply(codes.reshape(out.shape), affine[:, :1], out=out, dtype=np.float32)
            out += affine[:, 1:]
    result = torch.from_numpy(out).reshape(shape)
    return result if dtype == torch.float32 else serial_cast(result, dtype)


def _note_nonfinite(count: int, samples: int) -> None:
    """Warn once per process (then at debug level): NaN/inf activations mean a broken model."""
    global _warned_nonfinite
    level = logging.DEBUG if _warned_nonfinite else logging.WARNING
    _warned_nonfinite = True
    logger.log(level, "%d of %d samples (or rows) contain NaN or inf; they are sent as "
               "all-NaN", count, samples)
