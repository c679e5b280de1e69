"""`testbed status`: per device, whether its pieces exist and what caps are in force."""

from __future__ import annotations

from pathlib import Path

from pipeedge.coordinator.testbed import cgroups, network, processes
from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.naming import Names
from pipeedge.coordinator.testbed.state import load, workdir_for

HEADERS = ["device", "type", "address", "pid", "serving", "cpu (cores)", "mem_mb", "link Mbps",
           "throttled s"]


def status_rows(prefix: str, state_dir: str | Path) -> list[list[object]]:
    """One row per device, read from the live system (not just the state file)."""
    state = load(workdir_for(state_dir, prefix))
    if state is None:
        raise TestbedError(f"testbed {prefix} is not up (no state in {state_dir}); run "
                           "`pipeedge-coord testbed up testbed.yml`")
    names = Names(prefix)
    try:
        cg = cgroups.detect()
    except TestbedError:
        cg = None
    namespaces = set(network.owned_namespaces(names))
    rows: list[list[object]] = []
    for d in state.devices:
        up = d.netns in namespaces
        rows.append([
            d.name, d.type, d.endpoint, d.pid if processes.alive(d.pid) else "-",
            _serving(d.name, d.endpoint) if up else "no netns",
            f"{cg.cpu_cores(names.cgroup(d.name)):g}" if cg else "?", f"{d.mem_mb:g}",
            f"{network.bandwidth(names, d.name):g}" if up else "-",
            f"{cg.throttled_s(names.cgroup(d.name)):.1f}" if cg else "?"])
    return rows


def _serving(name: str, endpoint: str) -> str:
    from pipeedge.coordinator.stage_control import StageControl, StageUnreachable

    ctl = StageControl(name, endpoint)
    try:
        ctl.check_serving(timeout_s=2)
        return "yes"
    except StageUnreachable:
        return "NO"
    finally:
        ctl.close()
