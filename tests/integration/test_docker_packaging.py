"""Docker packaging: the health probe against a real stage server, and the shipped files.

The container end-to-end test (image build, 3 devices, deploy, parity, restarts) is
`make test-docker`; these checks need no Docker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeedge.stage_server import healthcheck
from pipeedge.stage_server.server import build_server
from pipeedge.stage_server.servicer import StageServicer
from pipeedge.stage_server.weight_cache import WeightCache

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture
def stage(tmp_path):
    servicer = StageServicer("probe-test", WeightCache(tmp_path / "weights"))
    server, port, health_servicer = build_server("127.0.0.1:0", servicer)
    server.start()
    yield f"127.0.0.1:{port}", health_servicer
    server.stop(0).wait()
    servicer.shutdown()


def test_probe_serving(stage):
    address, _ = stage
    assert healthcheck.check(address, timeout_s=5)[0]
    assert healthcheck.main(["--address", address, "-q"]) == 0
    assert healthcheck.main(["--address", address, "--service", "pipeedge.v1.Stage", "-q"]) == 0


def test_probe_not_serving_and_unknown_service(stage, capsys):
    address, health_servicer = stage
    assert healthcheck.main(["--address", address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    health_servicer.enter_graceful_shutdown()
    assert healthcheck.main(["--address", address]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_probe_unreachable_is_quick_failure():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving, line = healthcheck.check(f"127.0.0.1:{port}", timeout_s=0.5)
    assert not serving
    assert "DEADLINE_EXCEEDED" in line or "UNAVAILABLE" in line


def test_probe_as_module_uses_environment(stage):
    address, _ = stage
    port = address.rsplit(":", 1)[1]
    env = {"PIPEEDGE_HOST": "0.0.0.0", "PIPEEDGE_PORT": port, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "pipeedge.stage_server.healthcheck"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"127.0.0.1:{port}: SERVING"


@pytest.mark.parametrize("host,port,expected", [
    (None, None, "127.0.0.1:50051"),
    ("0.0.0.0", "50061", "127.0.0.1:50061"),
    ("::", "7", "127.0.0.1:7"),
    ("10.0.0.7", "50051", "10.0.0.7:50051"),
    ("fe80::1", "50051", "[fe80::1]:50051"),
])
def test_default_address(monkeypatch, host, port, expected):
    for name, value in (("PIPEEDGE_HOST", host), ("PIPEEDGE_PORT", port)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert healthcheck.default_address() == expected


def test_probe_imports_no_torch():
    code = ("import sys, pipeedge.stage_server.healthcheck as h; h.check; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False"


def test_stage_compose_file():
    service = yaml.safe_load((DOCKER / "compose.stage.yml").read_text())["services"]["stage"]
    assert service["healthcheck"]["test"][:4] == ["CMD", "python", "-m",
                                                  "pipeedge.stage_server.healthcheck"]
    assert service["restart"] == "unless-stopped"
    assert any(v.endswith(":/var/cache/pipeedge") for v in service["volumes"])
    assert "--cache-dir=/var/cache/pipeedge" in service["command"]
    for setting in ("PIPEEDGE_THREADS", "PIPEEDGE_CPUS", "PIPEEDGE_MEM_LIMIT", "PIPEEDGE_PORT"):
        assert setting in (DOCKER / "compose.stage.yml").read_text()


def test_stage_flags_in_compose_exist_in_cli():
    from click.testing import CliRunner

    from pipeedge.stage_server.cli import main

    help_text = CliRunner().invoke(main, ["--help"]).output
    service = yaml.safe_load((DOCKER / "compose.stage.yml").read_text())["services"]["stage"]
    for arg in service["command"][1:]:
        assert arg.split("=", 1)[0] in help_text, arg


def test_dockerfile_offline_and_non_root():
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert text.count("--no-index") >= 2
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and all("root" not in line and " 0" not in line for line in user_lines)
    for arch_word in ("x86_64", "amd64", "aarch64", "arm64"):
        assert arch_word not in "\n".join(
            line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_arm64_requirements_follow_aarch64_markers(tmp_path):
    """pip download --platform evaluates markers for the x86 host; the arm64 wheelhouse's list
    must instead drop x86-only requirements, keep aarch64 ones, and leave out the given wheels."""
    import zipfile

    def wheel(name, requires):
        path = tmp_path / f"{name}-1.0-cp311-cp311-manylinux_2_28_aarch64.whl"
        meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(name) + "".join(
            f"Requires-Dist: {r}\n" for r in requires)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        return path

    torch = wheel("torch", ["filelock", 'nvidia-cudnn-cu12==9.1; platform_machine == "x86_64"',
                            'setuptools; python_version >= "3.12"', "sympy>=1.13"])
    ours = wheel("pipeedge", ["torch>=2.1", "numpy>=1.24", 'onnx>=1.15; extra == "onnx"',
                              'hf-xet; platform_machine == "aarch64"'])
    lines = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(DOCKER / "arm64" / "requirements.py"), *a], capture_output=True,
        text=True, check=True, timeout=60).stdout.split()
    assert lines(str(torch), str(ours)) == ["filelock", "sympy>=1.13", "numpy>=1.24", "hf-xet"]
    assert "onnx>=1.15" in lines("--extras", "onnx", str(torch), str(ours))
