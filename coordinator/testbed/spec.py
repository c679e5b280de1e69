"""testbed.yml: device types (CPU share, memory, bandwidth), how many of each, and the subnet.

The same file says what `testbed up` writes into hosts.yml (the `deployment:` mapping is copied
verbatim), so profile, plan and deploy all run on the emulated devices without another file.
See coordinator/testbed/testbed.example.yml.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.naming import DEFAULT_PREFIX, check_device_name, check_prefix

DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_PORT = 50051
DEFAULT_STATE_DIR = Path("/run/pipeedge-testbed")
MIN_MEM_MB = 400.0  # a stage server with torch imported needs about this much before any shard


@dataclass(frozen=True)
class DeviceType:
    name: str
    cpu: float            # cores (CFS quota); 0 = unlimited
    mem_mb: float         # memory limit, MB = 1e6 bytes as in profiles; 0 = unlimited
    bw_mbps: float        # link cap, both directions; 0 = unshaped
    threads: int = 0      # stage --threads; 0 = ceil(cpu), at least 1


@dataclass(frozen=True)
class DeviceSpec:
    """One emulated device: its type plus any per-device override (e.g. one slow link)."""

    name: str
    type: str
    cpu: float
    mem_mb: float
    bw_mbps: float
    threads: int

    @property
    def stage_threads(self) -> int:
        return self.threads or max(1, math.ceil(self.cpu or 1))


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False

    name: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    port: int = DEFAULT_PORT
    devices: tuple[DeviceSpec, ...] = ()
    types: tuple[DeviceType, ...] = ()
    deployment: dict = field(default_factory=dict)
    hosts_file: str = ""        # where to write hosts.yml; "" = inside the state directory
    state_dir: str = str(DEFAULT_STATE_DIR)
    start_timeout_s: float = 120.0
    cpu_priority: float = 1.0   # CPU weight vs an ordinary process; > 1 keeps quotas on a busy host
    source: Path | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    def host_address(self) -> str:
        """The coordinator's address on the testbed: the subnet's first host."""
        return str(self.network.network_address + 1)

    def device_address(self, index: int) -> str:
        return str(self.network.network_address + 2 + index)


def load_spec(path: str | Path, **overrides) -> TestbedSpec:
    path = Path(path)
    if not path.is_file():
        raise TestbedError(f"testbed file {path} not found; start from "
                           "coordinator/testbed/testbed.example.yml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TestbedError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise TestbedError(f"{path} must be a mapping with 'device_types' and 'devices'")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return spec_from_dict(data, source=path)


def spec_from_dict(data: dict, *, source: Path | None = None) -> TestbedSpec:
    where = str(source or "testbed spec")
    types = _parse_types(data.get("device_types"), where)
    devices = _parse_devices(data.get("devices"), {t.name: t for t in types}, where)
    spec = TestbedSpec(
        name=check_prefix(str(data.get("name", DEFAULT_PREFIX))),
        subnet=str(data.get("subnet", DEFAULT_SUBNET)), port=int(data.get("port", DEFAULT_PORT)),
        devices=devices, types=types, deployment=dict(data.get("deployment") or {}),
        hosts_file=str(data.get("hosts_file", "")),
        state_dir=str(data.get("state_dir", DEFAULT_STATE_DIR)),
        start_timeout_s=float(data.get("start_timeout_s", 120.0)),
        cpu_priority=float(data.get("cpu_priority", 1.0)), source=source)
    if not 0.01 <= spec.cpu_priority <= 100:
        raise TestbedError(f"{where}: cpu_priority {spec.cpu_priority:g} is out of range; use "
                           "0.01-100 (1 = like any other process)")
    _check_subnet(spec, where)
    return spec


def _parse_types(raw, where: str) -> tuple[DeviceType, ...]:
    if not isinstance(raw, dict) or not raw:
        raise TestbedError(f"{where} has no 'device_types'; add e.g. device_types: "
                           "{fast: {cpu: 0.5, mem_mb: 2048, bw_mbps: 1000}}")
    types = []
    for name, t in raw.items():
        t = t or {}
        if not isinstance(t, dict):
            raise TestbedError(f"{where}: device_types.{name} must be a mapping of "
                               "cpu, mem_mb, bw_mbps")
        unknown = set(t) - {"cpu", "mem_mb", "bw_mbps", "threads"}
        if unknown:
            raise TestbedError(f"{where}: device_types.{name} has unknown key(s) "
                               f"{sorted(unknown)}; use cpu, mem_mb, bw_mbps, threads")
        dt = DeviceType(str(name), float(t.get("cpu", 0)), float(t.get("mem_mb", 0)),
                        float(t.get("bw_mbps", 0)), int(t.get("threads", 0)))
        _check_limits(f"{where}: device_types.{name}", dt.cpu, dt.mem_mb, dt.bw_mbps)
        types.append(dt)
    return tuple(types)


def _parse_devices(raw, types: dict[str, DeviceType], where: str) -> tuple[DeviceSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise TestbedError(f"{where} has no 'devices'; add e.g. devices: "
                           "[{type: fast, count: 2}]")
    devices: list[DeviceSpec] = []
    counters: dict[str, int] = {}
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or d.get("type") not in types:
            raise TestbedError(f"{where}: devices[{i}] needs 'type' naming one of "
                               f"{sorted(types)}")
        t = types[d["type"]]
        count = int(d.get("count", 1))
        for k in range(count):
            if "name" in d:
                name = str(d["name"]) if count == 1 else f"{d['name']}{k}"
            else:
                n = counters.get(t.name, 0)
                counters[t.name] = n + 1
                name = f"{t.name}{n}"
            dev = DeviceSpec(check_device_name(name), t.name, float(d.get("cpu", t.cpu)),
                             float(d.get("mem_mb", t.mem_mb)), float(d.get("bw_mbps", t.bw_mbps)),
                             int(d.get("threads", t.threads)))
            _check_limits(f"{where}: device {name}", dev.cpu, dev.mem_mb, dev.bw_mbps)
            devices.append(dev)
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise TestbedError(f"{where}: device names must be unique, got {names}; "
                           "give groups distinct 'name's")
    return tuple(devices)


def _check_limits(what: str, cpu: float, mem_mb: float, bw_mbps: float) -> None:
    if cpu < 0 or bw_mbps < 0 or mem_mb < 0:
        raise TestbedError(f"{what}: cpu, mem_mb and bw_mbps must be >= 0 (0 = unlimited)")
    if 0 < cpu < 0.01:
        raise TestbedError(f"{what}: cpu {cpu} is below 0.01 core; raise it")
    if 0 < mem_mb < MIN_MEM_MB:
        raise TestbedError(f"{what}: mem_mb {mem_mb:g} is too small for a stage server; "
                           f"use at least {MIN_MEM_MB:g}")


def _check_subnet(spec: TestbedSpec, where: str) -> None:
    try:
        net = spec.network
    except ValueError as exc:
        raise TestbedError(f"{where}: subnet '{spec.subnet}' is invalid ({exc}); "
                           "use e.g. 10.77.0.0/24") from None
    if not net.is_private:
        raise TestbedError(f"{where}: subnet {net} is not private; use e.g. 10.77.0.0/24")
    if net.num_addresses - 3 < len(spec.devices):
        raise TestbedError(f"{where}: subnet {net} has room for {net.num_addresses - 3} "
                           f"devices, not {len(spec.devices)}; use a larger one")
