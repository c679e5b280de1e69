"""(1) Scaling: throughput on 1, 2 and 4 equal CPU-capped devices; baseline = 1 device.
(With --max-devices 2, the smoke run: 1 and 2.)

Even block-aligned splits on identical devices: when compute-bound, N devices should give
close to N times one device. Each stage's delivered CPU is recorded, because on a small host
the stages and the client compete for the same cores.
"""

from __future__ import annotations

import logging

from pipeedge import models
from testbed_bench import partitions
from testbed_bench.context import Settings, Testbeds, equal_devices, inputs_for
from testbed_bench.deployment import deploy_file, hosts_for, release
from testbed_bench.measure import measure_stream

log = logging.getLogger(__name__)

TITLE = "Scaling on equal devices"
STAGES = (1, 2, 4)


def run(settings: Settings, testbeds: Testbeds) -> dict:
    doc = equal_devices(settings)
    tb = testbeds.get("equal", doc)
    names = [d.name for d in tb.devices]
    rows = []
    for model in (settings.vit, settings.bert):
        info = models.model_info(model)
        inputs = inputs_for(model, settings.microbatch, settings.seed)
        base = None
        for n in settings.stages(STAGES):
            partition = partitions.even(info.num_layers, n)
            hosts = hosts_for(tb, settings.workdir, f"scaling-{n}", names[:n], model=model,
                              partition=partition)
            pipeline = deploy_file(hosts)
            try:
                m = measure_stream(pipeline.entry, inputs, microbatches=settings.count(n),
                                   window=n + 2, skip=n,
                                   pids=tuple(tb.device(s).pid for s in names[:n]))
            finally:
                release(pipeline)
            base = base or m.items_per_s
            speedup = m.items_per_s / base
            rows.append({"model": model, "devices": n, "partition": partition,
                         **m.to_dict(), "speedup": speedup, "efficiency": speedup / n})
            log.info("scaling %s on %d: %.2f items/s (x%.2f)", model, n, m.items_per_s, speedup)
    return {"title": TITLE, "testbed": doc, "rows": rows,
            "baseline": "the same model on 1 device of the same testbed, same run",
            "goal": "speedup >= 0.9 x N when compute-bound"}
