"""(1) Scaling at the paper's scale: throughput on 1, 2, 4, 8 and 16 equal devices of 0.1 core
(`--scale-cpu`), ViT-Large and BERT-Large shapes (seeded random weights), microbatch 1;
baseline = 1 device of the same testbed, same run. (--max-devices 2, the smoke run: 1 and 2
devices, tiny models.)

Splits balance per-layer compute measured once on this host (`partitions.balanced`: what the
scheduler does on equal devices with fast links), at sub-block granularity since 24 blocks do
not split evenly over 16 stages. Beside throughput, each row records what grows with N: the
CPU each stage got against its quota, its idle CPU and memory once deployed, deploy time, and
the round trip of one 8 KB frame through N ECHO stages under the same quotas (per-hop latency
of a decode-sized frame).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time

import torch

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.stage_server.profiler import profile_layers
from testbed_bench import partitions
from testbed_bench.context import (
    Settings,
    Testbeds,
    inputs_for,
    local_weights,
    many_devices,
)
from testbed_bench.deployment import deploy_file, hosts_for, release
from testbed_bench.measure import idle_cores, measure_stream, rss_mb, sequential_latencies
from testbed_bench.serving import served

log = logging.getLogger(__name__)

TITLE = "Scaling on equal devices"
STAGES = (1, 2, 4, 8, 16)
IDLE_S = 3.0
SMALL_FRAME = {"hidden": torch.zeros(1, 2048)}  # 8 KB: a decode step's activation


def run(settings: Settings, testbeds: Testbeds) -> dict:
    doc = many_devices(settings)
    tb = testbeds.get("many", doc)
    try:
        return _run(settings, tb, doc)
    finally:
        testbeds.release("many")  # the other sections' testbed takes this name and subnet


def _run(settings: Settings, tb, doc: dict) -> dict:
    names = [d.name for d in tb.devices]
    unassigned_mb = rss_mb(tb.device(names[0]).pid)
    hops = [{"devices": n, "p50_ms": statistics.median(echo_round_trips(
        tb, names[:n], 10 if settings.quick else 40)) * 1e3} for n in settings.stages(STAGES)]
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for model in settings.large_models:
        times = layer_times(model)
        inputs = inputs_for(model, 1, settings.seed)
        weights = local_weights(settings, model)
        # The last model's rows stream with `pipeedge-coord serve` watching (control plane CPU
        # by N); every row of one model the same way, so its speedups compare like with like.
        watched = model == settings.large_models[-1]
        base = None
        most = max(n for n in settings.stages(STAGES) if n <= len(times))
        for n in settings.stages(STAGES):
            if n > len(times):  # a tiny model (--quick) has fewer layers than devices
                continue
            partition = partitions.balanced([times] * n)
            tag = f"scaling-{n}"
            hosts = hosts_for(tb, settings.workdir, tag, names[:n], model=model,
                              partition=partition, microbatch=1, weights=weights)
            pids = tuple(tb.device(s).pid for s in names[:n])
            short = model.split("/")[-1]
            try:
                if n > 1 and base is None:
                    raise RuntimeError("no 1-device baseline (that row failed)")
                m, narrow, coord, idle, memory, deploy_s = _measure(
                    settings, hosts, tag, pids, inputs, n, watched,
                    narrow_too=n > 1 and n == most and model == settings.large_models[0])
            except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
                log.exception("scaling %s x%d failed", model, n)
                skipped[f"{short} x{n}"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
                print(f"  {model} x{n}: FAILED ({skipped[f'{short} x{n}']})", flush=True)
                continue
            base = base or m.items_per_s
            speedup = m.items_per_s / base
            row = {"model": model, "devices": n, "partition": partition, "in_flight": in_flight(n),
                   **m.to_dict(), "speedup": speedup, "efficiency": speedup / n,
                   "quota": settings.scale_cpu, "deploy_s": deploy_s,
                   "idle_cores": sum(idle) / n,
                   # median: a process keeps the freed heap of earlier, larger shards
                   "rss_mb": statistics.median(memory), "rss_max_mb": max(memory)}
            if coord:
                row.update(coordinator_cores=m.watched_cores[0], replans=coord["replans"])
            if narrow is not None:
                row["narrow"] = {**narrow.to_dict(), "in_flight": n + 2,
                                 "efficiency": narrow.items_per_s / base / n}
                print(f"  {model} x{n} with {n + 2} in flight: {narrow.items_per_s:.3f} "
                      f"items/s, efficiency {narrow.items_per_s / base / n:.2f}", flush=True)
            rows.append(row)
            log.info("scaling %s on %d: %.2f items/s (x%.2f)", model, n, m.items_per_s, speedup)
            print(f"  {model} x{n}: {m.items_per_s:.3f} items/s, efficiency "
                  f"{speedup / n:.2f} (halves {m.halves[0]:.3f}/{m.halves[1]:.3f}, "
                  f"{m.microbatches} items, steady {m.steady_s:.0f} s, fill {m.fill_s:.0f} s, "
                  f"deploy {deploy_s:.1f} s"
                  + (f", coordinator {m.watched_cores[0]:.3f} cores" if coord else "") + ")",
                  flush=True)
    return {"title": TITLE, "testbed": doc, "rows": rows, "unassigned_rss_mb": unassigned_mb,
            "hops": hops, "skipped_parts": skipped,
            "baseline": "the same model on 1 device of the same testbed, same run",
            "goal": "efficiency >= 0.9 at 8 devices and >= 0.85 at 16 (the paper: 0.74-0.80)"}


def _measure(settings: Settings, hosts, tag: str, pids: tuple[int, ...], inputs, n: int,
             watched: bool, *, narrow_too: bool):
    """Deploy one scaling row, measure it (and its n + 2 comparison), release it."""
    start = time.monotonic()
    pipeline = deploy_file(hosts)
    deploy_s = time.monotonic() - start
    coord: dict = {}
    narrow = None
    try:
        idle = idle_cores(pids, 1.0 if settings.quick else IDLE_S)
        with (served(hosts, pipeline, settings.workdir / f"pipeline-{tag}.json")
              if watched else contextlib.nullcontext({})) as coord:
            # No warm-up request: at 0.1 core one is a full trip (~20 s for
            # ViT-Large), and the fill left out of the rate absorbs first-run costs.
            # 1 item takes ~16 s on 1 device: 2 intervals there (as before), 3 elsewhere.
            m = measure_stream(pipeline.entry, inputs, window=in_flight(n),
                               steady=settings.steady(2 if n == 1 else 3), pids=pids,
                               watch=(coord["pid"],) if coord else ())
        # While serving: the weights are mapped from the checkpoint as they are used.
        memory = [rss_mb(p) for p in pids]
        if narrow_too:
            # The same partition with only n + 2 in flight (the earlier reports'
            # window): what the window costs at the most stages. Redeployed, which
            # drops the first stream's abandoned items (draining them took ~45 s).
            release(pipeline)
            pipeline = deploy_file(hosts)
            narrow = measure_stream(pipeline.entry, inputs, window=n + 2,
                                    steady=settings.steady(3), pids=pids)
    finally:
        release(pipeline)
    return m, narrow, coord, idle, memory, deploy_s


def in_flight(stages: int) -> int:
    """Microbatches the client keeps in flight: two per stage plus two. With n + 2 (the
    earlier reports), every hop's transfer and every stall under the 0.1-core quotas idled a
    stage (ViT-Large x16: stages at 0.047-0.061 of 0.1 core, efficiency 0.72)."""
    return 2 * stages + 2


def echo_round_trips(tb, names: list[str], requests: int) -> list[float]:
    """Seconds per round trip of one 8 KB frame through ECHO stages on `names`, in order."""
    controls = [StageControl(n, tb.device(n).endpoint) for n in names]
    try:
        for i in reversed(range(len(names))):  # each next hop is ready before its sender
            nxt = tb.device(names[i + 1]).endpoint if i + 1 < len(names) else ""
            controls[i].assign(pb.AssignRequest(model_name="echo", backend=pb.ECHO,
                                                next_hop=nxt))
        return sequential_latencies(tb.device(names[0]).endpoint, SMALL_FRAME,
                                    requests=requests)
    finally:
        for c in controls:
            c.release()
            c.close()


def layer_times(model: str) -> list[float]:
    """Seconds per layer for one item on this host (1 thread; only the ratios matter).

    Every transformer block is the same, so each inner layer gets the median of its position
    (1 to 4) over the blocks: timings on a shared host are noisy, and a 2-device trial split
    ViT-Large 40/56 layers on raw ones (efficiency 0.83). The first and last layers (with the
    embeddings and the head) keep their own times.
    """
    with tempfile.TemporaryDirectory(prefix="pipeedge-profile-") as cache:
        events = list(profile_layers(pb.ProfileRequest(model_name=model, batch_size=1, warmup=1,
                                                       repeats=5, threads=1),
                                     cache_dir=cache, default_threads=1, default_device="cpu"))
    times = [max(e.time_s, 1e-6) for e in events]
    if len(times) % partitions.BLOCK or len(times) < 3 * partitions.BLOCK:
        return times
    inner = range(1, len(times) - 1)
    typical = {k: statistics.median(times[i] for i in inner if i % partitions.BLOCK == k)
               for k in range(partitions.BLOCK)}
    return [times[i] if i in (0, len(times) - 1) else typical[i % partitions.BLOCK]
            for i in range(len(times))]

