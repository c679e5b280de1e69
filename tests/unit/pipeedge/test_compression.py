"""Activation compression between stages: configuration, bad encodings, accuracy, adaptation.

In process: encoding syntax, assignment fields, the adaptive controller on a fake clock, MiniLM
uniform 8 per token at every cut kind. Over real stage processes:
tests/integration/test_compression_pipeline.py.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from pipeedge import codec, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.encoding import EncodingError
from pipeedge.encoding import parse as parse_encoding
from pipeedge.errors import PipeEdgeError
from pipeedge.partition import LayerRange
from pipeedge.stage_server.adaptive import LinkThrottle, OutputCompression, check_assignment

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("text, kind, bits, clip, target, min_bits, wire_bits, per_row", [
    ("raw", None, 0, "", 0, 0, 32, False),
    ("0", None, 0, "", 0, 0, 32, False),
    ("float16", pb.Encoding.FLOAT16, 0, "", 0, 0, 16, False),
    ("bfloat16", pb.Encoding.BFLOAT16, 0, "", 0, 0, 16, False),
    ("uniform:8", pb.Encoding.UNIFORM, 8, "", 0, 0, 8, False),
    ("6", pb.Encoding.UNIFORM, 6, "", 0, 0, 6, False),
    ("uniform:4:laplace", pb.Encoding.UNIFORM, 4, "laplace", 0, 0, 4, False),
    ("uniform:3:gelu", pb.Encoding.UNIFORM, 3, "gelu", 0, 0, 3, False),
    ("adaptive:20", None, 0, "", 20, 0, 32, False),
    ("adaptive:12.5:4:laplace", pb.Encoding.UNIFORM, 0, "laplace", 12.5, 4, 32, False),
    ("uniform:8:token", pb.Encoding.UNIFORM, 8, "", 0, 0, 8, True),
    ("uniform:4:token:laplace", pb.Encoding.UNIFORM, 4, "laplace", 0, 0, 4, True),
    ("uniform:3:gelu:token", pb.Encoding.UNIFORM, 3, "gelu", 0, 0, 3, True),
    ("8:token", pb.Encoding.UNIFORM, 8, "", 0, 0, 8, True),
    ("uniform:6:sample", pb.Encoding.UNIFORM, 6, "", 0, 0, 6, False),
])
def test_encoding_syntax(text, kind, bits, clip, target, min_bits, wire_bits, per_row):
    spec = parse_encoding(text)
    assert (spec.encoding.kind if spec.encoding else None) == kind
    if spec.encoding:
        assert (spec.encoding.bits, spec.encoding.clip) == (bits, clip)
        assert spec.encoding.granularity == (pb.Encoding.PER_ROW if per_row
                                             else pb.Encoding.PER_SAMPLE)
    assert (spec.target_items_per_s, spec.min_bits, spec.bits) == (target, min_bits, wire_bits)


@pytest.mark.parametrize("text, message", [
    ("uniform", "needs a bit width"), ("uniform:1", "bits must be 2..16"),
    ("uniform:17", "bits must be 2..16"), ("uniform:8:zstd", "unexpected 'zstd'"),
    ("adaptive", "target rate"), ("adaptive:-3", "target rate"),
    ("adaptive:20:1", "MIN_BITS must be 2..16"), ("gzip", "unknown encoding"),
    ("float16:8", "takes no ':' arguments"),
    ("uniform:8:tokens", "unexpected 'tokens'"),
    ("uniform:8:token:sample", "give one of token or sample"),
    ("uniform:8:laplace:gelu", "unexpected 'laplace:gelu'"),
    ("float16:token", "takes no ':' arguments"),
    ("adaptive:20:4:token", "use uniform:BITS:token for a fixed width"),
])
def test_bad_encoding_syntax_names_the_fix(text, message):
    with pytest.raises(EncodingError, match=message) as err:
        parse_encoding(text, where="host b")
    assert "host b" in str(err.value) and "adaptive:ITEMS_PER_S" in str(err.value)


def _stages(*encodings: str) -> tuple[Deployment, list[deploy_mod.PlannedStage]]:
    hosts = tuple(Host(f"h{i}", f"127.0.0.1:{5000 + i}", encoding=e)
                  for i, e in enumerate(encodings))
    dep = Deployment(model="pipeedge/tiny-vit", hosts=hosts, encoding="adaptive:20:laplace")
    return dep, [deploy_mod.PlannedStage(h, LayerRange(i * 4 + 1, i * 4 + 4))
                 for i, h in enumerate(hosts)]


def test_assign_request_fields_per_host_and_cli_override():
    dep, stages = _stages("uniform:4:laplace", "", "float16")

    def req(stage_list, i):
        nxt = stage_list[i + 1].host.address if i + 1 < len(stage_list) else ""
        return deploy_mod.assign_request(dep, stage_list[i], nxt, pb.WeightSource())

    r0, r1, r2 = (req(stages, i) for i in range(3))
    assert (r0.output_encoding.kind, r0.output_encoding.bits, r0.output_encoding.clip,
            r0.target_items_per_s) == (pb.Encoding.UNIFORM, 4, "laplace", 0)
    # hosts.yml's top-level `encoding: adaptive:20:laplace` for the host without its own.
    assert r1.target_items_per_s == 20 and r1.output_encoding.clip == "laplace"
    # The last stage answers the client: never compressed, whatever hosts.yml says.
    assert not r2.HasField("output_encoding") and r2.target_items_per_s == 0

    # deploy -q: N-1 entries, or N with the last ignored; names work as well as widths.
    for quant in ("8,0", "8,0,4", "uniform:8,raw"):
        q = deploy_mod.apply_quant(stages, quant)
        a, b = req(q, 0), req(q, 1)
        assert (a.output_encoding.kind, a.output_encoding.bits) == (pb.Encoding.UNIFORM, 8)
        assert not b.HasField("output_encoding") and b.target_items_per_s == 0
    q = deploy_mod.apply_quant(stages, "adaptive:30:3,bfloat16")
    assert (req(q, 0).target_items_per_s, req(q, 0).adaptive_min_bits) == (30, 3)
    assert req(q, 1).output_encoding.kind == pb.Encoding.BFLOAT16
    for bad in ("8", "8,8,8,8", "8,1"):  # counts (DeployError), a bad width (EncodingError)
        with pytest.raises(PipeEdgeError):
            deploy_mod.apply_quant(stages, bad)


def test_check_assignment_rejects_what_the_stage_could_not_send():
    ok = pb.AssignRequest(next_hop="x:1", output_encoding=pb.Encoding(
        kind=pb.Encoding.UNIFORM, bits=8))
    check_assignment(ok)
    check_assignment(pb.AssignRequest(target_items_per_s=5, output_encoding=pb.Encoding(
        kind=pb.Encoding.UNIFORM, clip="gelu")))  # adaptive: only the clip matters
    for bad, msg in [
        (pb.Encoding(kind=pb.Encoding.UNIFORM, bits=40), "bits 2..16"),
        (pb.Encoding(kind=7), "kind 7 is unknown"),
        (pb.Encoding(kind=pb.Encoding.UNIFORM, bits=4, clip="max"), "clip 'max'"),
        (pb.Encoding(kind=pb.Encoding.FLOAT16, clip="laplace"), "only to uniform"),
        (pb.Encoding(kind=pb.Encoding.UNIFORM, bits=8, granularity=9), "granularity 9 is unknown"),
        (pb.Encoding(kind=pb.Encoding.FLOAT16, granularity=pb.Encoding.PER_ROW), "PER_ROW"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_assignment(pb.AssignRequest(output_encoding=bad))
    check_assignment(pb.AssignRequest(output_encoding=pb.Encoding(
        kind=pb.Encoding.UNIFORM, bits=8, granularity=pb.Encoding.PER_ROW)))
    with pytest.raises(ValueError, match="not to adaptive"):
        check_assignment(pb.AssignRequest(target_items_per_s=5, output_encoding=pb.Encoding(
            kind=pb.Encoding.UNIFORM, granularity=pb.Encoding.PER_ROW)))
    with pytest.raises(ValueError, match="target_items_per_s"):
        check_assignment(pb.AssignRequest(target_items_per_s=-1))
    with pytest.raises(ValueError, match="adaptive_min_bits"):
        check_assignment(pb.AssignRequest(target_items_per_s=5, adaptive_min_bits=1))


class FakeLink:
    """Feeds an OutputCompression frames encoded as it asks, 'sent' at `bytes_per_s`."""

    def __init__(self, ctrl: OutputCompression, clock: list[float], items: int = 4,
                 elems: int = 1000) -> None:
        self.ctrl, self.clock = ctrl, clock
        self.x = torch.randn(items, elems)

    def send(self, bytes_per_s: float, seconds: float) -> list[int]:
        """Send for `seconds` of fake time; returns the bits used per frame."""
        used = []
        end = self.clock[0] + seconds
        while self.clock[0] < end:
            frame = codec.encode_tensors(pb.Frame(), {"hidden": self.x}, self.ctrl.encoding())
            used.append(self.ctrl.bits)
            dt = codec.payload_bytes(frame.tensors) / bytes_per_s
            self.clock[0] += dt
            self.ctrl.record(frame, dt)
        return used


def _controller(target: float, **fields) -> tuple[OutputCompression, FakeLink]:
    clock = [0.0]
    ctrl = OutputCompression(pb.AssignRequest(stage_name="s", next_hop="x:1",
                                              target_items_per_s=target, **fields),
                             throttle=LinkThrottle("0"), clock=lambda: clock[0])
    return ctrl, FakeLink(ctrl, clock)


def test_controller_picks_widest_width_that_meets_target_and_recovers():
    # 4 items x 1000 floats per frame. At 40 kB/s: raw 10 items/s, float16 20, 8 bits 39.7.
    ctrl, link = _controller(35)
    assert ctrl.bits == 32 and ctrl.encoding() is None
    link.send(40_000, 3.0)
    assert ctrl.bits == 8
    assert ctrl.link_mbps == pytest.approx(0.32, rel=1e-6)
    assert set(link.send(40_000, 10.0)) == {8}  # stable: float16 (20/s) is far from 35
    # The link recovers: raw would carry 100 items/s >= 35 x 1.3 -> back to raw.
    link.send(400_000, 2.5)
    assert ctrl.bits == 32
    # Hysteresis: at 150 kB/s raw carries 37.5 items/s, above target: it stays raw.
    assert set(link.send(150_000, 5.0)) == {32}
    # Below target it steps down to the widest that fits: float16 carries 60 items/s.
    link.send(120_000, 2.0)
    assert ctrl.bits == 16


def test_controller_narrowest_when_nothing_fits_and_min_bits_clip():
    ctrl, link = _controller(1000, adaptive_min_bits=3, output_encoding=pb.Encoding(
        kind=pb.Encoding.UNIFORM, clip="laplace"))
    assert ctrl.ladder == (32, 16, 8, 6, 4, 3)
    link.send(40_000, 3.0)
    assert ctrl.bits == 3 and ctrl.encoding().clip == "laplace"
    # The clip applies at 4 bits and below only (it costs accuracy at 6+ bits).
    assert ctrl._encoding_for(6).clip == "" and ctrl._encoding_for(4).clip == "laplace"
    fixed = OutputCompression(pb.AssignRequest(next_hop="x:1", output_encoding=pb.Encoding(
        kind=pb.Encoding.UNIFORM, bits=6, clip="gelu")), throttle=LinkThrottle("0"))
    assert fixed.bits == 6 and fixed.encoding().clip == "gelu" and not fixed.adaptive


def test_controller_backs_off_when_a_step_up_does_not_hold():
    """A link that only looks fast while underused (buffers absorbing bursts) is probed less and
    less often: each undone step up doubles the hold before the next try."""
    ctrl, link = _controller(35)
    link.send(40_000, 3.0)
    assert ctrl.bits == 8
    tries = []
    for _ in range(4):
        start = link.clock[0]
        while ctrl.bits != 32:        # looks fast at 8 bits
            link.send(400_000, 0.25)
        tries.append(link.clock[0] - start)
        link.send(40_000, 1.5)        # but raw does not hold
        assert ctrl.bits == 8
    assert tries[0] < 3 and tries[1] > 2.5 and tries[2] > 6 and tries[3] > 14


def test_link_throttle_file_is_reread(tmp_path):
    path = tmp_path / "mbps"
    path.write_text("2")
    throttle = LinkThrottle(str(path))
    assert throttle.mbps() == 2.0
    start = time.perf_counter()
    throttle.pace(25_000)  # 200 kbit at 2 Mbit/s
    assert 0.09 < time.perf_counter() - start < 0.5
    path.write_text("0")
    time.sleep(0.06)
    assert throttle.mbps() == 0.0
    path.unlink()
    time.sleep(0.06)
    assert throttle.mbps() == 0.0 and LinkThrottle("3.5").mbps() == 3.5


SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
             "The stock market fell sharply today.", "Cats sleep a lot.",
             "A woman slices an onion.", "The train leaves at noon."]


def test_minilm_uniform8_per_token_at_every_cut_kind(minilm_path):
    """In process, through the codec and the wire format: uniform 8 bits with per-token params
    keeps the embeddings at cosine >= 0.999 after every kind of sub-layer (attention, attention
    out + residual, MLP intermediate, MLP out + residual), where per-sample params do not
    everywhere (docs/compression.md; bench/quant_accuracy.py covers all 23 cuts)."""
    from transformers import AutoTokenizer

    info = models.model_info(MINILM)
    state = models.load_shard_state(info, 1, info.num_layers, minilm_path)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    per_token = parse_encoding("uniform:8:token").encoding
    cosines = {}
    with torch.inference_mode():
        expected = models.build_shard(info, 1, info.num_layers, state)(inputs)["embeddings"]
        for cut in (9, 10, 11, 12):
            mid = models.build_shard(info, 1, cut, state)(inputs)
            frame = pb.Frame.FromString(
                codec.encode_tensors(pb.Frame(), mid, per_token).SerializeToString())
            for t in frame.tensors:
                if t.dtype == pb.FLOAT32:
                    assert t.encoding.granularity == pb.Encoding.PER_ROW
                    assert len(t.encoding.params) == 8 * math.prod(t.shape[:-1])
            tail = models.build_shard(info, cut + 1, info.num_layers, state)
            got = tail(codec.decode_tensors(frame.tensors))["embeddings"]
            cosines[cut] = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    assert all(c.mean().item() >= 0.999 for c in cosines.values()), cosines
