"""Load and backpressure: many clients at once, nothing lost or doubled, memory bounded."""

from __future__ import annotations

import threading
import time

import grpc
import torch

from pipeedge import models
from pipeedge.client import OverloadedError, PipelineClient, PipelineError
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.stage_control import StageControl

MODEL = "pipeedge/tiny-vit"


def _deploy(cluster, partition):
    dep = load_deployment(cluster.hosts_file(MODEL, partition=partition, microbatch=2))
    return deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_eight_clients_500_requests_each(cluster_factory, capsys):
    cluster = cluster_factory(3)
    pipeline = _deploy(cluster, "1,4,5,8,9,12")
    info = models.model_info(MODEL)
    full = models.build_shard(info, 1, 12, models.load_shard_state(info, 1, 12, 0))
    inputs = [models.example_inputs(info, 2, seed=i) for i in range(20)]
    with torch.inference_mode():
        expected = [full(x)["logits"] for x in inputs]
    rss_before = [_rss_mb(s.process.pid) for s in cluster.stages]
    results: dict[int, list] = {}
    latencies: list[float] = []
    errors: list[BaseException] = []
    peak_in_flight = [0]
    stop_poll = threading.Event()

    def client(cid: int) -> None:
        try:
            with PipelineClient(pipeline.entry, timeout_s=120) as c:
                sent = []

                def feed():
                    for i in range(500):
                        sent.append(time.perf_counter())
                        yield inputs[(cid + i) % 20]

                out = []
                for i, r in enumerate(c.infer_many(feed(), window=4)):
                    latencies.append(time.perf_counter() - sent[i])
                    out.append(r["logits"])
                results[cid] = out
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def poll() -> None:
        ctl = StageControl("s0", pipeline.entry)
        while not stop_poll.wait(0.1):
            peak_in_flight[0] = max(peak_in_flight[0], ctl.status().in_flight)
        ctl.close()

    poller = threading.Thread(target=poll)
    poller.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(cid,)) for cid in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stop_poll.set()
    poller.join()
    assert not errors, errors
    for cid, out in results.items():
        assert len(out) == 500
        for i, got in enumerate(out):
            assert (got - expected[(cid + i) % 20]).abs().max().item() <= 1e-5
    # Bounded: at most 8 clients x window 4 requests are ever held, and memory stays flat.
    assert peak_in_flight[0] <= 32
    growth = [_rss_mb(s.process.pid) - b for s, b in zip(cluster.stages, rss_before)]
    assert max(growth) < 150, growth
    lat = sorted(latencies)
    with capsys.disabled():
        print(f"\n[load] 8 clients x 500 requests (batch 2) on 3 stages: "
              f"{4000 / elapsed:.0f} requests/s, p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms, stage RSS growth "
              f"{max(growth):.0f} MB, peak in flight {peak_in_flight[0]}")


def test_overload_is_refused_with_resource_exhausted(cluster_factory):
    cluster = cluster_factory(1, extra_args=("--max-in-flight", "2"))
    pipeline = _deploy(cluster, "1,12")
    x = models.example_inputs(models.model_info(MODEL), 2)
    # Without retries the refusal surfaces, typed, naming the limit.
    with PipelineClient(pipeline.entry, max_retries=0) as c:
        outcomes = []
        stream = c.infer_many([x] * 40, window=16)
        while True:
            try:
                next(stream)
                outcomes.append("ok")
            except StopIteration:
                break
            except OverloadedError as exc:
                assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "limit 2" in str(exc)
                outcomes.append("refused")
                break
        assert "refused" in outcomes
        stream.close()
    # The default policy backs off and resends what a full stage refused: all 40 arrive.
    with PipelineClient(pipeline.entry) as c:
        assert len(list(c.infer_many([x] * 40, window=16))) == 40
        deadline = time.monotonic() + 30
        while True:  # and it keeps serving once they are answered
            try:
                assert c.infer(x)["logits"].shape == (2, 10)
                break
            except PipelineError as exc:
                assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "still refused 30 s after the overload"
                time.sleep(0.05)
