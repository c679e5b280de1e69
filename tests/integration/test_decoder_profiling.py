"""Planning decoders from real stage processes: the Profile rpc measures decode steps and the
plan uses them."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from pipeedge.coordinator.cli import main

MODEL = "pipeedge/tiny-gpt2"  # 12 sub-layers, attention in 1, 5, 9; 64 wide; 256 positions


LAYERS = 12


def test_profile_rpc_measures_decode_steps_and_plan_uses_them(cluster_factory):
    cluster = cluster_factory(1)
    hosts = cluster.hosts_file(MODEL, microbatch=2, sessions=2, context=64)
    runner = CliRunner()
    result = runner.invoke(main, ["profile", str(hosts), "--no-progress"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ms per decode step at 64 cached tokens" in result.output
    folder = hosts.parent
    entry = yaml.safe_load((folder / "models.yml").read_text())[MODEL]
    assert entry["step_parameters_in"] == 1
    assert entry["step_parameters_out"][:4] == [128, 64, 256, 64]  # one token: 64-wide cuts
    assert entry["step_parameters_out"][-1] == 320  # last-position logits
    run = yaml.safe_load((folder / "device_types.yml").read_text())["stage0"][
        "model_profiles"][MODEL][-1]
    assert run["step_context"] == 64 and len(run["step_time_s"]) == LAYERS
    assert all(t > 0 for t in run["step_time_s"] + run["time_s"])
    result = runner.invoke(main, ["plan", str(hosts), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0 and "decode-step times" in result.output, result.output
