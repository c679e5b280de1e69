"""`pipeedge-coord profile` carries each device type's wire cost (frame_time_s, wire_time_s_per_MB)
into its device_types.yml run: the mean over the type's hosts, or nothing when one host did not
measure it (an older server reports 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeedge.coordinator.hosts import Deployment, Host
from pipeedge.coordinator.profiling import LayerProfile, write_scheduler_files
from pipeedge.coordinator.scheduler.seed_files import load_doc

MODEL = "pipeedge/tiny-vit"


def _run(tmp_path: Path, wire: list[tuple[float, float]]) -> dict:
    hosts = tuple(Host(f"pi-{i}", f"127.0.0.1:{i + 1}", device_type="pi") for i in range(len(wire)))
    profiles = [LayerProfile(h, (0.1, 0.2), (1.0, 2.0), (10, 4), 5, 512.0, frame_time_s=f,
                             wire_time_s_per_mb=m) for h, (f, m) in zip(hosts, wire, strict=True)]
    write_scheduler_files(Deployment(model=MODEL, hosts=hosts), profiles, tmp_path, batch=2,
                          dtype="float32")
    (run,) = load_doc(tmp_path / "device_types.yml")["pi"]["model_profiles"][MODEL]
    return run


def test_wire_cost_is_averaged_over_the_types_hosts(tmp_path: Path):
    run = _run(tmp_path, [(0.010, 0.004), (0.030, 0.002)])
    assert run["frame_time_s"] == pytest.approx(0.020)
    assert run["wire_time_s_per_MB"] == pytest.approx(0.003)
    assert run["time_s"] == pytest.approx([0.1, 0.2])


def test_wire_cost_is_left_out_when_a_host_did_not_measure_it(tmp_path: Path):
    run = _run(tmp_path, [(0.010, 0.004), (0.0, 0.0)])
    assert "frame_time_s" not in run and "wire_time_s_per_MB" not in run
    assert run["time_s"] == pytest.approx([0.1, 0.2])
