"""`make bench-weights`' testbed case: a model the planner refuses in float32 on small emulated
devices is planned, deployed and measured in int8 (issue 17).

ViT-Large (1.16 GiB of float32 weights, seeded random) on 4 devices of 512 MB each (network
namespaces + cgroup memory limits, `pipeedge-coord testbed`), 0.4 core each, microbatch 1.

Memory is counted honestly: a stage process idles at ~233 MB RSS (python, torch, gRPC) before it
holds any layer, and the scheduler's device memory is what the layers may use. So each host's
`mem_mb` in hosts.yml is its cgroup limit minus its own stage's idle RSS, measured here on the
running devices (about 280 MB of 512), not the limit itself. Then float32 (1.16 GiB over
4 x ~280 MB) does not fit and int8 does; an int8 stage quantizes each matmul as it reads it, so
it never holds the float32 shard (its peak RSS is reported beside the limit).

Steps: profile float32 -> plan (refused: the error is recorded) -> `weights_dtype: int8` ->
profile int8 -> plan -> deploy -> steady-state throughput -> accuracy of the deployed pipeline
against the unsplit float32 model run here (top-1 agreement, max |logit error| / max |logit|).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeedge import models
from pipeedge.coordinator.scheduler import SchedulingError

log = logging.getLogger(__name__)

MODEL = "google/vit-large-patch16-224"
DEVICES, MEM_MB, CPU, MICROBATCH, ITEMS = 4, 512, 0.4, 1, 8


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(workdir: Path, *, seed: int = 0) -> dict:
    """The case end to end; returns its results (also when planning float32 does not refuse)."""
    from testbed_bench import planner
    from testbed_bench.context import Settings, Testbeds
    from testbed_bench.deployment import deploy_file, hosts_for, release
    from testbed_bench.measure import Window, measure_stream

    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment
    from pipeedge.coordinator.testbed import preflight

    problems = preflight.problems()
    if problems:
        return {"skipped": "; ".join(problems)}
    start = time.perf_counter()
    settings = Settings(out_dir=workdir, workdir=workdir, cpu=CPU)
    doc = {"name": "pew8", "subnet": "10.77.30.0/24", "cpu_priority": settings.priority,
           "device_types": {"small": {"cpu": CPU, "mem_mb": MEM_MB, "bw_mbps": 1000}},
           "devices": [{"type": "small", "count": DEVICES}],
           "deployment": {"weights": f"random:{seed}", "microbatch": MICROBATCH}}
    testbeds = Testbeds(settings)
    out: dict = {"model": MODEL, "devices": DEVICES, "limit_mb": MEM_MB, "cpu": CPU}
    try:
        tb = testbeds.get("weights", doc)
        names = [d.name for d in tb.devices]
        idle = {n: _rss_mb(tb.device(n).pid) for n in names}
        usable = {n: round(MEM_MB - idle[n], 1) for n in names}
        out["idle_rss_mb"], out["mem_mb"] = idle, usable
        print(f"  testbed up: {DEVICES} x {MEM_MB} MB; stages idle at "
              f"{min(idle.values()):.0f}-{max(idle.values()):.0f} MB RSS -> mem_mb "
              f"{min(usable.values()):.0f}", flush=True)
        per_host = {n: {"mem_mb": usable[n]} for n in names}
        sched = workdir / "sched"
        base = {"per_host": per_host, "microbatch": MICROBATCH, "weights": f"random:{seed}"}

        planner.profile(tb, sched, "f32-profile", MODEL, **base)
        free = hosts_for(tb, sched, "f32-plan", names, model=MODEL, scheduler_dir=str(sched),
                         **base)
        try:
            stages = planning.plan(load_deployment(free)).stages
            out["float32_plan"] = [(s.host.name, s.layers.first, s.layers.last)
                                   for s in stages]
            print(f"  float32 planned (not refused): {out['float32_plan']}", flush=True)
        except SchedulingError as exc:
            out["float32_refused"] = str(exc)
            print(f"  float32 refused: {exc}", flush=True)

        int8 = {**base, "weights_dtype": "int8"}
        planner.profile(tb, sched, "int8-profile", MODEL, **int8)
        plan = planner.plan(tb, sched, "int8", MODEL, names, **int8)
        out["int8_plan"] = {"partition": plan.partition, "order": list(plan.order),
                            "predicted_items_s": plan.predicted_items_per_s}
        print(f"  int8 plan: {plan.partition} on {', '.join(plan.order)} (predicted "
              f"{plan.predicted_items_per_s:.3f} items/s)", flush=True)
        pipeline = deploy_file(plan.hosts_file)
        try:
            out["weights_mb"] = [b / 2**20 for b in pipeline.parameter_bytes]
            out["peak_rss_mb"] = {n: _rss_mb(tb.device(n).pid, "VmHWM") for n in plan.order}
            out["rss_mb"] = {n: _rss_mb(tb.device(n).pid) for n in plan.order}
            info = models.model_info(MODEL)
            x = models.example_inputs(info, MICROBATCH, seed=seed)
            m = measure_stream(pipeline.entry, x, window=len(plan.order) + 2,
                               steady=Window(min_intervals=4, target_s=15.0, max_s=45.0),
                               pids=tuple(tb.device(n).pid for n in plan.order))
            out["measured"] = m.to_dict()
            print(f"  int8 pipeline: {m.items_per_s:.3f} items/s steady (predicted "
                  f"{plan.predicted_items_per_s:.3f}); weights "
                  f"{', '.join(f'{w:.0f}' for w in out['weights_mb'])} MB; peak RSS "
                  f"{max(out['peak_rss_mb'].values()):.0f} MB of {MEM_MB}", flush=True)
            out["accuracy"] = _accuracy(pipeline.entry, info, seed)
        finally:
            release(pipeline)
    finally:
        testbeds.close()
    out["seconds"] = time.perf_counter() - start
    return out


def _accuracy(entry: str, info, seed: int) -> dict:
    """The deployed int8 pipeline against the unsplit float32 model (same seeded weights) run
    in this process, over ITEMS random images."""
    from pipeedge.client import PipelineClient

    x = models.example_inputs(info, ITEMS, seed=seed + 1)
    with PipelineClient(entry) as client:
        got = torch.cat([client.infer({"pixel_values": x["pixel_values"][i:i + 1]})["logits"]
                         for i in range(ITEMS)])
    whole = models.build_shard(info, 1, info.num_layers, models.load_shard_state(
        info, 1, info.num_layers, seed))
    with torch.inference_mode():
        ref = whole(x)["logits"]
    del whole
    row = {"items": ITEMS, "top1_agree": int((got.argmax(1) == ref.argmax(1)).sum()),
           "logit_err": ((got - ref).abs().max() / ref.abs().max()).item()}
    print(f"  accuracy vs float32 unsplit: top-1 {row['top1_agree']}/{ITEMS}, logit err "
          f"{row['logit_err']:.4f}", flush=True)
    return row
