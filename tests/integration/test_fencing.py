"""No wrong answer, ever: the regression tests of issue 13's cases, each at its awkward moment.

Every result is compared with the unsplit model; a request may fail (typed, retryable) but is
never computed by layer ranges of two deployments (docs/failure-model.md).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeedge import codec, models
from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.control_plane import ControlPlane, start_server
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.partition import parse_partition

MODEL = "pipeedge/tiny-vit"
PARTITION = "1,4,5,8,9,12"


@pytest.fixture(scope="module")
def reference():
    """The unsplit model: inputs -> logits, independent of any pipeline."""
    info = models.model_info(MODEL)
    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, 0))

    def expect(x):
        with torch.inference_mode():
            return full(x)["logits"]

    return info, expect


def _wait(predicate, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


def _plane(cluster, *, partition=PARTITION, hosts=None, port: int = 0, **kwargs):
    dep = load_deployment(cluster.hosts_file(MODEL, partition=partition, microbatch=2,
                                             **({"hosts": hosts} if hosts else {})))
    plane = ControlPlane(dep, pipeline_path=cluster.workdir / "pipeline.json",
                         check_interval_s=0.2, check_timeout_s=1.0, **kwargs)
    plane.start()
    plane.start_watching()
    server, bound = start_server(plane, f"127.0.0.1:{port}")
    return plane, server, bound


def _frame(rid: str, x, epoch: int) -> pb.Frame:
    return codec.encode_tensors(pb.Frame(request_id=rid, epoch=epoch), x)


def _forward(address: str, frames: list[pb.Frame]) -> list[pb.Frame]:
    with grpc.insecure_channel(address) as ch:
        return list(pb_grpc.StageStub(ch).Forward(iter(frames), timeout=30))


def test_a_stage_computes_only_frames_of_its_own_epoch(cluster_factory, reference):
    """Case 2's interleaving, made deterministic: a re-plan has assigned the last stage (last
    first) while the entry still holds the old plan. Old-epoch frames must fail, not skip or
    repeat layers."""
    info, expect = reference
    cluster = cluster_factory(3)
    dep = load_deployment(cluster.hosts_file(MODEL, partition=PARTITION, microbatch=2))
    old = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    epoch = old.version
    x = models.example_inputs(info, 2, seed=1)
    # In its own epoch (or unknown: epoch 0 is stamped by the layer-1 stage) it is correct.
    for sent in (epoch, 0):
        [out] = _forward(old.entry, [_frame("a", x, sent)])
        assert not out.error.code and out.epoch == epoch
        assert (codec.decode_tensors(out.tensors)["logits"] - expect(x)).abs().max() <= 1e-5
    # The re-plan's first Assign: the last stage now holds layers 5-12 of a newer epoch.
    req = deploy_mod.assign_request(dep, deploy_mod.PlannedStage(
        dep.hosts[2], parse_partition("1,4,5,12", 12)[1]), "",
        dep.weights.to_proto())
    req.epoch = epoch + 1
    ctl = StageControl("stage2", cluster.stages[2].address)
    try:
        ctl.assign(req)
        with pytest.raises(grpc.RpcError) as refused:  # and an older epoch cannot come back
            req.epoch = epoch
            ctl.assign(req)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        ctl.close()
    frames = [_frame(f"r{i}", x, e) for i, e in enumerate([epoch] * 5 + [0] * 5)]
    for out in _forward(old.entry, frames):
        assert out.error.code == grpc.StatusCode.ABORTED.value[0], "computed across two plans"
        assert "epoch" in out.error.message and not out.tensors
    # A frame that skips the entry must name an epoch: epoch 0 at layer 5 is refused.
    [out] = _forward(cluster.stages[1].address, [_frame("h", {"hidden": torch.zeros(2, 5, 32)},
                                                        0)])
    assert out.error.code == grpc.StatusCode.ABORTED.value[0]


def test_open_streams_never_starve_health_and_status(cluster_factory, reference):
    """Case 1: a flood of open streams (70 here) must not make the stage look dead; past
    --max-streams a stream is refused in one line, and requests still compute correctly."""
    info, expect = reference
    cluster = cluster_factory(1, extra_args=("--max-streams", "70"))
    dep = load_deployment(cluster.hosts_file(MODEL, partition="1,12", microbatch=2))
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    channel = grpc.insecure_channel(pipeline.entry)
    stub = pb_grpc.StageStub(channel)
    idle = threading.Event()

    def quiet():
        idle.wait(60)
        return
        yield  # an open stream that never sends

    calls = [stub.Forward(quiet()) for _ in range(69)]
    try:
        x = models.example_inputs(info, 2, seed=3)
        with PipelineClient(pipeline.entry, timeout_s=10) as client:  # stream 70
            for _ in range(3):
                t0 = time.monotonic()
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2)
                status = StageControl("stage0", pipeline.entry).status(timeout_s=2)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                assert status.assigned and time.monotonic() - t0 < 2
                got = list(client.infer_many([x, x], window=2))  # a 70th open stream
                assert all((g["logits"] - expect(x)).abs().max() <= 1e-5 for g in got)
            calls.append(stub.Forward(quiet()))  # the 70th stays open
            refused = None
            deadline = time.monotonic() + 20
            while refused is None:  # (once the server has started all 70 handlers)
                assert time.monotonic() < deadline, (
                    "stream 71 was never refused; open streams that ended: "
                    f"{[(c.code(), c.details()) for c in calls if c.done()]}")
                if calls[-1].done():  # refused while the client's last stream was closing
                    calls.append(stub.Forward(quiet()))
                try:
                    list(stub.Forward(iter([_frame("z", x, 0)]), timeout=10))
                except grpc.RpcError as exc:
                    refused = exc
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams" in refused.details()
    finally:
        idle.set()
        for c in calls:
            c.cancel()
        channel.close()


def test_slow_input_generator_and_a_killed_stage_lose_nothing(cluster_factory, reference):
    """Case 3: inputs that take 20 ms each and a middle stage killed mid-stream: every result
    arrives once, in order, correct; none is held back by a request that was never resent."""
    info, expect = reference
    cluster = cluster_factory(3)
    plane, server, port = _plane(cluster)
    inputs = [models.example_inputs(info, 2, seed=i % 7) for i in range(150)]

    def slow():
        for i, x in enumerate(inputs):
            time.sleep(0.02)
            if i == 50:
                threading.Thread(target=cluster.kill, args=(1,)).start()
            yield x

    try:
        with PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=30) as client:
            got = list(client.infer_many(slow(), window=4))
    finally:
        plane.stop()
        server.stop(0)
    assert len(got) == len(inputs)
    for g, x in zip(got, inputs):
        assert (g["logits"] - expect(x)).abs().max() <= 1e-5


def test_a_restarted_coordinator_never_goes_back_in_epochs(cluster_factory, reference):
    """Case 4: after a failover the coordinator restarts (same state file, same port); a client
    that saw the newer epoch still follows the next re-plan."""
    info, expect = reference
    cluster = cluster_factory(3)
    plane, server, port = _plane(cluster)
    x = models.example_inputs(info, 2, seed=5)
    client = PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=30)
    try:
        cluster.kill(2)
        _wait(lambda: "stage2 failed" in plane.replans[-1]["reason"], what="re-plan")
        assert (client.infer(x)["logits"] - expect(x)).abs().max() <= 1e-5
        seen = client.version
        assert seen == plane.version
        plane.stop()
        server.stop(0).wait()
        # The new coordinator adopts the deployment every stage still holds.
        plane, server, port2 = _plane(cluster, port=port)
        assert port2 == port and plane.version == seen and len(plane.replans) == 0
        cluster.kill(1)
        _wait(lambda: plane.version > seen, what="re-plan by the new coordinator")
        assert (client.infer(x)["logits"] - expect(x)).abs().max() <= 1e-5
        assert client.version == plane.version > seen
    finally:
        client.close()
        plane.stop()
        server.stop(0)


def test_a_stage_restarted_faster_than_its_checks_is_redeployed(cluster_factory, reference):
    """Case 5: kill -9 and an immediate restart on the same port: health says SERVING, but the
    stage lost its assignment; the control plane sees the identity change and redeploys."""
    info, expect = reference
    cluster = cluster_factory(3)
    plane, server, port = _plane(cluster)
    x = models.example_inputs(info, 2, seed=6)
    try:
        with PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=30) as client:
            before = plane.version
            stage_port = cluster.stages[1].port
            cluster.kill(1)
            cluster.stages[1] = cluster.start_stage("stage1", port=stage_port)
            _wait(lambda: plane.version > before, what="redeploy of the restarted stage")
            assert "stage1" in plane.replans[-1]["reason"]
            for _ in range(3):
                assert (client.infer(x)["logits"] - expect(x)).abs().max() <= 1e-5
    finally:
        plane.stop()
        server.stop(0)


def test_a_failed_replan_is_retried_until_it_succeeds(cluster_factory, reference):
    """Case 6: the re-plan after a failure is refused on a healthy host (here: a backend that
    host cannot run); the control plane says so and retries until the lost host is back."""
    info, expect = reference
    cluster = cluster_factory(3)
    hosts = [{"name": s.name, "address": s.address} for s in cluster.stages]
    hosts[2]["backend"] = "tensorrt"  # any re-plan that uses stage2 is refused
    plane, server, port = _plane(cluster, partition="1,6,7,12", hosts=hosts)
    x = models.example_inputs(info, 2, seed=7)
    try:
        stage_port = cluster.stages[1].port
        cluster.kill(1)
        _wait(lambda: "re-plan" in plane.problem, what="a failed re-plan")
        info_reply = cpb_grpc.CoordinatorStub(grpc.insecure_channel(f"127.0.0.1:{port}")) \
            .GetPipeline(cpb.GetPipelineRequest(), timeout=5)
        assert "tensorrt" in info_reply.problem
        cluster.stages[1] = cluster.start_stage("stage1", port=stage_port)
        _wait(lambda: not plane.problem and "stage1" not in plane.down, what="the retry")
        with PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=30) as client:
            assert (client.infer(x)["logits"] - expect(x)).abs().max() <= 1e-5
    finally:
        plane.stop()
        server.stop(0)


def test_redeploys_under_load_answer_every_request(cluster_factory, reference):
    """Case 7: Assign while requests stream: every request is answered (correctly, after
    resends), and no stage's in-flight count leaks."""
    info, expect = reference
    cluster = cluster_factory(3)
    plane, server, port = _plane(cluster)
    inputs = [models.example_inputs(info, 2, seed=i % 5) for i in range(300)]

    def feed():
        for i, x in enumerate(inputs):
            if i in (60, 140, 220):
                plane.request_redeploy(f"test at {i}")
            yield x

    try:
        with PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=30) as client:
            got = list(client.infer_many(feed(), window=8))
        assert len(plane.replans) >= 3
    finally:
        plane.stop()
        server.stop(0)
    for g, x in zip(got, inputs, strict=True):
        assert (g["logits"] - expect(x)).abs().max() <= 1e-5
    for s in cluster.stages:
        _wait(lambda s=s: StageControl(s.name, s.address).status().in_flight == 0,
              timeout_s=10, what=f"{s.name} in-flight back to 0")


def test_parked_watchers_do_not_block_new_clients(cluster_factory, reference):
    """Case 8: 16 long-polls that will never be answered leave room for new clients."""
    info, expect = reference
    cluster = cluster_factory(2)
    plane, server, port = _plane(cluster, partition="1,6,7,12")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = cpb_grpc.CoordinatorStub(channel)
    parked = [stub.GetPipeline.future(cpb.GetPipelineRequest(newer_than=2 ** 62), timeout=60)
              for _ in range(16)]
    try:
        time.sleep(0.5)
        x = models.example_inputs(info, 2, seed=8)
        t0 = time.monotonic()
        with PipelineClient(coordinator=f"127.0.0.1:{port}", timeout_s=10) as client:
            assert (client.infer(x)["logits"] - expect(x)).abs().max() <= 1e-5
        assert time.monotonic() - t0 < 5
    finally:
        for f in parked:
            f.cancel()
        channel.close()
        plane.stop()
        server.stop(0)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):  # peak resident set: catches a transient spike
                return int(line.split()[1]) / 1024
    return 0.0


def test_an_oversized_compressed_frame_is_refused_before_decoding(cluster_factory):
    """Case 9: a 64 MiB 2-bit UNIFORM tensor of shape [1, N] would decode to 1 GiB of float32;
    it is refused on its header, and the stage's peak memory does not move."""
    cluster = cluster_factory(1)
    dep = load_deployment(cluster.hosts_file(MODEL, partition="1,12", microbatch=2))
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    pid = cluster.stages[0].process.pid
    n = 64 * 1024 * 1024 * 4  # 2-bit codes: 4 per byte
    tensor = pb.Tensor(name="pixel_values", dtype=pb.FLOAT32, shape=[1, n],
                       data=bytes(n // 4),
                       encoding=pb.Encoding(kind=pb.Encoding.UNIFORM, bits=2, params=bytes(8)))
    before = _rss_mb(pid)
    [out] = _forward(pipeline.entry, [pb.Frame(request_id="big", tensors=[tensor])])
    assert out.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "pixel_values" in out.error.message
    # Receiving a 64 MiB message costs a few copies of it (gRPC buffers, protobuf, bytes);
    # decoding it would add 1 GiB of float32.
    assert _rss_mb(pid) - before < 600, "the frame was decoded before its shape was checked"
    # Ping replies are bounded too.
    with grpc.insecure_channel(pipeline.entry) as ch, pytest.raises(grpc.RpcError) as big:
        pb_grpc.StageStub(ch).Ping(pb.PingRequest(reply_bytes=128 << 20), timeout=10)
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
