"""`Testbed`: a running testbed as an object, for tests and benchmarks (a context manager).

It changes a device's link or CPU cap in place, so one testbed can serve several
measurements without restarting its stage servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeedge.coordinator.testbed import cgroups, lifecycle, network
from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.hostsfile import write_hosts_file, write_links_file
from pipeedge.coordinator.testbed.naming import Names
from pipeedge.coordinator.testbed.spec import DEFAULT_STATE_DIR, TestbedSpec
from pipeedge.coordinator.testbed.state import DeviceState, TestbedState, load, workdir_for


class Testbed:
    __test__ = False

    def __init__(self, state: TestbedState, state_dir: str | Path,
                 deployment: Mapping | None = None) -> None:
        self.state = state
        self.state_dir = Path(state_dir)
        self.deployment = dict(deployment or {})
        self.names = Names(state.prefix)

    @classmethod
    def up(cls, spec: TestbedSpec) -> Testbed:
        return cls(lifecycle.up(spec), spec.state_dir, spec.deployment)

    @classmethod
    def attach(cls, prefix: str, state_dir: str | Path = DEFAULT_STATE_DIR) -> Testbed:
        """The testbed another process brought up, from its state file."""
        state = load(workdir_for(state_dir, prefix))
        if state is None:
            raise TestbedError(f"testbed {prefix} is not up (no state in {state_dir}); run "
                               "`pipeedge-coord testbed up testbed.yml`")
        return cls(state, state_dir)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -- what it is ---------------------------------------------------------------------------

    @property
    def devices(self) -> list[DeviceState]:
        return self.state.devices

    @property
    def hosts_file(self) -> Path:
        return Path(self.state.hosts_file)

    @property
    def host_address(self) -> str:
        return self.state.host_address

    def device(self, name: str) -> DeviceState:
        return self.state.device(name)

    def write_hosts(self, path: Path, devices: Sequence[str] | None = None,
                    per_host: Mapping[str, Mapping] | None = None, **deployment) -> Path:
        """A hosts.yml for some devices (in the given order) with deployment overrides."""
        chosen = [self.device(n) for n in devices] if devices else self.devices
        return write_hosts_file(path, chosen, {**self.deployment, **deployment}, per_host)

    def write_links(self, path: Path, devices: Sequence[str] | None = None) -> Path:
        """links.yml with the emulated caps, for the scheduler (`set_bandwidth` included)."""
        chosen = [self.device(n) for n in devices] if devices else self.devices
        return write_links_file(path, chosen)

    # -- changing it in place ---------------------------------------------------------------

    def set_bandwidth(self, name: str, mbps: float, direction: str = "both") -> None:
        """Re-shape a device's link at run time (0 = unshaped). `direction` "down" caps only
        what is sent to the device (e.g. one stage-to-stage hop, not the results coming back),
        "up" only what it sends; the recorded cap (status, links.yml) follows "both" only."""
        d = self.device(name)
        network.set_bandwidth(self.names, d.name, d.index, mbps, direction)
        if direction == "both":
            d.bw_mbps = mbps
            self.state.save()

    def set_cpu(self, name: str, cores: float) -> None:
        d = self.device(name)
        cgroups.detect().set_cpu(self.names.cgroup(d.name), cores)
        d.cpu = cores
        self.state.save()

    def throttled_s(self, name: str) -> float:
        return cgroups.detect().throttled_s(self.names.cgroup(name))

    def down(self) -> lifecycle.Leftovers:
        return lifecycle.down(self.state.prefix, self.state_dir)
