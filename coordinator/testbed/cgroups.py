"""CPU quota and memory limit per emulated device, on cgroup v1 or v2 (whichever is mounted).

Each device gets `<root>/PREFIX-DEVICE` in the cpu and memory hierarchies (v1) or one unified
cgroup (v2), directly under the hierarchy root so that `down` can find it by name.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeedge.coordinator.testbed.errors import TestbedError

log = logging.getLogger(__name__)

# A short CFS period: with the default 100 ms, a 0.5-core device runs at full speed for 50 ms
# and then stops for 50 ms, so anything shorter than a period (one layer being profiled, a small
# stage's microbatch) sees the whole core and looks 2x faster than the device it emulates.
CFS_PERIOD_US = 10_000
_MIN_QUOTA_US = 1_000  # the kernel's smallest quota
_MOUNTS = Path("/proc/self/mounts")


@dataclass(frozen=True)
class Cgroups:
    """Where the controllers live; `dirs(name)` are one device's cgroup directories."""

    version: int
    cpu_root: Path
    memory_root: Path

    def dirs(self, name: str) -> list[Path]:
        if self.version == 2:
            return [self.cpu_root / name]
        return [self.cpu_root / name, self.memory_root / name]

    def roots(self) -> list[Path]:
        return [self.cpu_root] if self.version == 2 else [self.cpu_root, self.memory_root]

    # -- life cycle -------------------------------------------------------------------------

    def create(self, name: str, *, mem_mb: float) -> list[Path]:
        """Make the device's cgroups with the memory limit set; CPU stays unlimited until
        `set_cpu` (so start-up imports are not slowed by the emulated CPU)."""
        if self.version == 2:
            _enable_v2_controllers(self.cpu_root)
        for d in self.dirs(name):
            d.mkdir(exist_ok=True)
        self.set_memory(name, mem_mb)
        return self.dirs(name)

    def set_cpu(self, name: str, cores: float) -> None:
        period = max(CFS_PERIOD_US, int(_MIN_QUOTA_US / cores)) if cores > 0 else CFS_PERIOD_US
        quota = int(cores * period)
        if self.version == 2:
            _write(self.cpu_root / name / "cpu.max",
                   f"{quota if cores > 0 else 'max'} {period}")
            return
        d = self.cpu_root / name
        _write(d / "cpu.cfs_quota_us", "-1")  # so the new period is never below the old quota
        _write(d / "cpu.cfs_period_us", str(period))
        _write(d / "cpu.cfs_quota_us", str(quota) if cores > 0 else "-1")

    def set_weight(self, name: str, priority: float) -> None:
        """CPU weight relative to an ordinary process (1): above 1 the device keeps its quota
        when other work on the host competes for the cores; the quota still caps it."""
        if self.version == 2:
            weight = min(10_000, max(1, round(100 * priority)))
            _write(self.cpu_root / name / "cpu.weight", str(weight))
        else:
            _write(self.cpu_root / name / "cpu.shares", str(max(2, round(1024 * priority))))

    def set_memory(self, name: str, mem_mb: float) -> None:
        limit = int(mem_mb * 1e6) if mem_mb > 0 else None
        if self.version == 2:
            _write(self.memory_root / name / "memory.max", str(limit) if limit else "max")
        else:
            _write(self.memory_root / name / "memory.limit_in_bytes",
                   str(limit) if limit else "-1")

    def cpu_cores(self, name: str) -> float:
        """The CPU quota in cores, 0 when unlimited or gone (for status)."""
        try:
            if self.version == 2:
                quota, period = (self.cpu_root / name / "cpu.max").read_text().split()
                return 0.0 if quota == "max" else int(quota) / int(period)
            d = self.cpu_root / name
            quota_us = int((d / "cpu.cfs_quota_us").read_text())
            return 0.0 if quota_us < 0 else quota_us / int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return 0.0

    def throttled_s(self, name: str) -> float:
        """Seconds the device was held back by its quota (shows the cap is doing its job)."""
        try:
            stat = (self.cpu_root / name / "cpu.stat").read_text().split()
        except OSError:
            return 0.0
        fields = dict(zip(stat[::2], stat[1::2]))
        if "throttled_usec" in fields:
            return int(fields["throttled_usec"]) / 1e6
        return int(fields.get("throttled_time", 0)) / 1e9

    def shell_enter(self, name: str) -> str:
        """Shell words that move the shell itself into the device's cgroups (before exec)."""
        return " && ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in self.dirs(name))

    def pids(self, name: str) -> set[int]:
        out: set[int] = set()
        for d in self.dirs(name):
            try:
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return out

    def remove(self, name: str, timeout_s: float = 5.0) -> list[str]:
        """rmdir the device's cgroups (they must be empty); returns the ones that stayed."""
        left = []
        for d in self.dirs(name):
            deadline = time.monotonic() + timeout_s
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.05)  # exiting tasks leave the cgroup a moment later
        return left

    def find(self, prefix: str) -> list[str]:
        """Names of cgroups starting with `prefix` in any hierarchy root (leftovers)."""
        names: set[str] = set()
        for root in self.roots():
            try:
                names.update(p.name for p in root.iterdir()
                             if p.is_dir() and p.name.startswith(prefix))
            except OSError:
                pass
        return sorted(names)


def detect(mounts_text: str | None = None) -> Cgroups:
    """cgroup v1 when both cpu and memory controllers are mounted as v1, else v2."""
    text = mounts_text if mounts_text is not None else _MOUNTS.read_text()
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        target, fstype, options = Path(parts[1]), parts[2], set(parts[3].split(","))
        if fstype == "cgroup":
            for ctl in ("cpu", "memory"):
                if ctl in options:
                    v1.setdefault(ctl, target)
        elif fstype == "cgroup2" and v2 is None:
            v2 = target
    if "cpu" in v1 and "memory" in v1:
        return Cgroups(1, v1["cpu"], v1["memory"])
    if v2 is not None:
        controllers = _read(v2 / "cgroup.controllers").split()
        if "cpu" in controllers and "memory" in controllers:
            return Cgroups(2, v2, v2)
    raise TestbedError("no cgroup with cpu and memory controllers is mounted; mount cgroup v2 "
                       "at /sys/fs/cgroup or v1 cpu and memory hierarchies")


def _enable_v2_controllers(root: Path) -> None:
    control = root / "cgroup.subtree_control"
    enabled = _read(control).split()
    for ctl in ("cpu", "memory"):
        if ctl not in enabled:
            _write(control, f"+{ctl}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise TestbedError(f"cannot write '{value}' to {path}: {os.strerror(exc.errno or 0)}; "
                           "run as root on a host that delegates cgroups") from None
    log.debug("%s <- %s", path, value)
