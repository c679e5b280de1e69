"""(2) Predictions: measured throughput / the scheduler's predicted throughput.

Profiles are taken on the emulated devices themselves (under their CPU caps), links come from
the testbed's exact caps, the scheduler plans 1, 2 and 4 devices (those within --max-devices),
and each plan is deployed and measured. A ratio of 1 is a perfect prediction; the even split
measured by the scaling section in this run is shown beside it as the reference.
"""

from __future__ import annotations

import logging

from testbed_bench import planner
from testbed_bench.context import (
    Settings,
    Skipped,
    Testbeds,
    equal_devices,
    inputs_for,
    local_weights,
)
from testbed_bench.deployment import deploy_file, release
from testbed_bench.measure import measure_stream

log = logging.getLogger(__name__)

TITLE = "Scheduler predictions"
STAGES = (1, 2, 4)


def run(settings: Settings, testbeds: Testbeds) -> dict:
    reason = planner.missing()
    if reason:
        raise Skipped(reason)
    doc = equal_devices(settings)
    tb = testbeds.get("equal", doc)
    names = [d.name for d in tb.devices]
    model = settings.vit
    sched_dir = settings.workdir / "sched-equal"
    weights = local_weights(settings, model)
    planner.profile(tb, sched_dir, "pred-profile", model, weights=weights,
                    microbatch=settings.microbatch)
    inputs = inputs_for(model, settings.microbatch, settings.seed)
    rows = []
    for n in settings.stages(STAGES):
        p = planner.plan(tb, sched_dir, f"pred-{n}", model, names[:n],
                         weights=weights, microbatch=settings.microbatch)
        pipeline = deploy_file(p.hosts_file)
        used = len(p.order)
        try:
            m = measure_stream(pipeline.entry, inputs, window=2 * used + 2,
                               steady=settings.steady(target_s=10.0),
                               pids=tuple(tb.device(s).pid for s in p.order))
        finally:
            release(pipeline)
        rows.append({"model": model, "devices_offered": n, "devices_used": used,
                     "partition": p.partition, "order": list(p.order), "method": p.method,
                     "predicted_items_per_s": p.predicted_items_per_s, **m.to_dict(),
                     "ratio": m.items_per_s / p.predicted_items_per_s})
        log.info("prediction on %d: measured %.2f / predicted %.2f items/s", n, m.items_per_s,
                 p.predicted_items_per_s)
    return {"title": TITLE, "testbed": doc, "rows": rows,
            "baseline": "a perfect prediction (ratio 1); the even split of the scaling section "
                        "from this run for reference"}
