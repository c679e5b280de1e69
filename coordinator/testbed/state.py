"""The state file: what `up` created, so `down` and `status` work from another process.

Written before anything is created (then updated with pids), so a crash half-way through `up`
still leaves a record; `down` also searches by name prefix in case this file is lost.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeedge.coordinator.testbed.errors import TestbedError


@dataclass
class DeviceState:
    name: str
    type: str
    index: int
    address: str       # IP on the testbed subnet
    port: int
    netns: str
    cpu: float
    mem_mb: float
    bw_mbps: float
    threads: int
    pid: int = 0

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class TestbedState:
    __test__ = False

    prefix: str
    subnet: str
    host_address: str
    workdir: str
    hosts_file: str
    devices: list[DeviceState] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return state_path(Path(self.workdir))

    def device(self, name: str) -> DeviceState:
        for d in self.devices:
            if d.name == name:
                return d
        raise TestbedError(f"testbed {self.prefix} has no device '{name}'; it has "
                           f"{[d.name for d in self.devices]}")

    def save(self) -> Path:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path


def state_path(workdir: Path) -> Path:
    return workdir / "state.json"


def workdir_for(state_dir: str | Path, prefix: str) -> Path:
    return Path(state_dir) / prefix


def load(workdir: Path) -> TestbedState | None:
    """The saved state, or None when there is none (or it is unreadable: `down` still scans)."""
    try:
        data = json.loads(state_path(workdir).read_text())
        devices = [DeviceState(**d) for d in data.pop("devices", [])]
        return TestbedState(**data, devices=devices)
    except (OSError, ValueError, TypeError):
        return None


def known_prefixes(state_dir: str | Path) -> list[str]:
    root = Path(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/state.json"))
