"""What this device offers: usable memory (cgroup limit or RAM)."""

from __future__ import annotations

from pathlib import Path

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


def _meminfo_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
