"""What this device offers: usable memory (cgroup limit or RAM), a CPU quota, its NIC speed."""

from __future__ import annotations

from pathlib import Path

_NET = Path("/sys/class/net")
_PROC_CGROUP = Path("/proc/self/cgroup")
_MOUNTS = Path("/proc/self/mounts")


def memory_capacity_mb(proc_cgroup: Path = _PROC_CGROUP, mounts: Path = _MOUNTS) -> float:
    """The smaller of physical RAM and the tightest memory limit on this process's cgroup and
    the cgroups above it (v1 or v2: `docker --memory`, a systemd MemoryMax, the testbed's
    devices), in MB (2^20 bytes, the scheduler's unit)."""
    total = _meminfo_total_bytes()
    for d, version in _own_cgroup_dirs("memory", proc_cgroup, mounts):
        try:
            text = (d / ("memory.max" if version == 2 else "memory.limit_in_bytes")).read_text()
        except OSError:
            continue
        if text.strip().isdigit():
            total = min(total, int(text))
    return total / 2**20


def usable_memory_mb() -> float:
    """``memory_capacity_mb`` less this stage process's own resident memory (python, torch,
    gRPC: ~235 MB idle), which the scheduler does not count: the memory layers can use.
    Measured when profiling; a stage that holds a shard then reports less (a pessimistic plan,
    never an overfull device)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):  # no procfs: report the capacity
        return memory_capacity_mb()
    import os

    return max(0.0, memory_capacity_mb() - pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


def cpu_quota_cores(proc_cgroup: Path = _PROC_CGROUP, mounts: Path = _MOUNTS) -> float:
    """The CFS quota on this process in cores (the tightest of its cgroup and the cgroups
    above it, v1 or v2: `docker --cpus`, a systemd CPUQuota, the testbed's devices); 0 when
    none. Read when asked, since a quota can be set on a running process."""
    quotas = [_read_quota(d, version) for d, version in _own_cgroup_dirs("cpu", proc_cgroup,
                                                                        mounts)]
    limited = [q for q in quotas if q > 0]
    return min(limited) if limited else 0.0


def _own_cgroup_dirs(controller: str, proc_cgroup: Path, mounts: Path) -> list[tuple[Path, int]]:
    """(directory, cgroup version) of this process's cgroup and each one above it up to the
    mount point, in every hierarchy mounted here that can hold `controller`: v1's own
    hierarchy for it and the v2 unified tree (its files are absent where the controller is
    not enabled). Empty when /proc is not readable."""
    try:
        own = [line.split(":", 2) for line in proc_cgroup.read_text().splitlines()]
        mount_lines = [line.split() for line in mounts.read_text().splitlines()]
    except OSError:
        return []
    v1 = next((p for _, ctrl, p in own if controller in ctrl.split(",")), None)
    v2 = next((p for hid, ctrl, p in own if hid == "0" and ctrl == ""), None)
    out = []
    for fields in mount_lines:
        if len(fields) < 4:
            continue
        where, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
        if kind == "cgroup" and controller in options and v1 is not None:
            out += [(d, 1) for d in _up_to(where, v1)]
        elif kind == "cgroup2" and v2 is not None:
            out += [(d, 2) for d in _up_to(where, v2)]
    return out


def _up_to(root: Path, path: str) -> list[Path]:
    d = root / path.strip("/")
    dirs = [d]
    while d != root and d != d.parent:
        d = d.parent
        dirs.append(d)
    return dirs


def _read_quota(d: Path, version: int) -> float:
    """Cores allowed by the quota in directory `d`; 0 when none, or unreadable (a cgroup
    namespace can list paths that are not visible from this mount)."""
    try:
        if version == 2:
            quota, period = (d / "cpu.max").read_text().split()
            return 0.0 if quota == "max" else int(quota) / int(period)
        quota_us = int((d / "cpu.cfs_quota_us").read_text())
        return 0.0 if quota_us < 0 else quota_us / int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return 0.0


def _meminfo_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def nic_speed_mbps(net: Path = _NET) -> float:
    """Link speed of the fastest NIC that is up, in Mbit/s of 2^20 bits (the scheduler's unit);
    0 when none reports one (Wi-Fi, most virtual NICs without a speed, no sysfs). Physical NICs
    win over virtual ones (bridges, veth), which report nominal speeds. A ceiling, not a
    measurement: `pipeedge-coord measure-links` measures what the links really carry."""
    physical: list[int] = []
    virtual: list[int] = []
    try:
        interfaces = sorted(net.iterdir())
    except OSError:
        return 0.0
    for iface in interfaces:
        if iface.name == "lo":
            continue
        try:
            if (iface / "operstate").read_text().strip() not in ("up", "unknown"):
                continue
            speed = int((iface / "speed").read_text().strip())  # 10^6 bit/s; -1 = unknown
        except (OSError, ValueError):
            continue
        if speed > 0:
            (physical if (iface / "device").exists() else virtual).append(speed)
    speeds = physical or virtual
    return max(speeds) * 1e6 / 2**20 if speeds else 0.0
