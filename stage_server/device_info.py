"""What this device offers: usable memory (cgroup limit or RAM) and its NIC speed."""

from __future__ import annotations

from pathlib import Path

_NET = Path("/sys/class/net")
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),                    # cgroup v2
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # cgroup v1


def memory_capacity_mb() -> float:
    """The smaller of physical RAM and this process's cgroup memory limit, in MB (2^20 bytes,
    the scheduler's unit)."""
    total = _meminfo_total_bytes()
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
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
