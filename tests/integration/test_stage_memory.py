"""A released stage gives its shard's memory back to the OS (a real stage process), so a device
does not keep the largest shard it ever held: make bench's devices were OOM-killed that way."""

from __future__ import annotations

from pathlib import Path

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


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


def test_int8_assign_never_holds_the_float32_shard(tmp_path):
    """A torch int8 stage quantizes each matmul as its weights are read (docs/weights.md), so its
    peak stays far below idle + the float32 shard: a device sized for int8 can load it. Before,
    the whole float32 state came first (ViT-Large 6 blocks: peak 666 MB for 72 MB int8)."""
    model, first, last = "google/vit-large-patch16-224", 25, 48  # 6 blocks, 288 MB float32
    with LocalCluster(1, workdir=tmp_path) as cluster:
        stage = cluster.stages[0]
        ctl = StageControl(stage.name, stage.address)
        idle = _rss_mb(stage.process.pid)
        reply = ctl.assign(pb.AssignRequest(model_name=model, first_layer=first, last_layer=last,
                                            epoch=1, weights_dtype=pb.INT8,
                                            weights=pb.WeightSource(random_seed=0)))
        float32_mb = 4 * 12 * 1024 * 1024 * 6 / 2**20  # 12 h^2 matmul weights per block
        int8_mb = reply.parameter_bytes / 2**20
        peak = _rss_mb(stage.process.pid, "VmHWM")
        assert int8_mb < 0.3 * float32_mb
        assert peak < idle + int8_mb + 0.4 * float32_mb, (idle, peak, int8_mb, float32_mb)
        ctl.close()


def test_onnx_assign_from_the_export_cache_never_builds_the_float32_shard(tmp_path):
    """An ONNX stage whose export is cached (an earlier Assign here; `export-onnx` files alike)
    opens it without reading the weights or building the float32 shard, so a device sized for
    the int8 file can load it. Before, the float32 shard was built first, cache hit or not."""
    model, first, last = "bert-base-uncased", 25, 48  # 6 blocks, 162 MB float32 matmuls
    request = pb.AssignRequest(model_name=model, first_layer=first, last_layer=last,
                               backend=pb.ONNX, weights_dtype=pb.INT8,
                               weights=pb.WeightSource(random_seed=0))
    with LocalCluster(1, workdir=tmp_path) as cluster:
        stage = cluster.stages[0]
        ctl = StageControl(stage.name, stage.address)
        request.epoch = 1
        ctl.assign(request)  # exports into the stage's cache
        ctl.release()
        idle = _rss_mb(stage.process.pid)
        Path(f"/proc/{stage.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        request.epoch = 2
        reply = ctl.assign(request)
        assert "from cache" in stage.log_path.read_text()
        float32_mb = 4 * 12 * 768 * 768 * 6 / 2**20
        int8_mb = reply.parameter_bytes / 2**20
        peak = _rss_mb(stage.process.pid, "VmHWM")
        assert int8_mb < 0.3 * float32_mb
        assert peak < idle + 2 * int8_mb + 0.3 * float32_mb, (idle, peak, int8_mb, float32_mb)
        ctl.close()
