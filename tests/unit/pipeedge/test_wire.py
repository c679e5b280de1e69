"""pipeedge/wire.py against protobuf itself: what `serialize` writes is the Frame protobuf reads,
what `parse` reads is the Frame protobuf reads (or both refuse it), payloads arrive aligned and
uncopied over a real gRPC call, and a frame keeps what it sent (a client reusing its buffers)."""

from __future__ import annotations

import random
from concurrent import futures

import grpc
import pytest
import torch
from google.protobuf.message import DecodeError

from pipeedge import channels, codec, wire
from pipeedge._proto import stage_pb2 as pb

TENSORS = {
    "hidden": torch.randn(3, 7, 16),
    "mask": torch.ones(3, 7, dtype=torch.int64),
    "flag": torch.tensor(True),
    "empty": torch.zeros(0, 4),
    "half": torch.randn(5, 3).to(torch.bfloat16),
    "odd": torch.arange(13, dtype=torch.uint8),
}


def _frame(**fields) -> wire.Frame:
    frame = wire.Frame(request_id="r-1", epoch=7, step=3, session_id="s", trace_id="t",
                       deadline_unix_ms=123, hop_tag=9, **fields)
    return codec.encode_tensors(frame, TENSORS)


def _as_pb(frame: wire.Frame) -> pb.Frame:
    """The same frame built the protobuf way (an independent serializer)."""
    msg = pb.Frame()
    msg.CopyFrom(frame.header)
    for t in frame.tensors:
        msg.tensors.add(name=t.name, dtype=t.dtype, shape=t.shape, data=bytes(t.data),
                        encoding=t.encoding if t.HasField("encoding") else None)
    return msg


def _fields(frame) -> tuple:
    """What a receiver sees of a frame (pb.Frame or wire.Frame), padding aside."""
    return (frame.request_id, frame.hop_tag, frame.session_id, frame.step, frame.epoch,
            frame.deadline_unix_ms, frame.trace_id, frame.error.code, frame.error.message,
            [(t.name, t.dtype, list(t.shape), bytes(t.data),
              t.encoding.SerializeToString()) for t in frame.tensors])


def test_serialize_is_the_frame_protobuf_reads():
    frame = _frame()
    got = pb.Frame.FromString(wire.serialize(frame))
    assert _fields(got) == _fields(_as_pb(frame))
    decoded = codec.decode_tensors(got.tensors)
    for name, t in TENSORS.items():
        assert torch.equal(decoded[name], t), name
    # Compressed payloads (params in the header) and error frames too.
    quant = codec.encode_tensors(wire.Frame(request_id="q"), {"h": torch.randn(4, 6, 8)},
                                 pb.Encoding(kind=pb.Encoding.UNIFORM, bits=6))
    assert _fields(pb.Frame.FromString(wire.serialize(quant))) == _fields(_as_pb(quant))
    err = wire.Frame(request_id="e", error=pb.FrameError(code=3, message="bad", stage="s0"))
    assert _fields(pb.Frame.FromString(wire.serialize(err))) == _fields(err)


@pytest.fixture(params=["walk", "small"])
def parse_path(request, monkeypatch):
    """Both ways `parse` reads: walking fields (large messages) and protobuf's parser (small)."""
    if request.param == "walk":
        monkeypatch.setattr(wire, "SMALL_MESSAGE", 0)
    return request.param


def test_parse_reads_what_protobuf_reads(parse_path):
    frame = _frame()
    reference = _as_pb(frame)
    for raw in (wire.serialize(frame), reference.SerializeToString()):
        got = wire.parse(raw)
        assert _fields(got) == _fields(reference)
        decoded = codec.decode_tensors(got.tensors)
        for name, t in TENSORS.items():
            assert torch.equal(decoded[name], t), name
    # Protobuf's rules for odd but valid encodings: fields in any order, a repeated `data`
    # (the last one counts), unknown fields, an overlong varint.
    t = pb.Tensor(name="x", dtype=pb.UINT8, shape=[2], data=b"no")
    odd = (b"\x22\x01z" + t.SerializeToString() + b"\xf8\x01\x05"
           + b"\x22" + bytes([0x82, 0x00]) + b"ok")
    raw = b"\x1a" + bytes([len(odd)]) + odd + pb.Frame(request_id="o", epoch=2).SerializeToString()
    assert _fields(wire.parse(raw)) == _fields(pb.Frame.FromString(raw))


def test_parse_agrees_with_protobuf_on_mutated_bytes(parse_path):
    """Truncated and bit-flipped frames: both parsers refuse, or both read the same frame."""
    rng = random.Random(18)
    good = wire.serialize(_frame())
    agreed = refused = 0
    for i in range(3000):
        raw = bytearray(good[:rng.randrange(len(good) + 1)] if i % 3 == 0 else good)
        for _ in range(rng.randrange(1, 4)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = bytes(raw)
        try:
            want = _fields(pb.Frame.FromString(raw))
        except DecodeError:
            want = None
        try:
            got = _fields(wire.parse(raw))
        except DecodeError:
            got = None
        if want is None and got is not None:
            pytest.fail(f"case {i}: protobuf refuses, wire.parse reads {got[:3]}")
        if want is not None:
            assert got == want, i
            agreed += 1
        else:
            refused += 1
    assert agreed > 100 and refused > 100


def test_payloads_arrive_aligned_and_uncopied_over_grpc(monkeypatch):
    monkeypatch.setattr(wire, "SMALL_MESSAGE", 0)  # the large-message path, on small frames
    seen = []

    def handler(frame: wire.Frame, context) -> wire.Frame:
        decoded = codec.decode_tensors(frame.tensors)
        seen.append({k: (v.data_ptr() % 8, v.data_ptr()) for k, v in decoded.items()})
        seen.append({t.name: t.data.obj for t in frame.tensors if len(t.data)})  # the message
        return codec.encode_tensors(wire.Frame(request_id=frame.request_id), decoded)

    server = grpc.server(futures.ThreadPoolExecutor(2), options=channels.SERVER_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Wire", {
        "Echo": grpc.unary_unary_rpc_method_handler(handler, request_deserializer=wire.parse,
                                                    response_serializer=wire.serialize)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with channels.open_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/t.Wire/Echo", request_serializer=wire.serialize,
                                       response_deserializer=wire.parse)
            for n in range(1, 20):  # request ids of every length shift every payload
                frame = codec.encode_tensors(wire.Frame(request_id="x" * n), TENSORS)
                back = codec.decode_tensors(echo(frame, timeout=10).tensors)
                for name, t in TENSORS.items():
                    assert torch.equal(back[name], t), name
    finally:
        server.stop(None)
    for aligned, messages in zip(seen[::2], seen[1::2], strict=True):
        assert {k: a for k, (a, _) in aligned.items() if TENSORS[k].numel()} == {
            k: 0 for k, t in TENSORS.items() if t.numel()}
        # Every payload is a view of the one received message: nothing was copied out.
        assert len({id(m) for m in messages.values()}) == 1 and len(messages) == 5


def test_a_sent_frame_keeps_what_it_sent():
    x = torch.zeros(4, 4)
    frame = codec.encode_tensors(wire.Frame(request_id="c"), {"x": x})
    first = wire.serialize(frame)
    x += 1  # a caller reusing its buffer once the frame went out
    assert wire.serialize(frame) == first  # a resend
    assert torch.equal(codec.decode_tensors(wire.parse(first).tensors)["x"], torch.zeros(4, 4))


def test_sdk_stream_with_a_reused_input_buffer(tmp_path):
    """A generator that refills one tensor for every batch: each result is its own batch's."""
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator.local_cluster import LocalCluster
    from pipeedge.coordinator.stage_control import StageControl

    buf = torch.zeros(2, 3000)

    def batches():
        for i in range(24):
            buf.fill_(float(i))
            yield {"hidden": buf}

    with LocalCluster(1, workdir=tmp_path) as cluster:
        stage = cluster.stages[0]
        ctl = StageControl(stage.name, stage.address)
        ctl.assign(pb.AssignRequest(model_name="echo", backend=pb.ECHO))
        ctl.close()
        with PipelineClient(stage.address) as client:
            got = [out["hidden"] for out in client.infer_many(batches(), window=4)]
    assert [float(t[0, 0]) for t in got] == [float(i) for i in range(24)]
    assert all(bool((t == t[0, 0]).all()) for t in got)


def test_header_fields_read_and_write_through():
    frame = wire.Frame(request_id="a")
    frame.epoch = 4
    frame.hop_tag = 11
    assert frame.header.epoch == 4 and frame.hop_tag == 11 and frame.request_id == "a"
    with pytest.raises(ValueError, match="no tensors"):
        wire.Frame(pb.Frame(tensors=[pb.Tensor(name="x")]))
