"""deploy without a partition over real stage processes: profile on the stages, measure the
links, schedule exactly, deploy the plan and check its answers against the unsplit model."""

from __future__ import annotations

import json

import torch
import yaml
from click.testing import CliRunner

from pipeedge import models
from pipeedge.client import PipelineClient
from pipeedge.coordinator.cli import main
from pipeedge.coordinator.profiling import DEFAULT_BW_MBPS
from pipeedge.stage_server.device_info import memory_capacity_mb, nic_speed_mbps

MODEL = "pipeedge/tiny-vit"


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_profile_plan_measure_links_and_auto_deploy(cluster_factory):
    cluster = cluster_factory(3)
    hosts = cluster.hosts_file(MODEL, microbatch=4)
    doc = yaml.safe_load(hosts.read_text())
    for h, kind in zip(doc["hosts"], ["edge", "edge", "tiny"]):
        h["device_type"] = kind
    doc["hosts"][2]["mem_mb"] = 0.01  # far too small for any layer: the plan must avoid it
    hosts.write_text(yaml.safe_dump(doc))

    code, out = run("deploy", str(hosts), "--no-progress")
    assert code == 0, out
    folder = hosts.parent
    models_doc = yaml.safe_load((folder / "models.yml").read_text())
    types_doc = yaml.safe_load((folder / "device_types.yml").read_text())
    assert models_doc[MODEL]["layers"] == 12 and len(models_doc[MODEL]["parameters_out"]) == 12
    assert set(types_doc) == {"edge", "tiny"} and types_doc["tiny"]["mem_MB"] == 0.01
    # Reported by the device: its memory less the stage process's own (~235 MB idle).
    assert 100 < memory_capacity_mb() - types_doc["edge"]["mem_MB"] < 1000
    # Bandwidth from the device's NIC (these stages run on this machine), else the default.
    assert types_doc["edge"]["bw_Mbps"] == (nic_speed_mbps() or DEFAULT_BW_MBPS)
    profile = types_doc["edge"]["model_profiles"][MODEL][0]
    assert profile["batch_size"] == 4 and all(t > 0 for t in profile["time_s"])
    assert "scheduler (exact optimum)" in out and "predicted" in out
    pipeline = json.loads((cluster.workdir / "pipeline.json").read_text())
    used = [s["name"] for s in pipeline["stages"]]
    assert "stage2" not in used
    layers = [(s["first_layer"], s["last_layer"]) for s in pipeline["stages"]]
    assert layers[0][0] == 1 and layers[-1][1] == 12
    assert all(b[0] == a[1] + 1 for a, b in zip(layers, layers[1:]))

    info = models.model_info(MODEL)
    x = models.example_inputs(info, 4)
    full = models.build_shard(info, 1, 12, models.load_shard_state(info, 1, 12, 0))
    with PipelineClient(pipeline["entry"]) as client, torch.inference_mode():
        assert (client.infer(x)["logits"] - full(x)["logits"]).abs().max().item() <= 1e-5

    code, out = run("measure-links", str(hosts), "--payload-mb", "1", "--no-progress")
    assert code == 0, out
    links = yaml.safe_load((folder / "links.yml").read_text())
    assert links["hosts"]["stage0"]["stage1"]["bw_Mbps"] > 50  # loopback is fast
    assert set(links["client_to_host"]) == {"stage0", "stage1", "stage2"}
    code, out = run("plan", str(hosts), "--no-progress")
    assert code == 0 and "bottleneck" in out and "stage2" not in out, out

    # Only the tiny host left: no viable schedule, said in one line.
    doc["hosts"] = doc["hosts"][2:]
    hosts.write_text(yaml.safe_dump(doc))
    code, out = run("plan", str(hosts), "--no-progress")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
