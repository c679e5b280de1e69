"""`up`, `down` and `status`: the testbed's life cycle, composed from the single-job modules."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeedge.coordinator.testbed import cgroups as cgroups_mod
from pipeedge.coordinator.testbed import network, preflight, processes
from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.hostsfile import write_hosts_file, write_links_file
from pipeedge.coordinator.testbed.naming import Names
from pipeedge.coordinator.testbed.spec import TestbedSpec
from pipeedge.coordinator.testbed.state import DeviceState, TestbedState, load, workdir_for

log = logging.getLogger(__name__)


@dataclass
class Leftovers:
    """What of a testbed still exists on the host (empty after a clean `down`)."""

    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    workdir: str = ""

    def empty(self) -> bool:
        return not (self.namespaces or self.links or self.cgroups or self.pids or self.workdir)

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in vars(self).items() if v]
        return "; ".join(parts) or "nothing"


def leftovers(prefix: str, state_dir: str | Path) -> Leftovers:
    names = Names(prefix)
    cg = _cgroups_or_none()
    workdir = workdir_for(state_dir, prefix)
    return Leftovers(network.owned_namespaces(names), network.owned_host_links(names),
                     cg.find(names.owned) if cg else [],
                     sorted(processes.find_stage_pids(names.owned)),
                     str(workdir) if workdir.exists() else "")


def up(spec: TestbedSpec) -> TestbedState:
    """Create the network, cgroups and stage servers of `spec`; write state and hosts.yml.
    On any failure everything created so far is removed again."""
    preflight.require()
    names = Names(spec.name)
    found = leftovers(spec.name, spec.state_dir)
    if not found.empty():
        raise TestbedError(f"testbed {spec.name} already exists ({found.describe()}); run "
                           f"`pipeedge-coord testbed down --name {spec.name}` first")
    network.check_subnet_free(spec.network, names)
    cg = cgroups_mod.detect()
    workdir = workdir_for(spec.state_dir, spec.name)
    workdir.mkdir(parents=True, exist_ok=True)
    state = _initial_state(spec, names, workdir)
    state.save()
    try:
        _create(spec, state, names, cg)
    except BaseException as exc:
        log.error("testbed %s failed to come up; removing what was created", spec.name)
        kept = _keep_logs(workdir, Path(spec.state_dir) / f"{spec.name}-failed-logs")
        down(spec.name, spec.state_dir)
        if isinstance(exc, TestbedError) and kept:
            raise TestbedError(f"{exc} (stage logs kept in {kept})") from None
        raise
    return state


def _keep_logs(workdir: Path, dest: Path) -> Path | None:
    """Copy the stage logs out of the work directory `down` is about to delete."""
    logs = list(workdir.glob("*.log"))
    if not logs:
        return None
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in logs:
        shutil.copy2(f, dest / f.name)
    return dest


def _initial_state(spec: TestbedSpec, names: Names, workdir: Path) -> TestbedState:
    devices = [DeviceState(name=d.name, type=d.type, index=i, address=spec.device_address(i),
                           port=spec.port, netns=names.device_ns(d.name), cpu=d.cpu,
                           mem_mb=d.mem_mb, bw_mbps=d.bw_mbps, threads=d.stage_threads)
               for i, d in enumerate(spec.devices)]
    hosts_file = Path(spec.hosts_file) if spec.hosts_file else workdir / "hosts.yml"
    if spec.hosts_file and spec.source and not hosts_file.is_absolute():
        hosts_file = spec.source.parent / hosts_file
    return TestbedState(prefix=spec.name, subnet=spec.subnet, host_address=spec.host_address(),
                        workdir=str(workdir), hosts_file=str(hosts_file.resolve()),
                        devices=devices)


def _create(spec: TestbedSpec, state: TestbedState, names: Names,
            cg: cgroups_mod.Cgroups) -> None:
    plen = spec.network.prefixlen
    network.create_switch(names, f"{state.host_address}/{plen}")
    launches = []
    for d in state.devices:
        network.create_device(names, d.name, d.index, f"{d.address}/{plen}", d.bw_mbps)
        cg.create(names.cgroup(d.name), mem_mb=d.mem_mb)
        launches.append(processes.StageLaunch(
            netns=d.netns, stage_name=names.stage_name(d.name), host=d.address, port=d.port,
            threads=d.threads, workdir=Path(state.workdir),
            cgroup_enter=cg.shell_enter(names.cgroup(d.name))))
    procs: list[subprocess.Popen] = []
    for d, launch in zip(state.devices, launches):
        procs.append(processes.start(launch))
        d.pid = procs[-1].pid
    state.save()
    processes.wait_ready(launches, procs, spec.start_timeout_s)
    # The CPU cap comes after start-up: importing torch is not part of what is emulated.
    for d in state.devices:
        cg.set_cpu(names.cgroup(d.name), d.cpu)
        cg.set_weight(names.cgroup(d.name), spec.cpu_priority)
    _check_reachable(state)
    hosts_file = write_hosts_file(Path(state.hosts_file), state.devices, spec.deployment)
    # Beside hosts.yml is where the planner looks for links.yml by default.
    write_links_file(hosts_file.parent / "links.yml", state.devices)
    state.save()
    log.info("testbed %s up: %d device(s) on %s", spec.name, len(state.devices), spec.subnet)


def _check_reachable(state: TestbedState) -> None:
    from pipeedge.coordinator.stage_control import StageControl, StageUnreachable

    for d in state.devices:
        ctl = StageControl(d.name, d.endpoint)
        try:
            ctl.check_serving(timeout_s=10)
        except StageUnreachable:
            raise TestbedError(f"stage {d.name} started but {d.endpoint} is unreachable from "
                               "the host; check that nothing else filters the testbed "
                               "subnet") from None
        finally:
            ctl.close()


def down(prefix: str, state_dir: str | Path) -> Leftovers:
    """Remove every process, cgroup, namespace and link of testbed `prefix`, found from its
    state file and by name. Safe after a crash and when run twice; returns what remained."""
    names = Names(prefix)
    workdir = workdir_for(state_dir, prefix)
    state = load(workdir)
    cg = _cgroups_or_none()
    cgroup_names = cg.find(names.owned) if cg else []
    pids = processes.find_stage_pids(names.owned)
    for ns in network.owned_namespaces(names):
        pids |= network.namespace_pids(ns)  # only our processes ever run in our namespaces
    for name in cgroup_names:
        assert cg is not None  # the names came from it
        pids |= cg.pids(name)
    if state:
        pids |= {d.pid for d in state.devices if d.pid and _is_stage_of(d.pid, names)}
    processes.stop(pids)
    for name in cgroup_names:
        assert cg is not None  # the names came from it
        stuck = cg.remove(name)
        if stuck:
            log.warning("cgroup(s) %s still busy; `down` again removes them", stuck)
    network.remove(names)
    shutil.rmtree(workdir, ignore_errors=True)
    left = leftovers(prefix, state_dir)
    if left.empty():
        log.info("testbed %s is down", prefix)
    else:
        log.warning("testbed %s left %s", prefix, left.describe())
    return left


def _is_stage_of(pid: int, names: Names) -> bool:
    try:
        return names.owned.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _cgroups_or_none() -> cgroups_mod.Cgroups | None:
    try:
        return cgroups_mod.detect()
    except TestbedError:
        return None
