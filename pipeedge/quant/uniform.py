"""Per-sample uniform quantization: float tensor <-> packed `bits`-bit codes + (scale, shift).

Each sample (index along dim 0) gets its own affine map, because activations of different inputs
in a microbatch can have very different ranges:

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
from pipeedge.quant.clipping import clip_range

logger = logging.getLogger(__name__)

PARAMS_PER_SAMPLE = 8  # float32 scale + float32 shift, little-endian
_PARAMS_DTYPE = np.dtype("<f4")
_MAX = torch.finfo(torch.float32).max
_warned_nonfinite = False


def quantize(t: torch.Tensor, *, bits: int, clip: str, samples: int) -> tuple[bytes, bytes]:
    """(packed codes, params) for `t` viewed as `samples` rows; inputs already validated."""
    numel = t.numel()
    if numel == 0:
        return b"", bytes(PARAMS_PER_SAMPLE * samples)
    x = t.detach().reshape(samples, numel // samples)
    if x.dtype != torch.float32:
        x = x.float()
    levels = (1 << bits) - 1
    # NaN propagates, +-inf shows up: both flag a bad sample. (Two reductions beat
    # torch.aminmax(dim=1), which is ~25x slower on CPU.)
    lo, hi = x.amin(dim=1), x.amax(dim=1)
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    any_bad = bool(bad.any())
    if any_bad:
        _note_nonfinite(int(bad.sum()), samples)
        lo = torch.where(bad, 0.0, lo)
        hi = torch.where(bad, 0.0, hi)
    scratch = torch.empty_like(x)  # one big temporary, shared by clipping and the codes
    lo, hi = clip_range(x, lo, hi, bits=bits, clip=clip, scratch=scratch)
    span = hi.double() - lo.double()
    scale = (span / levels).float()
    flat = scale == 0  # constant sample (or a range below float32's resolution)
    inv64 = 1.0 / torch.where(flat, 1.0, scale.double())
    inv64 = torch.where(flat | bad, 0.0, inv64)
    if any_bad:
        lo = torch.where(bad, 0.0, lo)
    if bool((span > _MAX).any() or (inv64 > _MAX).any()):
        # Rare: x - lo or 1/scale would overflow float32 (ranges beyond float32's max or with
        # a subnormal scale). float64 has the headroom; the codes come out the same.
        q = torch.sub(x.double(), lo.double()[:, None]).mul_(inv64[:, None])
    else:
        q = torch.sub(x, lo[:, None], out=scratch).mul_(inv64.float()[:, None])
    q.round_().clamp_(0, levels)
    if any_bad:
        q[bad] = 0  # NaN * 0 is NaN; give bad samples defined codes
        nan = torch.tensor(float("nan"))
        scale = torch.where(bad, nan, scale)
        lo = torch.where(bad, nan, lo)
    code_dtype = packing.code_dtype(bits)
    if q.device.type == "cpu":  # numpy's float -> uint8 cast is ~4x torch's on CPU
        codes = q.numpy().astype(code_dtype)
    else:  # narrow on the device so only the codes cross the bus
        codes = q.to(torch.uint8 if bits <= 8 else torch.uint16).cpu().numpy()
    data = packing.pack(codes, bits, consume=True)
    params = torch.stack([scale, lo], dim=1).cpu().numpy().astype(_PARAMS_DTYPE).tobytes()
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
    if (np.abs(wide[:, 1]) + ((1 << bits) - 1) * np.abs(wide[:, 0]) > _MAX).any():
        # Rare: code * scale may overflow float32 for ranges near its max; float64 cannot, and
        # the encoder's range was finite, so a rounding overshoot past the max saturates.
        np.clip(codes.reshape(out.shape) * wide[:, :1] + wide[:, 1:], -_MAX, _MAX, out=out,
                casting="same_kind")
    else:
        np.multiply(codes.reshape(out.shape), affine[:, :1], out=out, dtype=np.float32)
        out += affine[:, 1:]
    result = torch.from_numpy(out).reshape(shape)
    return result if dtype == torch.float32 else result.to(dtype)


def _note_nonfinite(count: int, samples: int) -> None:
    """Warn once per process (then at debug level): NaN/inf activations mean a broken model."""
    global _warned_nonfinite
    level = logging.DEBUG if _warned_nonfinite else logging.WARNING
    _warned_nonfinite = True
    logger.log(level, "%d of %d samples contain NaN or inf; they are sent as all-NaN",
               count, samples)
