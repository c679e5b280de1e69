"""Activation compression between stages: configuration, bad encodings, accuracy, adaptation.

Unit tests first (encoding syntax, assignment fields, the adaptive controller on a fake clock),
then real stage processes on loopback: INVALID_ARGUMENT for bad encodings, MiniLM over 3 stages
with float16 and uniform 8 (accuracy and bytes on the wire), and the adaptive controller against
the in-process link throttle (PIPEEDGE_TEST_LINK_MBPS).
"""

from __future__ import annotations

import math
import time

import grpc
import pytest
import torch
from click.testing import CliRunner

from pipeedge import codec, models, wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import InvalidInputError, PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.cli import main as coord_cli
from pipeedge.coordinator.hosts import Deployment, Host, load_deployment
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.encoding import EncodingError
from pipeedge.encoding import parse as parse_encoding
from pipeedge.errors import PipeEdgeError
from pipeedge.partition import LayerRange
from pipeedge.stage_server import adaptive
from pipeedge.stage_server.adaptive import LinkThrottle, OutputCompression, check_assignment

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


# -- configuration --------------------------------------------------------------------------------

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


# -- the adaptive controller on a fake clock ------------------------------------------------------

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


# -- real stages: bad encodings -------------------------------------------------------------------

def _bad_encodings(x: torch.Tensor):
    """(label, wire tensor, message) triples of undecodable frames for `pixel_values`."""
    good = codec.encode_tensor("pixel_values", x, pb.Encoding(kind=pb.Encoding.UNIFORM, bits=8))

    def variant(**changes):
        t = pb.Tensor()
        t.CopyFrom(good)
        for key, value in changes.items():
            if key == "data":
                t.data = value
            else:
                setattr(t.encoding, key, value)
        return t

    return [
        ("unknown kind", variant(kind=9), "unknown encoding kind 9"),
        ("bits too small", variant(bits=1), "bits 1 is out of range"),
        ("bits too large", variant(bits=17), "bits 17 is out of range"),
        ("short payload", variant(data=good.data[:-1]), f"data has {len(good.data) - 1} bytes"),
        ("long payload", variant(data=good.data + b"\0"), f"data has {len(good.data) + 1} bytes"),
        ("params", variant(params=b"\0" * 4), "params has 4 bytes"),
        ("float16 size", variant(kind=pb.Encoding.FLOAT16), "2 bytes per element"),
        ("per-row params", variant(granularity=pb.Encoding.PER_ROW),
         f"params has {len(good.encoding.params)} bytes; expected {8 * math.prod(x.shape[:-1])}"),
        ("unknown granularity", variant(granularity=5), "unknown encoding granularity 5"),
    ]


def test_bad_encodings_are_invalid_argument(cluster_factory, monkeypatch):
    cluster = cluster_factory(1)
    address = cluster.stages[0].address
    ctl = StageControl("stage0", address)
    # An output encoding the stage could not send is refused at Assign.
    with pytest.raises(grpc.RpcError) as rpc:
        ctl.assign(pb.AssignRequest(model_name="pipeedge/tiny-vit", first_layer=1, last_layer=12,
                                    next_hop="127.0.0.1:9", output_encoding=pb.Encoding(
                                        kind=pb.Encoding.UNIFORM, bits=40)))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bits" in rpc.value.details()
    ctl.assign(pb.AssignRequest(model_name="pipeedge/tiny-vit", first_layer=1, last_layer=12,
                                weights=pb.WeightSource(random_seed=0)))
    info = models.model_info("pipeedge/tiny-vit")
    x = models.example_inputs(info, 2)["pixel_values"]
    cases = _bad_encodings(x)
    # Through the Infer rpc, frame by frame.
    for label, tensor, message in cases:
        with pytest.raises(grpc.RpcError) as rpc:
            ctl.stub.Infer(pb.Frame(request_id=label, tensors=[tensor]), timeout=20)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert message in rpc.value.details() and "pixel_values" in rpc.value.details(), label
    # A well-formed compressed input is accepted (a client may compress too).
    good = pb.Frame(request_id="good", tensors=[codec.encode_tensor(
        "pixel_values", x, pb.Encoding(kind=pb.Encoding.UNIFORM, bits=8))])
    assert ctl.stub.Infer(good, timeout=20).tensors[0].name == "logits"
    ctl.close()

    # Through the SDK: its frames are corrupted on the way out.
    from pipeedge.client import sdk

    bad = iter(cases)
    real_request_frame = sdk.request_frame

    def corrupt(request_id, inputs, timeout_s):
        frame = real_request_frame(request_id, inputs, timeout_s)
        if "bad" in inputs:
            frame.tensors[0] = wire.Tensor.from_message(next(bad)[1])
        return frame

    monkeypatch.setattr(sdk, "request_frame", corrupt)
    with PipelineClient(address) as client:
        with pytest.raises(InvalidInputError, match="unknown encoding kind 9") as err:
            client.infer({"pixel_values": x, "bad": torch.ones(1)})
        assert err.value.stage == "stage0" and err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # In a stream the bad frames fail at their positions; the good ones still succeed.
        batches = [{"pixel_values": x}, {"pixel_values": x, "bad": torch.ones(1)},
                   {"pixel_values": x}]
        stream = client.infer_many(batches, window=3)
        first = next(stream)
        with pytest.raises(InvalidInputError, match="bits 1 is out of range"):
            next(stream)
        assert torch.equal(first["logits"], client.infer({"pixel_values": x})["logits"])


# -- real stages: MiniLM over 3 processes ---------------------------------------------------------

SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
             "The stock market fell sharply today.", "Cats sleep a lot.",
             "A woman slices an onion.", "The train leaves at noon."]


def _expected_bytes(shapes: dict[str, tuple[int, ...]], floats: set[str], bits: int,
                    per_row: bool = False) -> int:
    """Payload of one frame: float tensors at `bits` (uniform adds 8 bytes per sample, or per
    row of the last dimension with `per_row`)."""
    total = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        if name not in floats:
            total += n * 8  # attention_mask, int64, always raw
        elif bits in (32, 16):
            total += n * bits // 8
        else:
            total += math.ceil(n * bits / 8) + 8 * (math.prod(shape[:-1]) if per_row
                                                    else shape[0])
    return total


def test_minilm_float16_and_uniform8_over_three_processes(cluster_factory, minilm_path):
    """Raw, float16, uniform 8 and uniform 8 per token (`uniform:8:token`) over 3 processes."""
    from transformers import AutoTokenizer

    info = models.model_info(MINILM)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, minilm_path))
    with torch.inference_mode():
        expected = full(inputs)["embeddings"]
    # Cuts after layers 9 and 17: sub-layer 1 (hidden + residual cross). See the docs/compression.md table for
    # the other cut kinds (8 bits after the MLP intermediate gives ~0.998).
    partition = "1,9,10,17,18,24"
    batch, seq = inputs["input_ids"].shape
    shapes = {"hidden": (batch, seq, 384), "residual": (batch, seq, 384),
              "attention_mask": (batch, seq)}
    cluster = cluster_factory(3)
    weights = f"push:{minilm_path}"

    def run(bits: int, hosts_file_kw: dict | None = None, cli_quant: str | None = None,
            per_row: bool = False):
        hosts = cluster.hosts_file(MINILM, partition=partition, weights=weights,
                                   **(hosts_file_kw or {}))
        if cli_quant is None:
            dep = load_deployment(hosts)
            pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
            entry = pipeline.entry
        else:
            result = CliRunner().invoke(coord_cli, ["deploy", str(hosts), "-q", cli_quant,
                                                    "--no-progress"])
            assert result.exit_code == 0, result.output
            entry = cluster.stages[0].address
        with PipelineClient(entry) as client:
            got = client.infer(inputs)["embeddings"]
        statuses = []
        for s in cluster.stages:
            ctl = StageControl(s.name, s.address)
            statuses.append(ctl.status())
            ctl.close()
        assert [st.output_bits for st in statuses] == [bits, bits, 0]
        for st in statuses[:2]:
            assert st.bytes_sent == _expected_bytes(shapes, {"hidden", "residual"}, bits,
                                                    per_row)
        cos = torch.nn.functional.cosine_similarity(got, expected, dim=1)
        return got, cos, statuses

    got, cos, raw = run(32)
    assert (got - expected).abs().max().item() <= 1e-5
    got, cos, half = run(16, {"encoding": "float16"})
    assert (got - expected).abs().max().item() <= 2e-3 and cos.min().item() >= 0.99999
    got, cos, u8 = run(8, cli_quant="8,8,0")
    assert cos.mean().item() >= 0.999 and cos.min().item() >= 0.998, cos
    for r, h, u in zip(raw[:2], half[:2], u8[:2]):
        # Bytes shrink by the implied ratio: floats are 99% of the payload (the int64 mask and
        # the 8 bytes per sample of uniform params make up the rest).
        assert h.bytes_sent / r.bytes_sent == pytest.approx(16 / 32, abs=0.01)
        assert u.bytes_sent / r.bytes_sent == pytest.approx(8 / 32, abs=0.01)
    # The same sentences still rank the same way.
    sim = got @ got.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    # Per-token params (hosts.yml `encoding: uniform:8:token`): 8 bytes per token instead of per
    # sample, and >= 0.999 where per sample is not at every cut (see the in-process test below).
    got, cos, u8t = run(8, {"encoding": "uniform:8:token"}, per_row=True)
    assert cos.mean().item() >= 0.999 and cos.min().item() >= 0.999, cos
    for r, u, t in zip(raw[:2], u8[:2], u8t[:2]):
        tokens = 2 * batch * seq  # hidden and residual
        assert t.bytes_sent - u.bytes_sent == 8 * (tokens - 2 * batch)
        assert t.bytes_sent / r.bytes_sent == pytest.approx(8 / 32, abs=0.01)
    # A -q that does not match the stage count is a one-line error.
    hosts = cluster.hosts_file(MINILM, partition=partition, weights=weights)
    result = CliRunner().invoke(coord_cli, ["deploy", str(hosts), "-q", "8", "--no-progress"])
    assert result.exit_code == 2 and "-q 8 has 1 entries for 3 stage(s)" in result.output


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


# -- real stages: adaptive compression against a throttled link ----------------------------------

ITEMS, ELEMS = 4, 16384          # 4 items of 64 KiB float32 per microbatch
LINK_MBPS = 8.0                  # raw: ~15 items/s, float16 ~30, 8 bits ~61
TARGET = 40.0


def _stream(client, seconds: float, stop=None) -> list[float]:
    """Stream microbatches for about `seconds` (or until `stop()`); arrival time per result."""
    x = {"hidden": torch.randn(ITEMS, ELEMS)}
    deadline = time.monotonic() + seconds

    def batches():
        while time.monotonic() < deadline and not (stop and stop()):
            yield x

    return [time.monotonic() for _ in client.infer_many(batches(), window=4)]


def _rate(arrivals: list[float], last: int) -> float:
    tail = arrivals[-last:]
    return (len(tail) - 1) * ITEMS / (tail[-1] - tail[0])


def test_adaptive_meets_target_on_a_throttled_link_and_widens_when_it_recovers(
        cluster_factory, tmp_path, monkeypatch):
    throttle = tmp_path / "link_mbps"
    throttle.write_text(str(LINK_MBPS))
    monkeypatch.setenv(adaptive.TEST_LINK_ENV, str(throttle))  # read by the stage processes
    cluster = cluster_factory(2)
    first, last = (StageControl(s.name, s.address) for s in cluster.stages)
    last.assign(pb.AssignRequest(backend=pb.ECHO))

    def assign_first(**fields):
        first.assign(pb.AssignRequest(backend=pb.ECHO, next_hop=cluster.stages[1].address,
                                      **fields))

    with PipelineClient(cluster.stages[0].address) as client:
        # Raw float32 cannot reach the target through this link.
        assign_first()
        raw_rate = _rate(_stream(client, 2.5), 6)
        st = first.status()
        assert st.output_bits == 32 and st.link_mbps == pytest.approx(LINK_MBPS, rel=0.25)
        assert raw_rate < 0.5 * TARGET, raw_rate

        # Adaptive: narrows to the widest width that fits (8 bits here) and meets the target.
        assign_first(target_items_per_s=TARGET)
        arrivals = _stream(client, 4.5)
        st = first.status()
        assert st.output_bits == 8, st
        assert _rate(arrivals, 30) >= TARGET, _rate(arrivals, 30)

        # The throttle is lifted: the controller goes back to raw.
        throttle.write_text("0")
        arrivals = _stream(client, 15.0, stop=lambda: first.status().output_bits == 32)
        assert first.status().output_bits == 32
    first.close()
    last.close()
