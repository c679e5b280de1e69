"""Tensor specs: what a shard takes and gives, so a server can reject bad frames up front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

DYNAMIC = -1  # a dimension that may take any size (batch; sequence length for text models)

# How a dynamic dimension is named in messages, by position: all specs are (batch, seq, ...).
_DIM_SYMBOLS = ("B", "T")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor a shard takes or gives. ``shape`` uses ``-1`` for dynamic dimensions."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    optional: bool = False  # may be left out (e.g. BERT ``token_type_ids``)

    def describe_shape(self) -> str:
        """The shape as a person reads it: ``(B, 197, 768)``."""
        dims = [
            _DIM_SYMBOLS[i] if d == DYNAMIC and i < len(_DIM_SYMBOLS) else str(d)
            for i, d in enumerate(self.shape)
        ]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def validate_inputs(spec: Sequence[TensorSpec], tensors: Mapping[str, torch.Tensor]) -> None:
    """Check ``tensors`` against ``spec``: names, dtype, rank, fixed dims, and consistent B and T.

    A floating spec accepts any floating dtype (shards cast floats to their compute dtype on entry);
    integer specs (token ids, masks) must match exactly.

    Raises:
        ValueError: with one line naming the tensor, what it is, and what the shard expects.
    """
    expected = {s.name: s for s in spec}
    extra = [n for n in tensors if n not in expected]
    if extra:
        raise ValueError(f"unexpected tensor(s) {extra}; this shard takes {[s.name for s in spec]}")
    seen: dict[str, tuple[int, str]] = {}  # dynamic symbol -> (size, tensor that fixed it)
    for s in spec:
        if s.name not in tensors:
            if s.optional:
                continue
            raise ValueError(
                f"missing tensor {s.name!r}; this shard takes {[x.name for x in spec]}"
            )
        t = tensors[s.name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {s.name!r} is a {type(t).__name__}, not a torch.Tensor")
        if s.dtype.is_floating_point:
            if not t.dtype.is_floating_point:
                raise ValueError(
                    f"tensor {s.name!r} has dtype {t.dtype} but this shard expects a floating "
                    f"dtype ({s.dtype})"
                )
        elif t.dtype != s.dtype:
            raise ValueError(
                f"tensor {s.name!r} has dtype {t.dtype} but this shard expects {s.dtype}"
            )
        bad_rank = t.dim() != len(s.shape)
        bad_dim = not bad_rank and any(
            d != DYNAMIC and d != n for d, n in zip(s.shape, t.shape, strict=True)
        )
        if bad_rank or bad_dim:
            raise ValueError(
                f"tensor {s.name!r} has shape {_shape_str(t.shape)} but this shard expects "
                f"{s.describe_shape()}"
            )
        for i, d in enumerate(s.shape[: len(_DIM_SYMBOLS)]):
            if d != DYNAMIC:
                continue
            sym, size = _DIM_SYMBOLS[i], t.shape[i]
            if sym in seen and seen[sym][0] != size:
                other_size, other = seen[sym]
                raise ValueError(
                    f"tensor {s.name!r} has {sym}={size} but tensor {other!r} has "
                    f"{sym}={other_size}; all tensors of a frame must agree"
                )
            seen.setdefault(sym, (size, s.name))
