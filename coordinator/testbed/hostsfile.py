"""hosts.yml and links.yml for the emulated devices, so `deploy`, `profile` and the scheduler
use them as-is.

Each host carries its device_type and the type's `mem_mb` / `bw_mbps`, which the hosts.yml
loader passes to the profiler and scheduler (the emulated limits, not what the host reports).
links.yml states the emulated network exactly (a per-device link override, which a device type
cannot express, included), in the scheduler's format (coordinator/scheduler/links.example.yml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from pipeedge.coordinator.scheduler.links import write_links
from pipeedge.coordinator.testbed.state import DeviceState

MBIT = 2**20              # the scheduler's binary megabit
UNSHAPED_MBPS = 10_000.0  # an uncapped veth, for the scheduler (0 would mean "unusable")
_HEADER = ("# Written by `pipeedge-coord testbed up`: one host per emulated device.\n"
           "# Deploy with `pipeedge-coord deploy {path}`; rewritten on every `up`.\n")


def hosts_document(devices: Sequence[DeviceState], deployment: Mapping,
                   per_host: Mapping[str, Mapping] | None = None) -> dict:
    """The hosts.yml mapping: `deployment` keys first (model, weights, ...), then hosts.
    `per_host` adds fields to single hosts (e.g. {"fast0": {"encoding": "float16"}})."""
    per_host = per_host or {}
    hosts = []
    for d in devices:
        entry: dict = {"name": d.name, "address": d.endpoint, "device_type": d.type}
        if d.mem_mb:
            entry["mem_mb"] = d.mem_mb
        if d.bw_mbps:
            entry["bw_mbps"] = d.bw_mbps
        entry.update(per_host.get(d.name, {}))
        hosts.append(entry)
    return {**{k: v for k, v in deployment.items() if k != "hosts"}, "hosts": hosts}


def write_hosts_file(path: Path, devices: Sequence[DeviceState], deployment: Mapping,
                     per_host: Mapping[str, Mapping] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = hosts_document(devices, deployment, per_host)
    path.write_text(_HEADER.format(path=path) + yaml.safe_dump(doc, sort_keys=False, width=100))
    return path


def links_document(devices: Sequence[DeviceState]) -> dict:
    """Every leg's cap: a transfer a -> b crosses a's upload and b's download cap, the
    client's legs only the device's own (the coordinator's link is not shaped)."""
    def cap(*mbps: float) -> dict:
        shaped = [m for m in mbps if m > 0]
        return {"bw_Mbps": round((min(shaped) if shaped else UNSHAPED_MBPS) * 1e6 / MBIT, 3),
                "latency_ms": 0.0}

    return {"symmetric": False,
            "hosts": {a.name: {b.name: cap(a.bw_mbps, b.bw_mbps) for b in devices if b is not a}
                      for a in devices},
            "client_to_host": {d.name: cap(d.bw_mbps) for d in devices},
            "host_to_client": {d.name: cap(d.bw_mbps) for d in devices}}


def write_links_file(path: Path, devices: Sequence[DeviceState]) -> Path:
    return write_links(path, links_document(devices),
                       "`pipeedge-coord testbed up`: the emulated link caps")
