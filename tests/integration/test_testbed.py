"""Emulated edge testbed: spec parsing everywhere; with root, the real thing end to end
(namespaces, tc caps, cgroups, stage servers, deploy, parity, clean `down`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.cli import main
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.coordinator.testbed import (
    Testbed,
    TestbedError,
    leftovers,
    load_spec,
    problems,
    spec_from_dict,
)
from pipeedge.coordinator.testbed.cgroups import detect
from pipeedge.coordinator.testbed.shaping import tbf_params
from pipeedge.stage_server.links import measure_link

EXAMPLE = Path(__file__).resolve().parents[2] / "coordinator" / "testbed" / "testbed.example.yml"
_PROBLEMS = problems()
needs_root = pytest.mark.skipif(bool(_PROBLEMS), reason=_PROBLEMS[0] if _PROBLEMS else "")
TINY = "pipeedge/tiny-vit"


def cli(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# -- without root ------------------------------------------------------------------------------

def test_example_spec_devices_and_overrides():
    spec = load_spec(EXAMPLE)
    assert [d.name for d in spec.devices] == ["fast0", "fast1", "slow0", "edge"]
    edge = spec.devices[-1]
    assert (edge.type, edge.cpu, edge.mem_mb, edge.bw_mbps) == ("slow", 0.25, 1024, 20)
    assert spec.devices[0].stage_threads == 1 and spec.host_address() == "10.77.0.1"
    assert spec.device_address(3) == "10.77.0.5"
    assert spec.deployment["model"] == "google/vit-base-patch16-224"


@pytest.mark.parametrize("data, message", [
    ({"devices": [{"type": "a"}]}, "no 'device_types'"),
    ({"device_types": {"a": {"cpu": 1}}}, "no 'devices'"),
    ({"device_types": {"a": {"cpu": 1}}, "devices": [{"type": "b"}]}, "needs 'type'"),
    ({"device_types": {"a": {"cpus": 1}}, "devices": [{"type": "a"}]}, "unknown key"),
    ({"device_types": {"a": {"mem_mb": 100}}, "devices": [{"type": "a"}]}, "too small"),
    ({"device_types": {"a": {}}, "devices": [{"type": "a"}], "name": "Bad-Name"}, "invalid"),
    ({"device_types": {"a": {}}, "devices": [{"type": "a"}], "subnet": "8.8.8.0/24"},
     "not private"),
    ({"device_types": {"a": {}}, "devices": [{"type": "a", "count": 2, "name": "x"},
                                             {"type": "a", "name": "x0"}]}, "unique"),
])
def test_spec_errors_name_the_fix(data, message):
    with pytest.raises(TestbedError, match=message):
        spec_from_dict(data)


def test_cgroup_detection_prefers_v1_controllers_then_v2(tmp_path):
    v1 = ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
          "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
          "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    cg = detect(v1)
    assert cg.version == 1 and cg.memory_root == Path("/sys/fs/cgroup/memory")
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cg = detect(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n")
    assert cg.version == 2 and cg.dirs("x") == [tmp_path / "x"]
    with pytest.raises(TestbedError, match="no cgroup"):
        detect("proc /proc proc rw 0 0\n")


def test_links_document_is_the_schedulers_format_with_per_device_caps():
    from pipeedge.coordinator.scheduler import DeviceProfile
    from pipeedge.coordinator.scheduler.links import parse_links
    from pipeedge.coordinator.testbed.hostsfile import MBIT, UNSHAPED_MBPS, links_document
    from pipeedge.coordinator.testbed.state import DeviceState

    devs = [DeviceState(n, "t", i, f"10.0.0.{i + 2}", 50051, f"x-{n}", 1, 1000, bw, 1)
            for i, (n, bw) in enumerate([("a", 1000), ("b", 20), ("c", 0)])]
    doc = links_document(devs)
    profiles = [DeviceProfile(d.name, "t", 1000, 1000, (0.1,)) for d in devs]
    links = parse_links(doc, profiles)
    assert links.host_to_host[("a", "b")].bw_Mbps == links.host_to_host[("b", "a")].bw_Mbps \
        == round(20e6 / MBIT, 3)
    assert links.host_to_host[("a", "c")].bw_Mbps == round(1000e6 / MBIT, 3)
    assert links.client_to_host["c"].bw_Mbps == round(UNSHAPED_MBPS * 1e6 / MBIT, 3)


def test_cpu_priority_is_parsed_and_bounded():
    base = {"device_types": {"a": {}}, "devices": [{"type": "a"}]}
    assert spec_from_dict(base).cpu_priority == 1.0
    assert spec_from_dict({**base, "cpu_priority": 10}).cpu_priority == 10.0
    with pytest.raises(TestbedError, match="cpu_priority"):
        spec_from_dict({**base, "cpu_priority": 0})


def test_tbf_burst_scales_with_rate():
    assert tbf_params(5).burst_bytes == 32 * 1024
    assert tbf_params(1000).burst_bytes == 500_000
    assert tbf_params(20).tc_args()[:2] == ["tbf", "rate"]


# -- with root: the real testbed ---------------------------------------------------------------

@pytest.fixture(scope="module")
def testbed_file(tmp_path_factory):
    """Two devices: `near` unshaped, `far` behind a 20 Mbps link."""
    root = tmp_path_factory.mktemp("testbed")
    doc = {"name": "pett", "subnet": "10.78.0.0/24", "state_dir": str(root / "state"),
           "hosts_file": "hosts.yml",
           "device_types": {"edge": {"cpu": 1.0, "mem_mb": 2048}},
           "devices": [{"type": "edge", "name": "near"},
                       {"type": "edge", "name": "far", "bw_mbps": 20}],
           "deployment": {"model": TINY, "weights": "random:0", "microbatch": 4,
                          "partition": "1,6,7,12", "pipeline_file": str(root / "pipeline.json")}}
    path = root / "testbed.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def running(testbed_file):
    code, out = cli("testbed", "up", str(testbed_file))
    assert code == 0, out
    spec = load_spec(testbed_file)
    yield Testbed.attach(spec.name, spec.state_dir)
    cli("testbed", "down", str(testbed_file))


@needs_root
def test_up_writes_hosts_file_and_deployed_pipeline_equals_unsplit(running, testbed_file):
    hosts = yaml.safe_load((testbed_file.parent / "hosts.yml").read_text())
    assert [(h["name"], h["device_type"], h["address"]) for h in hosts["hosts"]] == [
        ("near", "edge", "10.78.0.2:50051"), ("far", "edge", "10.78.0.3:50051")]
    assert hosts["hosts"][1]["bw_mbps"] == 20 and hosts["hosts"][0]["mem_mb"] == 2048
    links = yaml.safe_load((testbed_file.parent / "links.yml").read_text())
    assert links["hosts"]["near"]["far"]["bw_Mbps"] < 20
    code, out = cli("testbed", "status", "--name", "pett", "--state-dir",
                    str(running.state_dir))
    assert code == 0 and out.count(" yes ") == 2, out

    dep = load_deployment(testbed_file.parent / "hosts.yml")
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    info = models.model_info(TINY)
    batches = [models.example_inputs(info, 4, seed=s) for s in range(4)]
    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, 0))
    with PipelineClient(pipeline.entry) as client:
        results = list(client.infer_many(batches, window=2))
    with torch.inference_mode():
        for b, r in zip(batches, results):
            assert (r["logits"] - full(b)["logits"]).abs().max().item() <= 1e-5


@needs_root
def test_twenty_mbps_link_measures_well_below_an_uncapped_one(running):
    near, far = running.device("near").endpoint, running.device("far").endpoint
    payload = 1_000_000
    to_near = measure_link(near, payload_bytes=payload, repeats=2).bandwidth_mbps
    to_far = measure_link(far, payload_bytes=payload, repeats=2).bandwidth_mbps
    # Stage to stage over the rpc the scheduler's link measurement uses: far's upload.
    ctl = StageControl("far", far)
    try:
        far_to_near = ctl.stub.MeasureLink(pb.MeasureLinkRequest(
            peer=near, payload_bytes=payload, repeats=2), timeout=60).bandwidth_mbps
    finally:
        ctl.close()
    assert 8 < to_far < 26, to_far
    assert 8 < far_to_near < 26, far_to_near
    assert to_near > 4 * to_far, (to_near, to_far)


@needs_root
def test_down_after_a_lost_state_file_leaves_nothing_and_is_idempotent(tmp_path):
    spec = spec_from_dict({"name": "petc", "subnet": "10.79.0.0/24",
                           "state_dir": str(tmp_path / "state"),
                           "device_types": {"d": {"cpu": 0.5, "mem_mb": 1024, "bw_mbps": 100}},
                           "devices": [{"type": "d", "count": 2}]})
    tb = Testbed.up(spec)
    pids = [d.pid for d in tb.devices]
    with pytest.raises(TestbedError, match="already exists"):
        Testbed.up(spec)
    assert not leftovers("petc", spec.state_dir).empty()
    tb.state.path.unlink()          # as after a crash that lost the state file
    for _ in range(2):              # found by name, and a second `down` is a no-op
        code, out = cli("testbed", "down", "--name", "petc", "--state-dir", spec.state_dir)
        assert code == 0 and "petc: down" in out, out
        left = leftovers("petc", spec.state_dir)
        assert left.empty(), left.describe()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)
    assert not any(p.name.startswith("petc-") for root in detect().roots()
                   for p in root.iterdir())


@needs_root
def test_a_stage_that_cannot_start_fails_up_cleanly_and_keeps_its_log(tmp_path, monkeypatch):
    from pipeedge.coordinator.testbed import processes

    monkeypatch.setattr(processes, "_STAGE_MODULE", "pipeedge.no_such_module")
    spec = spec_from_dict({"name": "petd", "subnet": "10.79.1.0/24",
                           "state_dir": str(tmp_path / "state"),
                           "device_types": {"d": {"cpu": 0.5}}, "devices": [{"type": "d"}]})
    with pytest.raises(TestbedError, match="exited with 1 during start-up.*logs kept in"):
        Testbed.up(spec)
    assert leftovers("petd", spec.state_dir).empty()
    assert "no_such_module" in (tmp_path / "state" / "petd-failed-logs" / "petd-d0.log").read_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_without_root_the_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "run as root or use LocalCluster" in problems()[0]
    with pytest.raises(TestbedError, match="needs root"):
        Testbed.up(spec_from_dict({"device_types": {"a": {}}, "devices": [{"type": "a"}]}))
