"""(4) Slow links: 2 stages with the link into the second capped at 20 and 5 Mbps, the first
stage's output sent as float32, float16 or uniform:8. Baseline: float32 on a 1000 Mbps link.

Only the second device's link is capped, so the model input (client -> stage 1) and the result
(stage 2 -> client, a few KB) stay fast and the cut is what the link has to carry.
"""

from __future__ import annotations

import logging

import torch

from pipeedge import models
from pipeedge.client import PipelineClient
from testbed_bench import partitions
from testbed_bench.context import Settings, Testbeds, equal_devices, inputs_for, local_weights
from testbed_bench.deployment import deploy_file, hosts_for, release
from testbed_bench.measure import measure_stream

log = logging.getLogger(__name__)

TITLE = "Slow links and activation compression"
BASELINE_MBPS = 1000.0
LINKS_MBPS = (20.0, 5.0)
ENCODINGS = (("float32", "raw", 32), ("float16", "float16", 16), ("uniform:8", "uniform:8", 8))


def run(settings: Settings, testbeds: Testbeds) -> dict:
    doc = equal_devices(settings)
    tb = testbeds.get("equal", doc)
    first, second = (d.name for d in tb.devices[:2])
    model = settings.vit
    info = models.model_info(model)
    partition = partitions.even(info.num_layers, 2)
    inputs = inputs_for(model, settings.microbatch, settings.seed)
    cut_bytes = _cut_bytes(model, partition, inputs)
    weights = local_weights(settings, model)
    runs = [(BASELINE_MBPS, *ENCODINGS[0])] + [(bw, *e) for bw in LINKS_MBPS for e in ENCODINGS]
    rows, reference = [], None
    try:
        for bw, label, encoding, bits in runs:
            tb.set_bandwidth(second, bw)
            hosts = hosts_for(tb, settings.workdir, f"links-{int(bw)}-{bits}", [first, second],
                              model=model, partition=partition, weights=weights,
                              per_host={first: {"encoding": encoding}})
            pipeline = deploy_file(hosts)
            try:
                with PipelineClient(pipeline.entry) as client:
                    logits = client.infer(inputs)["logits"]
                m = measure_stream(pipeline.entry, inputs, window=4, steady=settings.steady(target_s=10.0),
                                   pids=(tb.device(first).pid, tb.device(second).pid))
            finally:
                release(pipeline)
            reference = logits if reference is None else reference
            wire = cut_bytes * bits / 32
            rows.append({"link_mbps": bw, "encoding": label, "partition": partition,
                         "cut_bytes_per_microbatch": wire,
                         "link_s_per_microbatch": wire * 8 / (bw * 1e6),
                         "max_abs_logit_error": float((logits - reference).abs().max()),
                         **m.to_dict()})
            log.info("links %g Mbps %s: %.2f items/s", bw, label, m.items_per_s)
    finally:
        tb.set_bandwidth(second, doc["device_types"]["edge"]["bw_mbps"])
    return {"title": TITLE, "testbed": doc, "rows": rows, "model": model,
            "baseline": f"float32 over {BASELINE_MBPS:g} Mbps on the same devices, same run",
            "capped_device": second}


def _cut_bytes(model: str, partition: str, inputs: dict[str, torch.Tensor]) -> int:
    """float32 bytes crossing the cut for one microbatch (what the link carries, raw)."""
    info = models.model_info(model)
    last = int(partition.split(",")[1])
    shard = models.build_shard(info, 1, last, models.load_shard_state(info, 1, last, 0))
    with torch.inference_mode():
        out = shard(inputs)
    return sum(t.numel() * 4 for t in out.values() if t.is_floating_point())
