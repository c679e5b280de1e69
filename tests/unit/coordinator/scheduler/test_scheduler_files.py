"""Reading the seed's YAML files and the links file into scheduler inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeedge.coordinator.scheduler import (
    DeviceProfile,
    Link,
    SchedulingError,
    load_inputs,
    schedule,
)
from pipeedge.coordinator.scheduler.links import parse_links
from pipeedge.coordinator.scheduler.seed_files import load_devices, load_model

FIXTURES = Path("/work/shared/fixtures/pipeedge-format")
EXAMPLE_LINKS = (
    Path(__file__).resolve().parents[4] / "coordinator" / "scheduler" / "links.example.yml"
)
VIT_BASE = "google/vit-base-patch16-224"


def _model(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "layers": 4,
        "mem_MB": [1.0] * 4,
        "parameters_in": 10,
        "parameters_out": [20] * 4,
    }
    entry.update(overrides)
    return {"m": entry}


def test_fixtures_load_in_the_seed_order() -> None:
    inputs = load_inputs(
        model_name=VIT_BASE,
        models_file=FIXTURES / "models.yml",
        dev_types_file=FIXTURES / "device_types.yml",
        dev_file=FIXTURES / "devices.yml",
    )
    assert inputs.model.layers == 48 and inputs.model.parameters_in == 150528
    assert [d.host for d in inputs.devices] == [
        "mb-0",
        "mb-1",
        "mb-2",
        "mb-3",
        "rcc-0",
        "rcc-1",
        "rcc-2",
        "rcc-3",
    ]
    assert inputs.devices[0].mem_MB == 2048 and len(inputs.devices[0].time_s) == 48
    assert inputs.links is None


def test_short_parameters_out_repeats_as_a_block(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = load_model(_model(parameters_out=[5, 6]), "m")
    assert model.parameters_out == (5, 6, 5, 6)
    assert "repeating" in caplog.text


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mem_MB": [1.0] * 3}, "mem_MB has 3 entries but layers is 4"),
        ({"parameters_out": [1] * 5}, "parameters_out has 5 entries for 4 layers"),
        ({"layers": 0, "mem_MB": []}, "has 0 layers"),
        ({"parameters_in": None}, "lacks or mistypes"),
    ],
)
def test_model_errors_name_the_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        load_model(_model(**overrides), "m")


def _types(times: list[float] | None = None, **run: object) -> dict[str, object]:
    profile = [{"batch_size": 8, "dtype": "torch.float32", "time_s": times or [0.1] * 4, **run}]
    return {
        "A": {"bw_Mbps": 100, "mem_MB": 50, "model_profiles": {"m": profile}},
        "Dummy": {"bw_Mbps": 0, "mem_MB": 0, "model_profiles": None},
    }


def test_devices_skip_unprofiled_and_unknown_types(caplog: pytest.LogCaptureFixture) -> None:
    model = load_model(_model(), "m")
    with caplog.at_level(logging.WARNING):
        devices = load_devices(
            _types(),
            {"A": ["a0", "a1"], "Dummy": ["d0"], "Ghost": ["g0"], "Empty": None},
            model,
            dtype="torch.float32",
            batch_size=8,
        )
    assert [d.host for d in devices] == ["a0", "a1"]
    assert "Dummy" in caplog.text and "Ghost" in caplog.text


def test_device_errors() -> None:
    model = load_model(_model(), "m")
    with pytest.raises(SchedulingError, match="time_s for m has 3 entries"):
        load_devices(_types([0.1] * 3), {"A": ["a0"]}, model, dtype="torch.float32", batch_size=8)
    with pytest.raises(SchedulingError, match="host 'a0' appears twice"):
        load_devices(_types(), {"A": ["a0", "a0"]}, model, dtype="torch.float32", batch_size=8)
    with pytest.raises(SchedulingError, match=r"at dtype torch\.float32, batch size 4"):
        load_devices(_types(), {"A": ["a0"]}, model, dtype="torch.float32", batch_size=4)


def test_devices_carry_their_frame_costs() -> None:
    model = load_model(_model(), "m")
    plain = load_devices(_types(), {"A": ["a0"]}, model, dtype="torch.float32", batch_size=8)
    assert (plain[0].frame_s, plain[0].wire_s_per_MB) == (0.0, 0.0)  # older profiles
    timed = load_devices(_types(frame_time_s=0.002, wire_time_s_per_MB=0.0015), {"A": ["a0"]},
                         model, dtype="torch.float32", batch_size=8)
    assert (timed[0].frame_s, timed[0].wire_s_per_MB) == (0.002, 0.0015)
    with pytest.raises(SchedulingError, match="wire_time_s_per_MB -1.0 is negative"):
        load_devices(_types(wire_time_s_per_MB=-1), {"A": ["a0"]}, model, dtype="torch.float32",
                     batch_size=8)


def _hosts(*names: str, bw: float = 100.0) -> list[DeviceProfile]:
    return [DeviceProfile(n, "A", 50.0, bw, (0.1,)) for n in names]


def test_links_precedence() -> None:
    devices = _hosts("a", "b", "c")
    raw = {
        "symmetric": True,
        "hosts": {
            "a": {"b": {"bw_Mbps": 10, "latency_ms": 1}, "*": {"bw_Mbps": 20}},
            "*": {"c": {"bw_Mbps": 30}, "*": {"bw_Mbps": 40, "latency_ms": 2}},
        },
    }
    net = parse_links(raw, devices)
    assert net.host_to_host[("a", "b")] == Link(10, 1)
    assert net.host_to_host[("b", "a")] == Link(10, 1)  # symmetric
    assert net.host_to_host[("a", "c")] == Link(20, 0)  # a -> *
    assert net.host_to_host[("b", "c")] == Link(30, 0)  # * -> c
    assert net.host_to_host[("c", "b")] == Link(40, 2)  # * -> *
    assert net.client_to_host is None and net.host_to_client is None
    asymmetric = parse_links({**raw, "symmetric": False}, devices)
    assert asymmetric.host_to_host[("b", "a")] == Link(40, 2)  # no b -> a entry: * -> *


def test_links_fall_back_to_the_seed_rule() -> None:
    devices = [*_hosts("a"), DeviceProfile("b", "B", 50.0, 30.0, (0.1,))]
    net = parse_links({"hosts": {}}, devices)
    assert net.host_to_host[("a", "b")] == Link(30.0, 0.0)


def test_links_client_legs_need_every_host() -> None:
    devices = _hosts("a", "b")
    net = parse_links(
        {"client_to_host": {"*": {"bw_Mbps": 5}, "a": {"bw_Mbps": 50, "latency_ms": 3}}}, devices
    )
    assert net.client_to_host == {"a": Link(50, 3), "b": Link(5, 0)}
    with pytest.raises(SchedulingError, match="host_to_client has no entry for host 'b'"):
        parse_links({"host_to_client": {"a": {"bw_Mbps": 5}}}, devices)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"hostz": {}}, "unknown keys"),
        ({"hosts": {"a": {"b": {"latency_ms": 1}}}}, "must be a map with bw_Mbps"),
        ({"hosts": {"a": {"b": {"bw_Mbps": -1}}}}, "negative"),
        ([1, 2], "must be a map"),
    ],
)
def test_links_errors(raw: object, message: str) -> None:
    with pytest.raises(SchedulingError, match=message):
        parse_links(raw, _hosts("a", "b"))


def test_example_links_file_parses_for_the_fixture_hosts() -> None:
    inputs = load_inputs(
        model_name=VIT_BASE,
        models_file=FIXTURES / "models.yml",
        dev_types_file=FIXTURES / "device_types.yml",
        dev_file=FIXTURES / "devices.yml",
        links_file=EXAMPLE_LINKS,
    )
    assert inputs.links is not None
    assert inputs.links.host_to_host[("mb-0", "rcc-0")] == Link(95, 2.0)  # symmetric
    assert inputs.links.host_to_host[("mb-1", "mb-0")] == Link(0, 0)  # unusable
    assert inputs.links.client_to_host is not None and inputs.links.client_to_host["rcc-0"] == Link(
        940, 0.5
    )
    result = schedule(model=inputs.model, devices=inputs.devices, links=inputs.links)
    assert result.exact and result.input_transfer_s > 0


def test_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "models.yml"
    bad.write_text("m: [1, 2\n")
    with pytest.raises(SchedulingError, match="not valid YAML"):
        load_inputs(model_name="m", models_file=bad)


def test_profiling_merges_into_the_seeds_files_and_the_seeds_reader_sees_it(tmp_path: Path):
    """write_scheduler_files (profiling) into the seed's own files: other models and device
    types stay as the seed wrote them, a re-profile replaces its run, and the seed's reader and
    planning's `last_run` both read what was written."""
    import shutil

    import yaml

    from pipeedge.coordinator.hosts import Deployment, Host
    from pipeedge.coordinator.profiling import LayerProfile, write_scheduler_files
    from pipeedge.coordinator.scheduler.seed_files import last_run, load_doc

    if not FIXTURES.is_dir():
        pytest.skip(f"seed fixtures not found at {FIXTURES}")
    for name in ("models", "device_types", "devices"):
        shutil.copy(FIXTURES / f"{name}.yml", tmp_path / f"{name}.yml")
    seed_types = yaml.safe_load((FIXTURES / "device_types.yml").read_text())
    host = Host("mb-9", "127.0.0.1:1", device_type="Minnowboard-E3845")
    dep = Deployment(model="pipeedge/tiny-vit", hosts=(host,))

    def profile(t: float) -> LayerProfile:
        return LayerProfile(host, (t, t, 2 * t), (1.0, 2.0, 3.0), (10, 10, 4), 5, 512.0)

    for t in (0.5, 0.25):  # the second run replaces the first (same batch and dtype)
        write_scheduler_files(dep, [profile(t)], tmp_path, batch=4, dtype="float32")
    write_scheduler_files(dep, [profile(9.0)], tmp_path, batch=8, dtype="float32")
    types = load_doc(tmp_path / "device_types.yml")
    runs = types["Minnowboard-E3845"]["model_profiles"]["pipeedge/tiny-vit"]
    assert [(r["batch_size"], r["time_s"]) for r in runs] == [(4, [0.25, 0.25, 0.5]),
                                                             (8, [9.0, 9.0, 18.0])]
    for name, entry in seed_types.items():  # what the seed wrote is all still there
        for model, seed_runs in (entry.get("model_profiles") or {}).items():
            assert types[name]["model_profiles"][model] == seed_runs
    run = last_run(types, "Minnowboard-E3845", "pipeedge/tiny-vit", dtype="torch.float32",
                   batch_size=4)
    assert run is not None and run["layer_mem_MB"] == [1.0, 2.0, 3.0]
    model = load_model(load_doc(tmp_path / "models.yml"), "pipeedge/tiny-vit")
    assert model.parameters_out == (10, 10, 4) and model.mem_MB == (1.0, 2.0, 3.0)
    (device,) = load_devices(types, load_doc(tmp_path / "devices.yml"), model,
                             dtype="torch.float32", batch_size=4)
    assert (device.host, device.time_s, device.mem_MB) == ("mb-9", (0.25, 0.25, 0.5), 512.0)
