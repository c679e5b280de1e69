"""Dtype casts that never enter torch's intra-op thread pool.

Compression runs next to a stage's compute, often on another thread. A large `Tensor.to()` opens
an OpenMP parallel region; when the cores are busy (the model's own thread team, other
processes) that region waits for a descheduled worker, and a 0.1 ms cast was measured taking
8-12 ms on a loaded 2-core machine. Casting in slices below ATen's parallel grain size (32768
elements) keeps every kernel serial on the calling thread, at ~1.5-2x the cost of an unloaded
parallel cast; the loop runs over slices of 16384 elements, never over elements or samples.
"""

from __future__ import annotations

import torch

_SLICE = 16384  # below at::internal::GRAIN_SIZE, so each copy_ runs serially


def serial_cast(src: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`src.to(dtype)` as a new contiguous CPU tensor, computed on the calling thread only."""
    src = src.detach()
    if src.device.type != "cpu":
        src = src.cpu()
    if src.dtype == dtype:
        return src.contiguous()
    src = src.contiguous()
    out = torch.empty(src.shape, dtype=dtype)
    flat_src, flat_out = src.reshape(-1), out.view(-1)
    for start in range(0, flat_src.numel(), _SLICE):
        flat_out[start:start + _SLICE].copy_(flat_src[start:start + _SLICE])
    return out
