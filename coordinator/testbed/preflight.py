"""What the testbed needs from the host, checked up front so failures name the fix."""

from __future__ import annotations

import os
import shutil

from pipeedge.coordinator.testbed import cgroups, sh
from pipeedge.coordinator.testbed.errors import TestbedError


def problems() -> list[str]:
    """Every reason the testbed cannot run here (empty when it can)."""
    if os.geteuid() != 0:
        return ["testbed needs root (namespaces, tc, cgroups): run as root or use LocalCluster"]
    found = []
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            found.append(f"'{tool}' is not installed; install iproute2 (apt-get install "
                         "iproute2)")
    if not found and not sh.succeeds("ip", "netns", "list"):
        found.append("'ip netns' does not work here (no network namespace support); "
                     "run on a Linux host or a privileged container")
    try:
        cgroups.detect()
    except TestbedError as exc:
        found.append(str(exc))
    return found


def require() -> None:
    found = problems()
    if found:
        raise TestbedError(found[0])
