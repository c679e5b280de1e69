"""(3) Heterogeneous devices: 2 fast + 2 slow, one slow link. Even split (the baseline, what
you get without a scheduler) vs memory-proportional split vs the scheduler's plan.

The slow devices have more memory than the fast ones (an old laptop next to a new board), so
splitting by memory is not the same as splitting by speed. With --max-devices 2 (the smoke
run) it is 1 fast + slow1, with slow1's slow link.
"""

from __future__ import annotations

import logging

from pipeedge import models
from testbed_bench import partitions, planner
from testbed_bench.context import Settings, Testbeds, inputs_for
from testbed_bench.deployment import deploy_file, hosts_for, release
from testbed_bench.measure import measure_stream

log = logging.getLogger(__name__)

TITLE = "Heterogeneous devices"


def testbed_doc(settings: Settings) -> dict:
    total = min(4, settings.max_devices)
    fast = total // 2
    slow = [{"type": "slow", "name": "slow0"}] if total - fast > 1 else []
    return {"name": settings.testbed_name("het"), "subnet": settings.subnet(1),
            "cpu_priority": settings.priority,
            "device_types": {"fast": {"cpu": 0.5, "mem_mb": 1024, "bw_mbps": 1000},
                             "slow": {"cpu": 0.25, "mem_mb": 1536, "bw_mbps": 100}},
            "devices": [{"type": "fast", "count": fast}, *slow,
                        {"type": "slow", "name": "slow1", "bw_mbps": 20}],
            "deployment": {"weights": f"random:{settings.seed}",
                           "microbatch": settings.microbatch}}


def run(settings: Settings, testbeds: Testbeds) -> dict:
    doc = testbed_doc(settings)
    tb = testbeds.get("hetero", doc)
    names = [d.name for d in tb.devices]
    model = settings.vit
    info = models.model_info(model)
    inputs = inputs_for(model, settings.microbatch, settings.seed)
    plans: list[tuple[str, list[str], str, float | None, str]] = [
        ("even", names, partitions.even(info.num_layers, len(names)), None, ""),
        ("memory-proportional", names,
         partitions.proportional(info.num_layers, [tb.device(n).mem_mb for n in names]), None,
         "")]
    skipped = planner.missing()
    if not skipped:
        sched_dir = settings.workdir / "sched-hetero"
        planner.profile(tb, sched_dir, "het-profile", model, weights=f"random:{settings.seed}",
                        microbatch=settings.microbatch)
        p = planner.plan(tb, sched_dir, "het-sched", model, names,
                         weights=f"random:{settings.seed}", microbatch=settings.microbatch)
        plans.append(("scheduler", list(p.order), p.partition, p.predicted_items_per_s,
                      p.method))
    rows = []
    for label, order, partition, predicted, method in plans:
        hosts = hosts_for(tb, settings.workdir, f"het-{label}", order, model=model,
                          partition=partition)
        pipeline = deploy_file(hosts)
        n = len(order)
        try:
            m = measure_stream(pipeline.entry, inputs, microbatches=settings.count(n),
                               window=n + 2, skip=n, pids=tuple(tb.device(s).pid for s in order))
        finally:
            release(pipeline)
        row = {"split": label, "order": order, "partition": partition, **m.to_dict()}
        if predicted:
            row.update(predicted_items_per_s=predicted, ratio=m.items_per_s / predicted,
                       method=method)
        rows.append(row)
        log.info("hetero %s (%s): %.2f items/s", label, partition, m.items_per_s)
    base = rows[0]["items_per_s"]
    for r in rows:
        r["vs_even"] = r["items_per_s"] / base
    out = {"title": TITLE, "testbed": doc, "rows": rows, "model": model,
           "baseline": "the even split on the same devices, same run"}
    if skipped:
        out["skipped_parts"] = {"scheduler": skipped}
    return out
