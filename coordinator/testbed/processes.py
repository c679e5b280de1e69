"""Stage server processes inside device namespaces and cgroups: start, wait, find, stop.

A stage is started through `sh -c 'echo $$ > cgroup.procs; exec ip netns exec NS python ...'`
so the process is inside its cgroup before Python starts and keeps one pid all the way (every
step execs). It runs in its own session, so it outlives `testbed up`; `down` finds it by pid,
by cgroup, by namespace and by its `--name PREFIX-...` command line.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeedge.coordinator.testbed.errors import TestbedError

log = logging.getLogger(__name__)

_STAGE_MODULE = "pipeedge.stage_server.cli"


@dataclass(frozen=True)
class StageLaunch:
    """What one stage server needs: where it runs and where its files go."""

    netns: str
    stage_name: str
    host: str
    port: int
    threads: int
    workdir: Path
    cgroup_enter: str  # shell words moving the shell into the cgroup (cgroups.shell_enter)

    @property
    def ready_file(self) -> Path:
        return self.workdir / f"{self.stage_name}.port"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.stage_name}.log"

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, sys.executable, "-m", _STAGE_MODULE,
                "--host", self.host, "--port", str(self.port), "--name", self.stage_name,
                "--threads", str(self.threads), "--grace", "2",
                "--cache-dir", str(self.workdir / "cache" / self.stage_name),
                "--ready-file", str(self.ready_file)]


def start(launch: StageLaunch) -> subprocess.Popen:
    launch.ready_file.unlink(missing_ok=True)
    script = f"{launch.cgroup_enter} && exec {shlex.join(launch.argv())}"
    with open(launch.log_file, "w") as log_f:
        proc = subprocess.Popen(["sh", "-c", script], stdout=log_f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.info("started %s in %s (pid %d)", launch.stage_name, launch.netns, proc.pid)
    return proc


def wait_ready(launches: list[StageLaunch], procs: list[subprocess.Popen],
               timeout_s: float) -> None:
    """Wait until every stage wrote its ready file; name the first that died or hung."""
    deadline = time.monotonic() + timeout_s
    pending = list(zip(launches, procs))
    while pending:
        still = []
        for launch, proc in pending:
            if launch.ready_file.exists() and launch.ready_file.read_text().strip():
                continue
            if proc.poll() is not None:
                tail = _tail(launch.log_file)
                raise TestbedError(f"stage {launch.stage_name} exited with {proc.returncode} "
                                   f"during start-up: {tail}")
            still.append((launch, proc))
        if still and time.monotonic() > deadline:
            raise TestbedError(f"stage {still[0][0].stage_name} did not start within "
                               f"{timeout_s:g}s; read its log or raise start_timeout_s in "
                               "testbed.yml")
        pending = still
        if pending:
            time.sleep(0.1)


def find_stage_pids(prefix: str) -> set[int]:
    """Stage servers whose --name starts with `prefix` (found by command line)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _STAGE_MODULE.encode() not in args and not any(a.endswith(b"pipeedge-stage")
                                                          for a in args):
            continue
        for flag, value in itertools.pairwise(args):
            if flag == b"--name" and value.decode(errors="replace").startswith(prefix):
                found.add(int(entry.name))
    return found


def stop(pids: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL whatever is left. Never signals ourselves."""
    pids = {p for p in pids if p not in (os.getpid(), os.getppid()) and p > 1}
    for p in pids:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        time.sleep(0.05)
    for p in pids:
        log.warning("stage pid %d ignored SIGTERM; killing it", p)
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        time.sleep(0.05)


def alive(pid: int) -> bool:
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text().strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
