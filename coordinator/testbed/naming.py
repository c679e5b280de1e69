"""Names of everything a testbed creates, all derived from one prefix.

One prefix per testbed means `down` can find leftovers (after a crash, or with the state file
gone) by name alone, and never touches anything it did not create: every namespace and cgroup is
`PREFIX-...` and the one link in the host namespace is `PREFIX-host`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeedge.coordinator.testbed.errors import TestbedError

DEFAULT_PREFIX = "petb"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_DEVICE_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise TestbedError(f"testbed name '{prefix}' is invalid; use 2-8 lowercase letters or "
                           "digits starting with a letter, e.g. petb")
    return prefix


def check_device_name(name: str) -> str:
    if not _DEVICE_RE.match(name.replace("-", "_")):
        raise TestbedError(f"device name '{name}' is invalid; use up to 16 lowercase letters, "
                           "digits, '-' or '_' starting with a letter")
    return name


@dataclass(frozen=True)
class Names:
    """Every kernel object name of one testbed (links stay under the 15-byte IFNAMSIZ)."""

    prefix: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def owned(self) -> str:
        """What every owned namespace, cgroup and host link starts with."""
        return f"{self.prefix}-"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-switch"

    @property
    def host_link(self) -> str:
        return f"{self.prefix}-host"

    @property
    def host_peer(self) -> str:
        """The switch-side end of the host link (lives in the switch namespace)."""
        return "uplink"

    bridge = "br0"        # inside the switch namespace only
    device_link = "eth0"  # inside each device namespace

    def device_ns(self, device: str) -> str:
        return f"{self.prefix}-{device}"

    def device_port(self, index: int) -> str:
        """The switch-side end of device `index`'s link (inside the switch namespace)."""
        return f"port{index}"

    def cgroup(self, device: str) -> str:
        return f"{self.prefix}-{device}"

    def stage_name(self, device: str) -> str:
        """The stage server's --name: how `down` recognises its processes by command line."""
        return f"{self.prefix}-{device}"

    def owns(self, name: str) -> bool:
        return name.startswith(self.owned)
