"""Bytes per activation element for the dtype names profiles are keyed by."""

from __future__ import annotations

from .errors import SchedulingError

__all__ = ["dtype_bytes"]

# The seed only knew torch.float32; the others follow torch's element sizes.
_BYTES = {
    "torch.float32": 4,
    "torch.float": 4,
    "torch.float16": 2,
    "torch.half": 2,
    "torch.bfloat16": 2,
    "torch.float64": 8,
    "torch.double": 8,
    "torch.int8": 1,
    "torch.uint8": 1,
    "torch.qint8": 1,
    "torch.quint8": 1,
    "torch.int16": 2,
    "torch.int32": 4,
    "torch.int64": 8,
}


def dtype_bytes(dtype: str) -> int:
    """Element size of a torch dtype name such as ``torch.float32``."""
    try:
        return _BYTES[dtype]
    except KeyError:
        known = ", ".join(sorted(_BYTES))
        raise SchedulingError(f"unsupported dtype {dtype!r}; use one of: {known}") from None
