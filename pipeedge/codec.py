"""Tensor codec: the one place that turns torch tensors into wire tensors and back.

Decoding is zero-copy (`torch.frombuffer` over the received bytes, pipeedge/wire.py); encoding
copies a payload once (tensor memory -> the message gRPC sends). Shards never write into their
inputs, so read-only views are safe.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import TypeVar

import torch

from pipeedge import wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.encoding import granularity_name, kind_name
from pipeedge.errors import PipeEdgeError

# Received payloads are immutable `bytes`; torch warns about non-writable buffers once per call.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

# Largest tensor a frame may declare (elements), so a hostile shape cannot make us allocate.
MAX_ELEMENTS = 1 << 31
# Most dimensions a wire tensor may have (transformer activations use up to 4).
MAX_RANK = 16
# Most bytes one frame's tensors may decode to. Encodings shrink data up to 16x (2-bit codes of
# float32), so a frame under the message limit could otherwise ask for gigabytes.
MAX_DECODED_BYTES = 1 << 30

_TO_WIRE: dict[torch.dtype, pb.DType] = {
    torch.float32: pb.FLOAT32,
    torch.float16: pb.FLOAT16,
    torch.bfloat16: pb.BFLOAT16,
    torch.int64: pb.INT64,
    torch.int32: pb.INT32,
    torch.bool: pb.BOOL,
    torch.uint8: pb.UINT8,
    torch.int8: pb.INT8,
}
_FROM_WIRE: dict[int, torch.dtype] = {v: k for k, v in _TO_WIRE.items()}

AnyFrame = TypeVar("AnyFrame", wire.Frame, pb.Frame)
# A received tensor: wire.Tensor reads like pb.Tensor (name, dtype, shape, encoding, data).
TensorMessage = wire.Tensor | pb.Tensor


class FrameFormatError(PipeEdgeError, ValueError):
    """A wire tensor that cannot be decoded; the message names the tensor and what is wrong."""


def dtype_to_wire(dtype: torch.dtype) -> pb.DType:
    try:
        return _TO_WIRE[dtype]
    except KeyError:
        raise FrameFormatError(f"dtype {dtype} cannot be sent; use one of "
                               f"{sorted(str(d) for d in _TO_WIRE)}") from None


def dtype_from_wire(value: int) -> torch.dtype:
    try:
        return _FROM_WIRE[value]
    except KeyError:
        raise FrameFormatError(f"unknown wire dtype {value}; sender and receiver "
                               "must speak pipeedge.v1") from None


def encode_tensor(name: str, tensor: torch.Tensor, encoding: pb.Encoding | None = None,
                  *, into: pb.Tensor | None = None) -> pb.Tensor:
    """Tensor -> wire message (payload copied into it); float tensors are compressed when
    `encoding` asks for it. The data path sends `wire.Tensor`s instead (`encode_tensors`).

    Pass `into` (e.g. `frame.tensors.add()`) to fill a message in place: building a Tensor and
    then appending it to a frame would copy its payload a second time.
    """
    header, payload = _encode(name, tensor, encoding)
    msg = into if into is not None else pb.Tensor()
    msg.MergeFrom(header)
    msg.data = bytes(payload)
    return msg


def _encode(name: str, tensor: torch.Tensor,
            encoding: pb.Encoding | None) -> tuple[pb.Tensor, bytes | memoryview]:
    """(header without data, payload bytes-like); a raw payload is a view of the (contiguous)
    tensor's memory."""
    tensor = tensor.detach()
    contiguous = tensor.cpu().contiguous()
    header = pb.Tensor(name=name, dtype=dtype_to_wire(tensor.dtype), shape=tensor.shape)
    if encoding is None or encoding.kind == pb.Encoding.RAW or not tensor.is_floating_point():
        if not contiguous.numel():
            return header, b""
        return header, contiguous.reshape(-1).view(torch.uint8).numpy().data  # a memoryview
    from pipeedge import quant  # compression is optional on the hot path: load it when used

    data, params = quant.encode(contiguous, kind=_kind_name(encoding.kind), bits=encoding.bits,
                                clip=encoding.clip,
                                granularity=_granularity_name(encoding.granularity))
    header.encoding.CopyFrom(pb.Encoding(kind=encoding.kind, bits=encoding.bits,
                                         params=bytes(params), clip=encoding.clip,
                                         granularity=encoding.granularity))
    return header, bytes(data)


def describe_tensor(msg: TensorMessage) -> torch.Tensor:
    """What a wire tensor will decode to, as a meta tensor (dtype and shape, no memory), after
    checking dtype, rank, size and the byte counts its encoding implies. A receiver checks this
    against what it expects before `decode_tensor` allocates anything."""
    dtype, shape, _ = _checked_header(msg)
    return torch.empty(shape, dtype=dtype, device="meta")


def describe_tensors(msgs: Iterable[TensorMessage]) -> dict[str, torch.Tensor]:
    """`describe_tensor` of every tensor of a frame, by name (names must be unique)."""
    out: dict[str, torch.Tensor] = {}
    total = 0
    for m in msgs:
        if m.name in out:
            raise FrameFormatError(f"tensor name '{m.name}' appears twice in one frame")
        out[m.name] = t = describe_tensor(m)
        total += t.numel() * t.element_size()
    if total > MAX_DECODED_BYTES:
        raise FrameFormatError(f"the frame's tensors decode to {total} bytes, over the limit of "
                               f"{MAX_DECODED_BYTES}; send smaller microbatches")
    return out


def _checked_header(msg: TensorMessage) -> tuple[torch.dtype, tuple[int, ...], int]:
    """(dtype, shape, encoding kind) of a wire tensor whose header and byte counts agree."""
    dtype = dtype_from_wire(msg.dtype)
    shape = tuple(msg.shape)
    if len(shape) > MAX_RANK:
        raise FrameFormatError(f"tensor '{msg.name}' has {len(shape)} dimensions, over the "
                               f"limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise FrameFormatError(f"tensor '{msg.name}' has negative dimension in shape {shape}")
    numel = math.prod(shape)
    # Zero-sized dims are skipped in the bound: found by tests/integration/test_fuzz.py, shape
    # [0, 2**62, 2**62] has 0 elements but overflows torch's stride computation (RuntimeError
    # escaping the decoder, so the request was never answered).
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise FrameFormatError(f"tensor '{msg.name}' declares shape {list(shape)} with "
                               f"{numel} elements, over the limit of {MAX_ELEMENTS} (per "
                               "non-zero dims); send smaller microbatches")
    kind = msg.encoding.kind if msg.HasField("encoding") else pb.Encoding.RAW
    if kind == pb.Encoding.RAW:
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(msg.data) != numel * itemsize:
            raise FrameFormatError(
                f"tensor '{msg.name}' carries {len(msg.data)} bytes but shape {shape} of "
                f"{dtype} needs {numel * itemsize}")
        return dtype, shape, kind
    if not dtype.is_floating_point:
        raise FrameFormatError(f"tensor '{msg.name}' of {dtype} cannot use a float encoding")
    from pipeedge import quant

    try:
        quant.check_lengths(len(msg.data), len(msg.encoding.params), kind=_kind_name(kind),
                            bits=msg.encoding.bits, shape=shape,
                            granularity=_granularity_name(msg.encoding.granularity))
    except ValueError as exc:
        raise FrameFormatError(f"tensor '{msg.name}': {exc}") from None
    return dtype, shape, kind


def decode_tensor(msg: TensorMessage) -> torch.Tensor:
    """Wire message -> tensor, validating dtype, shape and byte length before touching data."""
    dtype, shape, kind = _checked_header(msg)
    if kind == pb.Encoding.RAW:
        if math.prod(shape) == 0:
            return torch.empty(shape, dtype=dtype)
        tensor = torch.frombuffer(msg.data, dtype=dtype)
        if tensor.data_ptr() % tensor.element_size():  # a sender that does not align payloads
            tensor = torch.frombuffer(bytes(msg.data), dtype=dtype)
        return tensor.view(shape)
    from pipeedge import quant

    try:
        return quant.decode(msg.data, msg.encoding.params, kind=_kind_name(kind),
                            bits=msg.encoding.bits, shape=shape, dtype=dtype,
                            granularity=_granularity_name(msg.encoding.granularity))
    except ValueError as exc:
        raise FrameFormatError(f"tensor '{msg.name}': {exc}") from None


def encode_tensors(frame: AnyFrame, tensors: Mapping[str, torch.Tensor],
                   encoding: pb.Encoding | None = None) -> AnyFrame:
    """Append `tensors` to `frame` in place. Only float activations are compressed; masks and
    ids are integers and always travel raw.

    A `wire.Frame` (the data path) references raw tensors' memory until it is first sent
    (`wire.serialize` copies the payloads once and keeps that copy), so the tensors must not
    change before then: the SDK sends each frame before it pulls the next input. A pb.Frame
    (tools and tests) gets complete Tensor messages.
    """
    if isinstance(frame, pb.Frame):
        for k, v in tensors.items():
            encode_tensor(k, v, encoding, into=frame.tensors.add())
        return frame
    for k, v in tensors.items():
        frame.tensors.append(wire.Tensor(*_encode(k, v, encoding)))
    return frame


def decode_tensors(msgs: Iterable[TensorMessage]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for m in msgs:
        if m.name in out:
            raise FrameFormatError(f"tensor name '{m.name}' appears twice in one frame")
        out[m.name] = decode_tensor(m)
    return out


def payload_bytes(msgs: Iterable[TensorMessage]) -> int:
    """Bytes of tensor payload in a frame (what the link carries, minus framing)."""
    return sum(len(m.data) + len(m.encoding.params) for m in msgs)


def _kind_name(kind: int) -> str:
    name = kind_name(kind)
    if name is None:
        raise FrameFormatError(f"unknown encoding kind {kind}; use RAW, FLOAT16, BFLOAT16 or "
                               "UNIFORM")
    return name


def _granularity_name(value: int) -> str:
    name = granularity_name(value)
    if name is None:
        raise FrameFormatError(f"unknown encoding granularity {value}; use PER_SAMPLE or "
                               "PER_ROW")
    return name
