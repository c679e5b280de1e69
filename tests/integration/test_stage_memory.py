"""A released stage gives its shard's memory back to the OS (a real stage process), so a device
does not keep the largest shard it ever held: make bench's devices were OOM-killed that way."""

from __future__ import annotations

from pathlib import Path

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_release_returns_the_shard_memory(tmp_path):
    with LocalCluster(1, workdir=tmp_path) as cluster:
        stage = cluster.stages[0]
        ctl = StageControl(stage.name, stage.address)
        idle = _rss_mb(stage.process.pid)
        for epoch in (1, 2):  # twice: what one assignment freed is not kept for the next
            reply = ctl.assign(pb.AssignRequest(model_name="bert-base-uncased", first_layer=1,
                                                last_layer=24, epoch=epoch,
                                                weights=pb.WeightSource(random_seed=0)))
            shard_mb = reply.parameter_bytes / 2**20
            assigned = _rss_mb(stage.process.pid)
            assert assigned > idle + 0.8 * shard_mb
            ctl.release()
            released = _rss_mb(stage.process.pid)
            assert released < idle + 0.5 * shard_mb, (idle, assigned, released, shard_mb)
        ctl.close()
