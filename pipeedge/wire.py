"""The Forward/Infer wire: `pipeedge.v1.Frame` messages whose tensor payloads bypass protobuf.

On the wire a frame is an ordinary `Frame` of protos/stage.proto: any protobuf client may send
and read one (tests do, with the generated stub). PipeEdge's own senders and receivers handle the
payload bytes outside protobuf objects, which copied each payload four to six times per hop
(tensor to bytes, into the message, serialized; parsed, then every `Tensor.data` read):

- `serialize` has protobuf write the small fields (the frame's, each tensor's header) and puts
  each payload right behind its header: one copy, into the bytes gRPC sends;
- `parse` walks the message's top-level fields and each tensor's fields (varints only), hands
  everything but `Tensor.data` to protobuf, and keeps each payload as a view of the received
  bytes: no copy (messages up to SMALL_MESSAGE go through protobuf whole: faster there).

In messages written here each payload starts 8-byte aligned (a `Tensor.padding` field of a few
zero bytes before `data` when needed), so `codec.decode_tensor` views it without copying.
The checks are the codec's, on the same fields: this module only moves bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc

SERVICE = "pipeedge.v1.Stage"
# The data methods on this wire; every other method keeps the generated (de)serializers.
DATA_METHODS = ("Forward", "Infer")
_TENSORS = 3       # Frame.tensors
_DATA = 4          # Tensor.data
_PADDING = 6       # Tensor.padding
_LEN = 2           # wire type of length-delimited fields
_ALIGN = 8         # payload offset alignment in the messages `serialize` writes
# Up to this size `parse` lets protobuf's C parser read the whole message and copies the
# payloads out (a few microseconds); walking fields in Python costs tens of microseconds,
# which only pays off where it saves copying large payloads.
SMALL_MESSAGE = 64 * 1024


class Tensor:
    """One wire tensor: `header` (a pb.Tensor without `data`) and its payload bytes.

    It reads like a pb.Tensor (name, dtype, shape, encoding, data, HasField), so the codec's
    checks and decoding take either. `data` is bytes-like: a view of a received message, or
    memory the sender owns until the frame is sent.
    """

    __slots__ = ("header", "data")

    def __init__(self, header: pb.Tensor, data: bytes | memoryview = b"") -> None:
        self.header = header
        self.data = data

    @classmethod
    def from_message(cls, msg: pb.Tensor) -> Tensor:
        header = pb.Tensor()
        header.CopyFrom(msg)
        header.ClearField("data")
        return cls(header, msg.data)

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def dtype(self) -> int:
        return self.header.dtype

    @property
    def shape(self) -> Sequence[int]:
        shape: Sequence[int] = self.header.shape
        return shape

    @property
    def encoding(self) -> pb.Encoding:
        return self.header.encoding

    def HasField(self, field: str) -> bool:  # noqa: N802 (the protobuf method it stands for)
        return bool(self.header.HasField(field))


class Frame:
    """A frame in memory: `header` (a pb.Frame holding every field but `tensors`) and `tensors`
    (`wire.Tensor`s). Header fields read and write through: `frame.request_id`, `frame.epoch = 3`.
    """

    __slots__ = ("header", "tensors")

    def __init__(self, header: pb.Frame | None = None, tensors: Iterable[Tensor] | None = None,
                 **fields: Any) -> None:
        if header is not None and header.tensors:
            raise ValueError("a wire.Frame header carries no tensors; pass them as `tensors`")
        object.__setattr__(self, "header", header if header is not None else pb.Frame(**fields))
        object.__setattr__(self, "tensors", list(tensors or ()))

    def __getattr__(self, name: str) -> Any:  # a header field, typed by pb.Frame
        if name in Frame.__slots__:  # not set yet (during construction): no recursion
            raise AttributeError(name)
        return getattr(self.header, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Frame.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.header, name, value)

    def __repr__(self) -> str:
        return (f"wire.Frame(request_id={self.header.request_id!r}, "
                f"tensors={[t.name for t in self.tensors]})")


# -- bytes ------------------------------------------------------------------------------------------


def serialize(frame: Frame | pb.Frame) -> bytes:
    """The wire bytes of a frame (a pb.Frame, e.g. an error frame, serializes as usual).

    Payloads are copied once, into the returned bytes, and the frame's payloads then become
    views of those bytes: a frame sent again (a client's resend) carries what was sent the
    first time, whatever happens to the tensors it was encoded from.
    """
    if isinstance(frame, pb.Frame):
        whole: bytes = frame.SerializeToString()
        return whole
    head: bytes = frame.header.SerializeToString()
    if not frame.tensors:
        return head
    parts: list[bytes | memoryview] = [head]
    offsets = []
    pos = len(head)
    for i, t in enumerate(frame.tensors):
        if not isinstance(t, Tensor):  # a pb.Tensor appended by hand
            t = frame.tensors[i] = Tensor.from_message(t)
        prefix = _tensor_prefix(pos, t.header.SerializeToString(), len(t.data))
        parts += (prefix, t.data)
        offsets.append(pos + len(prefix))
        pos += len(prefix) + len(t.data)
    message = b"".join(parts)
    view = memoryview(message)
    for t, start in zip(frame.tensors, offsets, strict=True):
        t.data = view[start:start + len(t.data)]
    return message


def parse(buf: bytes) -> Frame:
    """Frame bytes -> Frame, payloads as views of `buf` (copies below SMALL_MESSAGE);
    DecodeError if malformed."""
    if len(buf) <= SMALL_MESSAGE:
        msg = pb.Frame.FromString(buf)
        small = [Tensor(pb.Tensor(name=t.name, dtype=t.dtype, shape=t.shape,
                                    encoding=t.encoding if t.HasField("encoding") else None),
                          t.data) for t in msg.tensors]
        msg.ClearField("tensors")
        return Frame(msg, small)
    view = memoryview(buf)
    end = len(buf)
    rest: list[bytes] = []  # every top-level field but the tensors, for protobuf
    tensors: list[Tensor] = []
    pos = 0
    while pos < end:
        start = pos
        key, pos = _read_key(buf, pos, end)
        if key & 7 == _LEN and key >> 3 == _TENSORS:
            size, pos = _read_size(buf, pos, end)
            tensors.append(_parse_tensor(buf, view, pos, pos + size))
            pos += size
            continue
        pos = _skip(buf, key, pos, end)
        rest.append(buf[start:pos])
    return Frame(pb.Frame.FromString(b"".join(rest)), tensors)


def _parse_tensor(buf: bytes, view: memoryview, pos: int, end: int) -> Tensor:
    """One Tensor message at buf[pos:end]: the last `data` field is the payload (protobuf's
    rule for a repeated scalar field), `padding` is dropped, the other fields go to protobuf
    as they are."""
    kept: list[bytes] = []
    segment = pos
    data: bytes | memoryview = b""
    while pos < end:
        start = pos
        key, pos = _read_key(buf, pos, end)
        if key & 7 == _LEN and key >> 3 in (_DATA, _PADDING):
            size, pos = _read_size(buf, pos, end)
            kept.append(buf[segment:start])
            if key >> 3 == _DATA:
                data = view[pos:pos + size]
            pos = segment = pos + size
            continue
        pos = _skip(buf, key, pos, end)
    kept.append(buf[segment:end])
    return Tensor(pb.Tensor.FromString(b"".join(kept)), data)


def _read_varint(buf: bytes, pos: int, end: int, max_bytes: int = 10) -> tuple[int, int]:
    value = 0
    for i in range(min(end - pos, max_bytes)):
        byte = buf[pos + i]
        value |= (byte & 0x7F) << 7 * i
        if byte < 0x80:
            return value, pos + i + 1
    raise DecodeError("truncated or overlong varint in frame")


def _read_key(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    return _read_varint(buf, pos, end, 5)  # protobuf's limit for tags


def _read_size(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    size, pos = _read_varint(buf, pos, end, 5)  # protobuf's limit for lengths (int32)
    if size >= 1 << 31 or pos + size > end:
        raise DecodeError("truncated field in frame")
    return size, pos


def _skip(buf: bytes, key: int, pos: int, end: int, depth: int = 0) -> int:
    """Position after the value of a field with `key` (as protobuf skips unknown fields)."""
    wire_type = key & 7
    if wire_type == 0:
        return _read_varint(buf, pos, end)[1]
    if wire_type == _LEN:
        size, pos = _read_size(buf, pos, end)
        return pos + size
    if wire_type in (1, 5):
        pos += 8 if wire_type == 1 else 4
        if pos > end:
            raise DecodeError("truncated field in frame")
        return pos
    if wire_type == 3 and depth < 64:  # a group: fields up to its matching end
        while True:
            inner, pos = _read_key(buf, pos, end)
            if inner & 7 == 4:
                if inner >> 3 != key >> 3:
                    raise DecodeError("mismatched end group in frame")
                return pos
            pos = _skip(buf, inner, pos, end, depth + 1)
    raise DecodeError(f"unexpected wire type {wire_type} in frame")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tensor_prefix(pos: int, header: bytes, nbytes: int) -> bytes:
    """Everything of one `tensors` field before its payload: the payload starts at a multiple
    of _ALIGN from the message start (`pos`: bytes of the message before this field), padded
    with a `Tensor.padding` field of 2 + k bytes when needed."""
    if not nbytes:  # nothing to align
        return b"\x1a" + _varint(len(header)) + header
    dlen = b"\x22" + _varint(nbytes)
    pad = 0
    while True:  # once, or twice when the padding lengthens the body's varint
        blen = _varint(len(header) + pad + len(dlen) + nbytes)
        short = -(pos + 1 + len(blen) + len(header) + len(dlen)) % _ALIGN
        want = short + _ALIGN if short == 1 else short  # a padding field is >= 2 bytes
        while want < pad:  # never shrink: a shorter body varint could undo the alignment
            want += _ALIGN
        if want == pad:
            padding = b"\x32" + _varint(pad - 2) + bytes(pad - 2) if pad else b""
            return b"\x1a" + blen + header + padding + dlen
        pad = want


# -- gRPC -------------------------------------------------------------------------------------------


def stage_stub(channel: grpc.Channel) -> pb_grpc.StageStub:
    """The generated Stage stub, with Forward and Infer on this wire (they take and return
    `wire.Frame`s; a pb.Frame may be sent too)."""
    stub = pb_grpc.StageStub(channel)
    stub.Forward = channel.stream_stream(f"/{SERVICE}/Forward", request_serializer=serialize,
                                         response_deserializer=parse, _registered_method=True)
    stub.Infer = channel.unary_unary(f"/{SERVICE}/Infer", request_serializer=serialize,
                                     response_deserializer=parse, _registered_method=True)
    return stub


def add_stage_servicer(servicer: pb_grpc.StageServicer, server: grpc.Server) -> None:
    """`add_StageServicer_to_server`, with Forward and Infer on this wire."""
    methods: dict[str, grpc.RpcMethodHandler] = {}

    class _Collect:  # takes the generated handlers instead of a server
        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass

        def add_registered_method_handlers(self, service: str,
                                           handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            methods.update(handlers)

    pb_grpc.add_StageServicer_to_server(servicer, _Collect())
    for name in DATA_METHODS:
        methods[name] = methods[name]._replace(request_deserializer=parse,
                                               response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)
