"""Fuzz the stage server with malformed Forward/Infer frames and Assign requests.

Every malformed message must get a gRPC error status (never OK, never a hang, never a crash),
the server must stay up, and valid requests interleaved with the fuzz (and running
concurrently from another client) must keep returning exactly the unsplit model's output.

Deterministic (fixed seeds), tiny model, two stage processes (the entry and its next hop).
"""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
import torch

from pipeedge import codec, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.errors import status_from_int

MODEL = "pipeedge/tiny-vit"
MICROBATCH = 4
SEED = 20240611
CALL_TIMEOUT_S = 20.0  # a client-side deadline here means the server hung: a failure
INFER = "/pipeedge.v1.Stage/Infer"
FORWARD = "/pipeedge.v1.Stage/Forward"
# Every wire dtype the codec knows, and a few it does not.
DTYPES = [pb.FLOAT32, pb.FLOAT16, pb.BFLOAT16, pb.INT64, pb.INT32, pb.BOOL, pb.UINT8, pb.INT8]
ITEMSIZE = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.BFLOAT16: 2, pb.INT64: 8, pb.INT32: 4, pb.BOOL: 1,
            pb.UINT8: 1, pb.INT8: 1}
NON_FLOAT = [pb.INT64, pb.INT32, pb.BOOL, pb.UINT8, pb.INT8]
BAD_DTYPES = [pb.DTYPE_UNSPECIFIED, 9, 42, 1 << 20, (1 << 31) - 1, -1]


# -- malformed frames -----------------------------------------------------------------------------
class FrameFuzzer:
    """Builds malformed request frames for a shard whose valid input is `valid` (one tensor per
    name, float activations/pixels); each case is invalid by construction."""

    def __init__(self, rng: random.Random, valid: dict[str, torch.Tensor]) -> None:
        self.rng = rng
        self.valid = valid
        self.names = list(valid)
        self.n = 0

    def _frame(self, tensors: list[pb.Tensor]) -> pb.Frame:
        self.n += 1
        frame = pb.Frame(request_id=f"fuzz-{self.n}")
        frame.tensors.extend(tensors)
        return frame

    def _good_tensors(self, batch: int | None = None) -> list[pb.Tensor]:
        out = []
        for name, t in self.valid.items():
            if batch is not None:
                t = torch.randn(batch, *t.shape[1:], generator=torch.Generator().manual_seed(
                    self.rng.randrange(1 << 30))).to(t.dtype)
            out.append(codec.encode_tensor(name, t))
        return out

    def _mutated(self, mutate) -> pb.Frame:
        tensors = self._good_tensors()
        i = self.rng.randrange(len(tensors))
        mutate(tensors[i])
        return self._frame(tensors)

    # Each case returns one frame that no shard may accept.
    def wrong_dtype(self) -> pb.Frame:
        def m(t):
            if self.rng.random() < 0.5:  # a dtype the codec does not know
                t.dtype = self.rng.choice(BAD_DTYPES)
            else:  # a known integer dtype, byte length consistent with it
                t.dtype = self.rng.choice(NON_FLOAT)
                t.data = bytes(len(t.data) // 4 * ITEMSIZE[t.dtype])
        return self._mutated(m)

    def negative_shape(self) -> pb.Frame:
        def m(t):
            dims = list(t.shape)
            dims[self.rng.randrange(len(dims))] = -self.rng.choice([1, 2, 3, 1 << 31, (1 << 63)])
            t.shape[:] = dims
        return self._mutated(m)

    def huge_shape(self) -> pb.Frame:
        def m(t):
            dims = list(t.shape)
            big = self.rng.choice([1 << 31, (1 << 32) + 1, 1 << 40, (1 << 62), (1 << 63) - 1])
            dims[self.rng.randrange(len(dims))] = big
            if self.rng.random() < 0.4:  # zero elements, but enormous strides
                dims[self.rng.randrange(len(dims))] = 0
                t.data = b""
            t.shape[:] = dims
        return self._mutated(m)

    def wrong_rank_or_dims(self) -> pb.Frame:
        def m(t):
            r = self.rng.random()
            if r < 0.3:
                t.shape[:] = [self.rng.randrange(1, 4) for _ in range(self.rng.randrange(0, 40))]
            elif r < 0.6:  # same element count, other layout
                numel = len(t.data) // ITEMSIZE[t.dtype]
                t.shape[:] = [numel]
            else:  # a fixed dimension off by some amount, bytes consistent with it
                dims = list(t.shape)
                j = self.rng.randrange(1, len(dims))
                dims[j] = max(1, dims[j] + self.rng.choice([-3, -1, 1, 2, 7]))
                t.shape[:] = dims
                numel = 1
                for d in dims:
                    numel *= d
                t.data = bytes(numel * ITEMSIZE[t.dtype])
            if len(t.shape) == len(self.valid[t.name].shape) and list(t.shape) == list(
                    self.valid[t.name].shape):
                t.shape.append(1)
        return self._mutated(m)

    def byte_length(self) -> pb.Frame:
        def m(t):
            size = len(t.data)
            new = self.rng.choice([0, 1, size - 1, size + 1, size - 4, size + 4, size * 2,
                                   size // 2, self.rng.randrange(0, size * 2 + 2)])
            if new == size:
                new += 3
            t.data = (t.data * 3)[:new] if new > 0 else b""
        return self._mutated(m)

    def tensor_count(self) -> pb.Frame:
        r = self.rng.random()
        if r < 0.25:
            return self._frame([])
        tensors = self._good_tensors()
        if r < 0.5:  # a duplicate
            tensors.append(pb.Tensor().FromString(tensors[0].SerializeToString()))
        elif r < 0.75:  # extra tensors with other names
            for k in range(self.rng.randrange(1, 30)):
                t = codec.encode_tensor(self.rng.choice(["hidden", "residual", "x", f"t{k}",
                                                         "attention_mask"]) + f"_{k}",
                                        torch.zeros(1, 2))
                tensors.append(t)
        else:  # the right tensor under a wrong name
            names = ["", "hidden", "residual", "PIXEL_VALUES", "pixel_values ", "\u00e9\u4e2d",
                     "x" * 1000, "y" * 20_000]
            tensors[0].name = self.rng.choice([n for n in names if n not in self.names])
        return self._frame(tensors)

    def too_big_batch(self) -> pb.Frame:
        return self._frame(self._good_tensors(batch=self.rng.randrange(MICROBATCH + 1, 12)))

    def empty_batch(self) -> pb.Frame:
        def m(t):
            t.shape[0] = 0
            t.data = b""
        return self._mutated(m)

    def bad_encoding(self) -> pb.Frame:
        def m(t):
            numel = len(t.data) // ITEMSIZE[t.dtype]
            r = self.rng.random()
            if r < 0.25:
                t.encoding.kind = self.rng.choice([4, 5, 99, -1])
                t.data = bytes(self.rng.randrange(0, 64))
            elif r < 0.5:  # uniform with impossible bits
                t.encoding.kind = pb.Encoding.UNIFORM
                t.encoding.bits = self.rng.choice([0, 1, 17, 32, 64, 1 << 31])
                t.encoding.params = bytes(8 * t.shape[0])
                t.data = bytes(numel)
            elif r < 0.75:  # uniform with wrong params or data length
                t.encoding.kind = pb.Encoding.UNIFORM
                t.encoding.bits = self.rng.randrange(2, 17)
                packed = (numel * t.encoding.bits + 7) // 8
                if self.rng.random() < 0.5:
                    t.encoding.params = bytes(8 * t.shape[0] + self.rng.choice([-8, -1, 1, 8]))
                    t.data = bytes(packed)
                else:
                    t.encoding.params = bytes(8 * t.shape[0])
                    t.data = bytes(packed + self.rng.choice([-1, 1, 17]))
            else:  # half precision with the wrong byte count, or on an integer tensor
                t.encoding.kind = self.rng.choice([pb.Encoding.FLOAT16, pb.Encoding.BFLOAT16])
                if self.rng.random() < 0.5:
                    t.data = bytes(2 * numel + self.rng.choice([-2, -1, 1, 2]))
                else:
                    t.dtype = self.rng.choice(NON_FLOAT)
                    t.data = bytes(2 * numel)
        return self._mutated(m)

    def frame_fields(self) -> pb.Frame:
        frame = self._frame(self._good_tensors())
        r = self.rng.random()
        if r < 0.5:  # a request may not carry an error
            frame.error.code = self.rng.choice([1, 2, 3, 13, 14, 99])
            frame.error.message = "x" * self.rng.randrange(0, 200)
        else:  # already expired
            frame.deadline_unix_ms = self.rng.choice([1, 1000, int(time.time() * 1000) - 60_000])
        return frame

    def random_tensor(self) -> pb.Frame:
        """Random field values everywhere (fixed names so it is about content)."""
        tensors = []
        for name in self.names:
            shape = [self.rng.choice([-1, 0, 1, 2, 3, 17, 1 << 33]) for _ in
                     range(self.rng.randrange(0, 6))]
            t = pb.Tensor(name=name, dtype=self.rng.choice(DTYPES + BAD_DTYPES), shape=shape,
                          data=self.rng.randbytes(self.rng.randrange(0, 300)))
            if self.rng.random() < 0.3:
                t.encoding.kind = self.rng.randrange(0, 5)
                t.encoding.bits = self.rng.randrange(0, 20)
                t.encoding.params = self.rng.randbytes(self.rng.randrange(0, 40))
            tensors.append(t)
        return self._frame(tensors)

    CASES = ("wrong_dtype", "negative_shape", "huge_shape", "wrong_rank_or_dims", "byte_length",
             "tensor_count", "too_big_batch", "empty_batch", "bad_encoding", "frame_fields",
             "random_tensor")

    def next(self) -> tuple[str, pb.Frame]:
        kind = self.CASES[self.n % len(self.CASES)]
        return kind, getattr(self, kind)()


def raw_payloads(rng: random.Random, valid_frame: bytes, count: int) -> list[tuple[str, bytes]]:
    """Bytes that are not a valid request: random, or a valid frame truncated. The valid frame
    has only request_id and tensors, so any strict prefix lacks (part of) the tensor."""
    out = []
    for i in range(count):
        if i % 2 == 0:
            out.append(("random_bytes", rng.randbytes(rng.choice([0, 1, 2, 7, 64, 1000, 5000]))))
        else:
            out.append(("truncated", valid_frame[:rng.randrange(0, len(valid_frame))]))
    return out


# -- malformed assignments ------------------------------------------------------------------------
def bad_assignments(rng: random.Random, count: int) -> list[tuple[str, pb.AssignRequest]]:
    info = models.model_info(MODEL)
    layers = info.num_layers
    vit_cfg = ('{"architectures": ["ViTForImageClassification"], "hidden_size": %s, '
               '"num_hidden_layers": %s, "num_attention_heads": %s, "intermediate_size": 8, '
               '"image_size": 32, "patch_size": %s, "num_channels": 3}')

    def base() -> pb.AssignRequest:
        return pb.AssignRequest(model_name=MODEL, first_layer=1, last_layer=layers,
                                weights=pb.WeightSource(random_seed=rng.randrange(100)),
                                max_microbatch=MICROBATCH)

    def case(i: int) -> tuple[str, pb.AssignRequest]:
        r = base()
        k = i % 9
        if k == 0:
            r.model_name = rng.choice([
                "", "fuzz/" + rng.randbytes(8).hex(), "google/vit-base", "../../etc/passwd",
                "pipeedge/tiny-vit\x00", "\u4e2d\u6587/model", "x" * 5000,
                "pipeedge/TINY-VIT"])
            return "unknown_model", r
        if k == 1:
            first, last = rng.choice([
                (0, 0), (0, layers), (layers, layers - 1), (1, layers + 1),
                (layers + 1, layers + 1), ((1 << 32) - 1, (1 << 32) - 1), (1, (1 << 32) - 1),
                (rng.randrange(2, layers + 1), 1), (layers + rng.randrange(1, 1000),
                                                    layers + 1000)])
            r.first_layer, r.last_layer = first, last
            return "layer_range", r
        if k == 2:
            r.dtype = rng.choice(NON_FLOAT + [9, 99, (1 << 31) - 1, -3])
            return "wrong_dtype", r
        if k == 3:
            r.backend = rng.choice([4, 5, 99, -1, (1 << 31) - 1])
            return "unknown_backend", r
        if k == 4:
            r.device = rng.choice(["tpu", "meta", "cuda:x", "gpu", "cpu;rm -rf /", "cuda:-1",
                                   "cuda:99999", "\u00e9", "cpu:abc", " cpu"])
            return "bad_device", r
        if k == 5:
            which = rng.randrange(4)
            if which == 0:
                r.weights.pushed_sha256 = rng.choice(["", "zz", "A" * 64, "0" * 63,
                                                      "../" + "0" * 61, rng.randbytes(32).hex()])
            elif which == 1:
                r.weights.local_path = rng.choice(["/nonexistent/model", "/etc/passwd",
                                                   "/etc", "", "relative/dir", "/proc/self"])
            else:
                r.model_config_json = rng.choice([
                    "{", "[]", "null", "1", '"str"', '{"architectures": ["Nope"]}',
                    '{"architectures": 5}', '{"hidden_size": "x"}',
                    vit_cfg % (-4, 3, 2, 8), vit_cfg % (8, 3, 0, 8), vit_cfg % (8, 3, 2, 0),
                    vit_cfg % (8, -1, 2, 8), vit_cfg % ('"x"', 3, 2, 8), vit_cfg % (8, 3, 3, 8)])
            return "bad_weights_or_config", r
        if k == 6:
            r.output_encoding.kind = rng.choice([4, 99, -1, pb.Encoding.UNIFORM])
            if r.output_encoding.kind == pb.Encoding.UNIFORM:
                r.output_encoding.bits = rng.choice([0, 1, 17, 1000])
            r.next_hop = "127.0.0.1:9"
            return "bad_output_encoding", r
        if k == 8 and i % 2:  # limits on what an assignment may ask of the process
            setattr(r, rng.choice(["threads", "queue_in", "queue_out"]),
                    rng.choice([(1 << 31) - 1, (1 << 32) - 1, 100_000]))
            return "over_limits", r
        if k == 7:  # several things wrong at once
            r.model_name = "fuzz/" + str(i)
            r.first_layer, r.last_layer = rng.randrange(1 << 32), rng.randrange(1 << 32)
            r.dtype = rng.choice(BAD_DTYPES)
            return "combined", r
        # random bytes for every string field, random numbers for every number field
        r = pb.AssignRequest(model_name=rng.randbytes(12).hex(), first_layer=rng.randrange(1 << 32),
                             last_layer=rng.randrange(1 << 32),
                             backend=rng.choice([0, 1, 2, 4, 5, 6]),  # ECHO takes any model
                             dtype=rng.randrange(12), device=rng.choice(["cpu", "", "zz"]),
                             max_microbatch=rng.randrange(1 << 32),
                             queue_in=rng.randrange(1 << 32), model_config_json=rng.choice(
                                 ["", "{}", rng.randbytes(16).hex()]))
        return "random_fields", r

    return [case(i) for i in range(count)]


# -- the test -------------------------------------------------------------------------------------
class Background(threading.Thread):
    """A second, well-behaved client streaming valid requests the whole time."""

    def __init__(self, entry: str, batches, expected) -> None:
        super().__init__(name="valid-traffic", daemon=True)
        self.entry, self.batches, self.expected = entry, batches, expected
        self.stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with PipelineClient(self.entry, timeout_s=CALL_TIMEOUT_S, max_retries=0) as client:
            while not self.stop.is_set():
                try:
                    for i, out in enumerate(client.infer_many(self.batches, window=2)):
                        if not torch.equal(out["logits"], self.expected[i]):
                            self.failures.append(f"background result {i} differs")
                        self.done += 1
                except Exception as exc:  # noqa: BLE001
                    self.failures.append(f"background: {type(exc).__name__}: {exc}")
                    return


def _is_hang(err: grpc.RpcError) -> bool:
    """Client-side deadline: the server never answered (the stage's own expiry says why)."""
    return err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and err.details() == "Deadline Exceeded"


@pytest.mark.timeout(180)
def test_fuzz_forward_infer_and_assign(cluster_factory):
    started = time.monotonic()
    cluster = cluster_factory(2)
    dep = load_deployment(cluster.hosts_file(MODEL, partition="1,3,4,12", microbatch=MICROBATCH))
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    entry, second = cluster.stages[0].address, cluster.stages[1].address
    info = models.model_info(MODEL)

    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, 0))
    valid = [models.example_inputs(info, 1 + s % MICROBATCH, seed=100 + s) for s in range(4)]
    with torch.inference_mode():
        expected = [full(v)["logits"] for v in valid]
    # The second stage takes activations: fuzz those too.
    first = models.build_shard(info, 1, 3, models.load_shard_state(info, 1, 3, 0))
    with torch.inference_mode():
        hidden = first(valid[1])

    channels_ = {a: grpc.insecure_channel(a) for a in (entry, second)}
    stubs = {a: pb_grpc.StageStub(c) for a, c in channels_.items()}
    raw_infer = channels_[entry].unary_unary(INFER, request_serializer=None,
                                             response_deserializer=None)
    raw_forward = channels_[entry].stream_stream(FORWARD, request_serializer=None,
                                                 response_deserializer=None)

    def status(address: str) -> pb.StageStatus:
        return stubs[address].Status(pb.StatusRequest(), timeout=CALL_TIMEOUT_S)

    ids_before = {a: status(a).assignment_id for a in (entry, second)}
    background = Background(entry, valid, expected)
    background.start()

    rng = random.Random(SEED)
    fuzz = {entry: FrameFuzzer(random.Random(SEED + 1), {"pixel_values": valid[0]["pixel_values"]}),
            second: FrameFuzzer(random.Random(SEED + 2), hidden)}
    counts: dict[str, int] = {}
    codes: dict[str, int] = {}
    examples: dict[str, str] = {}  # one message per status code, for the summary
    problems: list[str] = []
    checked = 0

    def expect_error(kind: str, call) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        try:
            call()
        except grpc.RpcError as err:
            if _is_hang(err):
                problems.append(f"{kind}: no answer within {CALL_TIMEOUT_S}s")
            if "Stream removed" in (err.details() or ""):  # the status itself did not fit
                problems.append(f"{kind}: {err.details()[:200]}")
            codes[err.code().name] = codes.get(err.code().name, 0) + 1
            examples.setdefault(err.code().name, f"{kind}: {(err.details() or '')[:160]}")
            return
        problems.append(f"{kind}: malformed request got OK")

    def check_valid(client: PipelineClient, i: int) -> None:
        nonlocal checked
        out = client.infer(valid[i % len(valid)])["logits"]
        if not torch.equal(out, expected[i % len(valid)]):
            diff = (out - expected[i % len(valid)]).abs().max().item()
            if diff > 1e-5:
                problems.append(f"valid request {i} differs from unsplit by {diff}")
        checked += 1

    with PipelineClient(entry, timeout_s=CALL_TIMEOUT_S, max_retries=0) as client:
        # 1. Typed frames through Infer: 1,320 at the entry, 330 at the second stage.
        for i in range(1650):
            target = entry if i % 5 else second
            kind, frame = fuzz[target].next()
            expect_error(f"infer/{kind}", lambda t=target, f=frame: stubs[t].Infer(
                f, timeout=CALL_TIMEOUT_S))
            if i % 50 == 0:
                check_valid(client, i)
        # 2. Raw bytes through a generic method: random and truncated frames.
        good = pb.Frame(request_id="valid-bytes")
        codec.encode_tensors(good, valid[0])
        good_bytes = good.SerializeToString()
        for i, (kind, payload) in enumerate(raw_payloads(rng, good_bytes, 300)):
            expect_error(f"raw/{kind}", lambda p=payload: raw_infer(p, timeout=CALL_TIMEOUT_S))
            if i % 50 == 0:
                check_valid(client, i)
        assert raw_infer(good_bytes, timeout=CALL_TIMEOUT_S)  # the untruncated bytes are fine
        # 3. Forward streams: malformed frames mixed with valid ones in one stream; every
        # malformed one comes back as an error frame, every valid one with the right result.
        for s in range(10):
            frames, want = [], {}
            for j in range(20):
                if j % 4 == 0:
                    f = pb.Frame(request_id=f"ok-{s}-{j}")
                    codec.encode_tensors(f, valid[j % len(valid)])
                    want[f.request_id] = expected[j % len(valid)]
                else:
                    kind, f = fuzz[entry].next()
                    f.request_id = f"bad-{s}-{j}-{kind}"
                    counts["forward/" + kind] = counts.get("forward/" + kind, 0) + 1
                frames.append(f)
            results = list(stubs[entry].Forward(iter(frames), timeout=CALL_TIMEOUT_S))
            assert sorted(r.request_id for r in results) == sorted(f.request_id for f in frames)
            for r in results:
                if r.request_id in want:
                    assert not r.error.code, r.error.message
                    got = codec.decode_tensors(r.tensors)["logits"]
                    assert torch.equal(got, want[r.request_id]), r.request_id
                elif not r.error.code:
                    problems.append(f"forward {r.request_id}: malformed frame got a result")
                else:
                    name = status_from_int(r.error.code).name
                    codes[name] = codes.get(name, 0) + 1
        # Raw bytes on a stream: undecodable messages end that stream with an error status.
        for i in range(20):
            payloads = [rng.randbytes(rng.randrange(1, 200)) for _ in range(3)]
            expect_error("forward/raw", lambda p=payloads: list(raw_forward(
                iter(p), timeout=CALL_TIMEOUT_S)))
        # 4. Assign: 450 malformed assignments to the entry stage.
        for i, (kind, request) in enumerate(bad_assignments(rng, 450)):
            expect_error(f"assign/{kind}", lambda r=request: stubs[entry].Assign(
                r, timeout=CALL_TIMEOUT_S))
            if i % 50 == 0:
                check_valid(client, i)
        check_valid(client, 0)

    background.stop.set()
    background.join(timeout=CALL_TIMEOUT_S * 2)
    total = sum(counts.values())
    summary = f"{total} malformed messages; kinds {counts}; codes {codes}"
    assert not problems, "\n".join(problems[:20]) + "\n" + summary
    assert not background.failures, background.failures[:5]
    assert background.done > 0 and checked >= 40
    assert total >= 2000, summary
    # Both stages are still up, serving, and still hold the assignment deploy gave them.
    for s in cluster.stages:
        assert s.process.poll() is None, s.log_path.read_text()[-2000:]
    assert {a: status(a).assignment_id for a in (entry, second)} == ids_before
    for c in channels_.values():
        c.close()
    assert pipeline.entry == entry
    print(f"\nfuzz: {summary}; {checked} interleaved + {background.done} background valid "
          f"requests correct; {time.monotonic() - started:.1f}s")
    for code, example in sorted(examples.items()):
        print(f"  {code}: {example}")
