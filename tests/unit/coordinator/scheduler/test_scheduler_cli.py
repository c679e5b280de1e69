"""sched-pipeline: the seed's flags and output, plus --links, --objective and --json; errors are
one line and a non-zero exit."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeedge.coordinator.scheduler.cli import main

FIXTURES = Path("/work/shared/fixtures/pipeedge-format")
EXAMPLE_LINKS = (
    Path(__file__).resolve().parents[4] / "coordinator" / "scheduler" / "links.example.yml"
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the seed's three files under their default names."""
    for name in ("models.yml", "device_types.yml", "devices.yml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_defaults_print_the_seed_yaml(workdir: Path) -> None:
    code, out, _ = run()
    assert code == 0
    stages = yaml.safe_load(out)
    assert [list(s) for s in stages] == [
        [h] for h in ("mb-0", "rcc-0", "mb-1", "rcc-1", "mb-2", "rcc-2", "mb-3", "rcc-3")
    ]
    ranges = [next(iter(s.values())) for s in stages]
    assert ranges[0][0] == 1 and ranges[-1][1] == 48
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    assert out.splitlines()[0] == "- mb-0: [1, 5]"  # the seed's flow style


def test_short_flags_and_paths(tmp_path: Path) -> None:
    code, out, _ = run(
        "-m",
        "google/vit-large-patch16-224",
        "-M",
        str(FIXTURES / "models.yml"),
        "-T",
        str(FIXTURES / "device_types.yml"),
        "-D",
        str(FIXTURES / "devices.yml"),
        "-b",
        "8",
        "-d",
        "torch.float32",
        "-i",
        "2",
        "-o",
        "2",
    )
    assert code == 0
    stages = yaml.safe_load(out)
    assert next(iter(stages[-1].values()))[1] == 96


def test_json_has_predictions(workdir: Path) -> None:
    code, out, _ = run("--json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "google/vit-base-patch16-224" and data["objective"] == "throughput"
    assert data["exact"] is True and data["gap"] == 0
    stage_costs = [max(s["compute_s"], s["transfer_s"]) for s in data["stages"]]
    assert data["bottleneck_s"] == pytest.approx(max(stage_costs))
    assert data["throughput_items_s"] == pytest.approx(8 / data["bottleneck_s"])
    assert data["latency_s"] >= sum(s["compute_s"] for s in data["stages"])
    assert all(0 < s["memory_MB"] < 8192 for s in data["stages"])


def test_latency_objective(workdir: Path) -> None:
    code, out, _ = run("--objective", "latency", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["objective"] == "latency"
    _, throughput_out, _ = run("--json")
    assert data["latency_s"] <= json.loads(throughput_out)["latency_s"]


def test_links_file(workdir: Path) -> None:
    code, out, _ = run("--links", str(EXAMPLE_LINKS), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["input_transfer_s"] > 0  # the example models the client legs
    assert data["stages"][-1]["transfer_s"] > 0
    assert all(
        (a["host"], b["host"]) not in {("mb-0", "mb-1"), ("mb-1", "mb-0")}  # bw 0: unusable
        for a, b in zip(data["stages"], data["stages"][1:])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("-m", "no/such-model"), "model 'no/such-model' is not in"),
        (("-M", "missing.yml"), "models file 'missing.yml' not found"),
        (("-d", "torch.float16"), "no host in devices.yml has a device type profiled"),
        (("-d", "torch.complex64"), "unsupported dtype"),
        (("--links", "nope.yml"), "links file 'nope.yml' not found"),
    ],
)
def test_errors_are_one_line(workdir: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and message in err and len(err.strip().splitlines()) == 1


def test_length_mismatch(workdir: Path) -> None:
    models = yaml.safe_load((workdir / "models.yml").read_text())
    models["google/vit-base-patch16-224"]["mem_MB"].pop()
    (workdir / "models.yml").write_text(yaml.safe_dump(models))
    code, _, err = run()
    assert code == 1 and "mem_MB has 47 entries but layers is 48" in err


def test_no_viable_schedule(workdir: Path) -> None:
    (workdir / "devices.yml").write_text(yaml.safe_dump({"Minnowboard-E3845": ["mb-0"]}))
    code, out, err = run("-m", "google/vit-large-patch16-224")
    assert code == 1 and out == ""
    assert "no viable schedule" in err and "add hosts" in err


def test_unproven_plan_is_flagged_in_the_yaml(tmp_path: Path) -> None:
    """24 distinct types, no time to search: stdout gives the bound and gap as YAML comments."""
    layers = 24
    models = {
        "m": {
            "layers": layers,
            "mem_MB": [10.0] * layers,
            "parameters_in": 1000,
            "parameters_out": [1000] * layers,
        }
    }
    types = {
        f"t{k:02d}": {
            "bw_Mbps": 1000,
            "mem_MB": 100 + 7 * k,
            "model_profiles": {
                "m": [
                    {
                        "batch_size": 8,
                        "dtype": "torch.float32",
                        "time_s": [0.1 + 0.01 * ((k * 7 + i) % 5) for i in range(layers)],
                    }
                ]
            },
        }
        for k in range(24)
    }
    devices = {name: [f"{name}-host"] for name in types}
    for name, data in (
        ("models.yml", models),
        ("device_types.yml", types),
        ("devices.yml", devices),
    ):
        (tmp_path / name).write_text(yaml.safe_dump(data))
    code, out, _ = run(
        "-m",
        "m",
        "-M",
        str(tmp_path / "models.yml"),
        "-T",
        str(tmp_path / "device_types.yml"),
        "-D",
        str(tmp_path / "devices.yml"),
        "--time-limit",
        "0",
    )
    assert code == 0
    assert out.startswith("# not proven optimal: best found in")
    assert "proven lower bound" in out.splitlines()[1] and "gap" in out.splitlines()[1]
    assert len(yaml.safe_load(out)) >= 2


def test_help_flag() -> None:
    code, out, _ = run("-h")
    assert code == 0 and "--model-name" in out and "--links" in out
