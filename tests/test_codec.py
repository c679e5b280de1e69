import pytest
import torch

from pipeedge import codec
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
