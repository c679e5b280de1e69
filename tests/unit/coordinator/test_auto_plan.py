"""Planning without a partition, in process: each host's encoding costs its outgoing link in
the schedule, and the NIC speed probe. The real profile -> schedule -> deploy path over stage
processes is tests/integration/test_auto_plan_pipeline.py."""

from __future__ import annotations

import yaml

from pipeedge.stage_server.device_info import nic_speed_mbps

MODEL = "pipeedge/tiny-vit"


def _slow_link_setup(tmp_path, encodings: dict[str, str], top: str = "raw", dtype="float32"):
    """Two equal hosts on a 10 Mbps link; 12 layers of 10 ms, 100k output elements each."""
    layers = 12
    (tmp_path / "models.yml").write_text(yaml.safe_dump({MODEL: {
        "layers": layers, "mem_MB": [1.0] * layers, "parameters_in": 1000,
        "parameters_out": [100_000] * layers}}))
    (tmp_path / "device_types.yml").write_text(yaml.safe_dump({"box": {
        "bw_Mbps": 10, "mem_MB": 1000, "model_profiles": {MODEL: [
            {"batch_size": 2, "dtype": f"torch.{dtype}", "time_s": [0.01] * layers}]}}}))
    (tmp_path / "devices.yml").write_text(yaml.safe_dump({"box": ["a", "b"]}))
    hosts = [{"name": n, "address": f"127.0.0.1:{5000 + i}", "device_type": "box",
              **({"encoding": encodings[n]} if n in encodings else {})}
             for i, n in enumerate("ab")]
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"model": MODEL, "microbatch": 2, "dtype": dtype,
                                    "encoding": top, "hosts": hosts}))
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment

    return planning.plan(load_deployment(path))


def test_scheduler_costs_each_hosts_encoding_on_its_outgoing_link(tmp_path):
    # Raw: 2 x 100k float32 = 800 kB take 0.61 s at 10 Mbps; one host alone (0.12 s) is faster.
    raw = _slow_link_setup(tmp_path, {})
    assert [s.host.name for s in raw.stages] == ["a"]
    # b sends 4-bit codes: 1/8 of the bytes, 0.076 s; b first, then a, beats one host.
    plan = _slow_link_setup(tmp_path, {"b": "uniform:4"})
    assert [s.host.name for s in plan.stages] == ["b", "a"]
    first = plan.schedule.stages[0]
    assert abs(first.transfer_s - 800_000 * 8 / 8 / (10 * 2**20)) < 1e-9
    assert plan.schedule.stages[1].transfer_s == 0  # the client legs are not modelled here
    # The top-level encoding applies to every host without its own, relative to the compute
    # dtype: uniform:4 is 1/8 of float32's bytes but 1/4 of float16's (which carry half as many).
    for dtype in ("float32", "float16"):
        both = _slow_link_setup(tmp_path, {}, top="uniform:4", dtype=dtype)
        assert len(both.stages) == 2
        assert abs(both.schedule.stages[0].transfer_s - 100_000 * 8 / (10 * 2**20)) < 1e-9
    # Adaptive is costed as raw (it sends raw whenever the link allows).
    assert len(_slow_link_setup(tmp_path, {"a": "adaptive:5", "b": "adaptive:5"}).stages) == 1


def test_nic_speed_prefers_physical_nics_that_are_up(tmp_path):
    def nic(name, speed, state="up", physical=True):
        d = tmp_path / name
        d.mkdir()
        (d / "operstate").write_text(state + "\n")
        (d / "speed").write_text(f"{speed}\n")
        if physical:
            (d / "device").mkdir()

    assert nic_speed_mbps(tmp_path) == 0.0            # nothing there
    nic("lo", 10000, physical=False)
    nic("veth0", 10000, physical=False)
    assert nic_speed_mbps(tmp_path) == 10000 * 1e6 / 2**20  # only virtual ones: take them
    nic("eth0", 100)
    nic("eth1", 1000, state="down")
    nic("wlan0", -1)                                  # Wi-Fi: no speed
    assert nic_speed_mbps(tmp_path) == 100 * 1e6 / 2**20   # the physical NIC that is up
    assert nic_speed_mbps(tmp_path / "missing") == 0.0
