"""(5) Transport: latency of one small request (tiny model, batch 1) through 1 vs 4 stages (2
with --max-devices 2), on the testbed and, as the baseline, on plain loopback processes without
caps.

Requests go one at a time, so each latency is a full trip through every stage and back; the
difference between 4 and 1 stages over 3 is the cost of one extra hop. The devices' CPU caps
are lifted for this section: under a quota, a request that outlasts the device's share of a
CFS period waits for the next one, which is compute, not transport.
"""

from __future__ import annotations

import logging
import statistics

from pipeedge.coordinator.local_cluster import LocalCluster
from testbed_bench.context import TINY_VIT, Settings, Testbeds, equal_devices, inputs_for
from testbed_bench.deployment import deploy_file, hosts_for, release
from testbed_bench.measure import sequential_latencies

log = logging.getLogger(__name__)

TITLE = "Transport latency"
PARTITIONS = {1: "1,12", 2: "1,6,7,12", 4: "1,3,4,6,7,9,10,12"}  # tiny-vit has 12 layers


def _partitions(settings: Settings) -> dict[int, str]:
    """1 stage and the most stages that fit (4, or 2 with --max-devices 2)."""
    most = max(n for n in PARTITIONS if n <= settings.max_devices)
    return {n: PARTITIONS[n] for n in (1, most)}


def run(settings: Settings, testbeds: Testbeds) -> dict:
    requests = 10 if settings.quick else 40
    inputs = inputs_for(TINY_VIT, 1, settings.seed)
    rows = []
    parts = _partitions(settings)
    most = max(parts)
    with LocalCluster(most, threads=1, workdir=_fresh(settings, "loopback")) as cluster:
        for n, partition in parts.items():
            hosts = cluster.hosts_file(TINY_VIT, partition=partition, microbatch=1,
                                       path=cluster.workdir / f"hosts-{n}.yml")
            rows.append(_measure("loopback", n, partition, hosts, inputs, requests))
    doc = equal_devices(settings)
    tb = testbeds.get("equal", doc)
    names = [d.name for d in tb.devices]
    try:
        for name in names:
            tb.set_cpu(name, 0)
        for n, partition in parts.items():
            hosts = hosts_for(tb, settings.workdir, f"transport-{n}", names[:n],
                              model=TINY_VIT, partition=partition, microbatch=1)
            rows.append(_measure("testbed", n, partition, hosts, inputs, requests))
    finally:
        for name in names:
            tb.set_cpu(name, doc["device_types"]["edge"]["cpu"])
    for where in ("loopback", "testbed"):
        one, many = (r for r in rows if r["where"] == where)
        for r in (one, many):
            r["per_extra_hop_ms"] = (many["p50_ms"] - one["p50_ms"]) / (most - 1)
    return {"title": TITLE, "testbed": doc, "rows": rows, "model": TINY_VIT,
            "baseline": "1 stage; and the same requests on loopback processes (no namespaces, "
                        "bridge or tc)", "note": "CPU caps lifted; link caps 1000 Mbps"}


def _measure(where: str, n: int, partition: str, hosts, inputs, requests: int) -> dict:
    pipeline = deploy_file(hosts)
    try:
        lat = sorted(sequential_latencies(pipeline.entry, inputs, requests=requests))
    finally:
        release(pipeline)
    q = statistics.quantiles(lat, n=10)
    log.info("transport %s %d stage(s): p50 %.1f ms", where, n, statistics.median(lat) * 1e3)
    return {"where": where, "stages": n, "partition": partition, "requests": requests,
            "p50_ms": statistics.median(lat) * 1e3, "p90_ms": q[8] * 1e3,
            "min_ms": lat[0] * 1e3}


def _fresh(settings: Settings, name: str):
    path = settings.workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path
