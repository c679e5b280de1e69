import pytest
import torch

from pipeedge import codec, encoding
from pipeedge._proto import stage_pb2 as pb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.bool, torch.uint8, torch.int8])
def test_round_trip_is_exact(dtype):
    t = (torch.randn(3, 5, 7) * 10).to(dtype)
    msg = codec.encode_tensor("x", t)
    wire = pb.Tensor.FromString(msg.SerializeToString())
    back = codec.decode_tensor(wire)
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_non_contiguous_and_empty_tensors():
    t = torch.arange(12.0).view(3, 4).T
    assert torch.equal(codec.decode_tensor(codec.encode_tensor("t", t)), t)
    e = torch.empty(0, 4)
    assert codec.decode_tensor(codec.encode_tensor("e", e)).shape == (0, 4)


def test_decode_is_zero_copy():
    msg = codec.encode_tensor("x", torch.randn(64, 64))
    back = codec.decode_tensor(msg)
    # The tensor views the message's own bytes: no copy on the receive path.
    assert back.untyped_storage().nbytes() == len(msg.data)


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: setattr(m, "data", m.data[:-1]), "carries 95 bytes but shape"),
    (lambda m: m.shape.__setitem__(0, -2), "negative dimension"),
    (lambda m: setattr(m, "dtype", 99), "unknown wire dtype 99"),
    (lambda m: m.shape.extend([1 << 20, 1 << 20]), "over the limit"),
])
def test_bad_tensors_are_rejected_with_a_reason(mutate, needle):
    msg = codec.encode_tensor("hidden", torch.randn(4, 6))
    mutate(msg)
    with pytest.raises(codec.FrameFormatError, match=needle):
        codec.decode_tensor(msg)


def test_duplicate_names_rejected():
    frame = codec.encode_tensors(pb.Frame(), {"a": torch.zeros(1)})
    codec.encode_tensors(frame, {"a": torch.ones(1)})
    with pytest.raises(codec.FrameFormatError, match="appears twice"):
        codec.decode_tensors(frame.tensors)


# -- uniform with per-row params (Encoding.granularity = PER_ROW) ----------------------------------

def test_per_sample_frames_are_unchanged_and_old_frames_decode():
    """The default granularity is not on the wire: per-sample frames are byte-identical to those
    of senders that predate the field, and such frames decode as before."""
    x = torch.randn(3, 5, 7)
    new = codec.encode_tensor("h", x, pb.Encoding(kind=pb.Encoding.UNIFORM, bits=6))
    assert not new.encoding.granularity
    old = pb.Tensor(name="h", dtype=pb.FLOAT32, shape=[3, 5, 7], data=new.data,
                    encoding=pb.Encoding(kind=pb.Encoding.UNIFORM, bits=6,
                                         params=new.encoding.params))
    assert old.SerializeToString() == new.SerializeToString()
    assert torch.equal(codec.decode_tensor(old), codec.decode_tensor(new))
    assert len(old.encoding.params) == 8 * 3


def test_per_row_round_trip_and_wire_bytes():
    x = torch.randn(4, 9, 16)
    x[:, 0] *= 50  # a first token far outside the others' range, as in real activations
    enc = encoding.from_name("uniform", bits=8, per_row=True)
    assert enc.granularity == pb.Encoding.PER_ROW
    frame = codec.encode_tensors(pb.Frame(), {"hidden": x, "mask": torch.ones(4, 9,
                                                                           dtype=torch.int64)},
                                 enc)
    wire = pb.Frame.FromString(frame.SerializeToString())
    hidden = wire.tensors[0]
    assert hidden.encoding.granularity == pb.Encoding.PER_ROW
    assert len(hidden.data) == 4 * 9 * 16 and len(hidden.encoding.params) == 8 * 4 * 9
    assert codec.payload_bytes(wire.tensors) == 4 * 9 * 16 + 8 * 4 * 9 + 4 * 9 * 8
    out = codec.decode_tensors(wire.tensors)
    assert torch.equal(out["mask"], torch.ones(4, 9, dtype=torch.int64))
    per_sample = codec.decode_tensor(codec.encode_tensor("h", x, pb.Encoding(
        kind=pb.Encoding.UNIFORM, bits=8)))
    err_row = (out["hidden"] - x)[:, 1:].abs().max()
    err_sample = (per_sample - x)[:, 1:].abs().max()
    assert err_row < err_sample / 10  # the other tokens keep their own, finer step


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: setattr(m.encoding, "params", m.encoding.params[:8 * 2]),
     "tensor 'hidden': params has 16 bytes; expected 96"),
    (lambda m: setattr(m.encoding, "params", m.encoding.params + bytes(8)),
     "params has 104 bytes; expected 96"),
    (lambda m: setattr(m.encoding, "granularity", pb.Encoding.PER_SAMPLE),
     "params has 96 bytes; expected 16 for encoding 'uniform'"),
    (lambda m: setattr(m, "data", m.data[:-1]), "data has 47 bytes; expected 48"),
    (lambda m: setattr(m.encoding, "granularity", 7), "unknown encoding granularity 7"),
    (lambda m: (setattr(m.encoding, "kind", pb.Encoding.FLOAT16),
                setattr(m.encoding, "params", b""), setattr(m, "data", bytes(2 * 48))),
     "granularity 'row' applies only to uniform"),
])
def test_bad_per_row_frames_are_rejected_with_a_reason(mutate, needle):
    msg = codec.encode_tensor("hidden", torch.randn(2, 6, 8),
                              encoding.from_name("uniform", bits=4, per_row=True))
    mutate(msg)
    with pytest.raises(codec.FrameFormatError, match=needle):
        codec.decode_tensor(pb.Tensor.FromString(msg.SerializeToString()))


def test_per_row_only_for_uniform():
    with pytest.raises(ValueError, match="only to uniform"):
        encoding.from_name("float16", per_row=True)
