"""The wire cost `pipeedge-coord profile` measures (stage_server/wire_profile.py) against what a
stage process really spends moving frames: its CPU per frame, read from /proc, while frames
stream through it as the ECHO front of a two-stage pipeline (tiny-vit behind it). Like any stage
but the last, it receives each microbatch and sends it on, then relays the small result back."""

from __future__ import annotations

import os

import torch
import yaml
from click.testing import CliRunner

from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import PipelineClient
from pipeedge.coordinator.cli import main
from pipeedge.coordinator.stage_control import StageControl

MODEL = "pipeedge/tiny-bert"
VIT, VIT_LAYERS = "pipeedge/tiny-vit", 12  # the last stage: pixels in, a few logits out


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_profiled_wire_cost_matches_a_stage_process(cluster_factory):
    cluster = cluster_factory(2)
    hosts = cluster.hosts_file(MODEL, microbatch=1)
    doc = yaml.safe_load(hosts.read_text())
    for h in doc["hosts"]:
        h["device_type"] = "edge"  # one type: the front stage alone is profiled
    hosts.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["profile", str(hosts), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert " ms/MiB" in result.output
    run = yaml.safe_load((hosts.parent / "device_types.yml").read_text())["edge"][
        "model_profiles"][MODEL][-1]
    frame_s, per_mib = run["frame_time_s"], run["wire_time_s_per_MB"]
    assert 0 < frame_s < 0.05 and 0 < per_mib < 0.05, run

    front, back = cluster.stages
    ctl = StageControl(back.name, back.address)
    ctl.assign(pb.AssignRequest(model_name=VIT, first_layer=1, last_layer=VIT_LAYERS,
                                weights=pb.WeightSource(random_seed=0)))
    ctl.close()
    ctl = StageControl(front.name, front.address)
    ctl.assign(pb.AssignRequest(model_name="echo", backend=pb.ECHO, next_hop=back.address))
    ctl.close()
    measured = {}
    with PipelineClient(front.address) as client:
        for batch, frames in ((1, 300), (170, 60)):  # 12 KB and 2.1 MB of pixels per frame
            inputs = {"pixel_values": torch.rand(batch, 3, 32, 32)}
            nbytes = inputs["pixel_values"].numel() * 4
            for _ in client.infer_many([inputs] * 4):
                pass
            before = cpu_seconds(front.process.pid)
            for _ in client.infer_many([inputs] * frames):
                pass
            cpu = (cpu_seconds(front.process.pid) - before) / frames
            # In: the frame (and the small result); out: the frame on (and the result back).
            # At a full core the profile's wall time reads ~0.6-0.8 of this CPU for big frames
            # (the loopback's gRPC threads use both cores); under a CPU limit they agree
            # (0.85-1.30 at 0.1 and 0.04 core, measured for issue 18). Once in ~15 runs on this
            # 2-core host a ratio fell under 0.5: the floor is 0.4.
            predicted = frame_s + per_mib * 2 * nbytes / 2**20
            measured[nbytes] = (predicted, cpu)
    for nbytes, (predicted, cpu) in measured.items():
        assert 0.4 < predicted / cpu < 2.0, (
            f"{nbytes} B: profiled {predicted * 1e3:.2f} ms, stage process CPU {cpu * 1e3:.2f} "
            f"ms per frame; all: {measured}")
    (small_pred, small_cpu), (big_pred, big_cpu) = measured.values()
    assert big_cpu > small_cpu and big_pred > small_pred
