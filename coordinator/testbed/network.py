"""The emulated network: one namespace per device, all joined by a bridge in a switch namespace.

The bridge lives in its own namespace on purpose: on hosts where br_netfilter sends bridged
frames through iptables (Docker sets FORWARD to DROP), a bridge in the host namespace would
drop stage-to-stage traffic. A fresh namespace has empty tables, so nothing on the host's
firewall is touched. The coordinator reaches the devices through one veth, `PREFIX-host`.
"""

from __future__ import annotations

import ipaddress
import logging

from pipeedge.coordinator.testbed import sh, shaping
from pipeedge.coordinator.testbed.errors import TestbedError
from pipeedge.coordinator.testbed.naming import Names

log = logging.getLogger(__name__)


def check_subnet_free(network: ipaddress.IPv4Network, names: Names) -> None:
    """Refuse a subnet the host already uses, so testbed traffic can only reach our devices."""
    for line in sh.run("ip", "-o", "-4", "addr", "show").splitlines():
        words = line.split()
        if "inet" not in words:
            continue
        iface = words[1]
        addr = ipaddress.IPv4Interface(words[words.index("inet") + 1])
        if addr.network.overlaps(network):
            hint = (f"testbed {names.prefix} is already up; run `pipeedge-coord testbed down "
                    f"--name {names.prefix}`" if iface == names.host_link else
                    "pick another `subnet:` in testbed.yml")
            raise TestbedError(f"subnet {network} overlaps {addr} on {iface}; {hint}")
    for line in sh.run("ip", "-4", "route", "show").splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest == "default":
            continue
        try:
            route = ipaddress.IPv4Network(dest, strict=False)
        except ValueError:
            continue
        if route.overlaps(network):
            raise TestbedError(f"subnet {network} overlaps the host route '{line.strip()}'; "
                               "pick another `subnet:` in testbed.yml")


def create_switch(names: Names, host_cidr: str) -> None:
    """Switch namespace with a bridge, and the host's link into it carrying `host_cidr`."""
    ns = names.switch_ns
    sh.run("ip", "netns", "add", ns)
    sh.run("ip", "-n", ns, "link", "set", "lo", "up")
    sh.run("ip", "-n", ns, "link", "add", names.bridge, "type", "bridge")
    sh.run("ip", "-n", ns, "link", "set", names.bridge, "up")
    sh.run("ip", "link", "add", names.host_link, "type", "veth", "peer", "name",
           names.host_peer, "netns", ns)
    sh.run("ip", "-n", ns, "link", "set", names.host_peer, "master", names.bridge, "up")
    sh.run("ip", "addr", "add", host_cidr, "dev", names.host_link)
    sh.run("ip", "link", "set", names.host_link, "up")


def create_device(names: Names, device: str, index: int, cidr: str, bw_mbps: float) -> None:
    """Device namespace with `eth0` on the bridge at `cidr`, capped at `bw_mbps` both ways."""
    ns, port = names.device_ns(device), names.device_port(index)
    sh.run("ip", "netns", "add", ns)
    sh.run("ip", "-n", ns, "link", "set", "lo", "up")
    sh.run("ip", "-n", names.switch_ns, "link", "add", port, "type", "veth", "peer", "name",
           names.device_link, "netns", ns)
    sh.run("ip", "-n", names.switch_ns, "link", "set", port, "master", names.bridge, "up")
    sh.run("ip", "-n", ns, "addr", "add", cidr, "dev", names.device_link)
    sh.run("ip", "-n", ns, "link", "set", names.device_link, "up")
    set_bandwidth(names, device, index, bw_mbps)


DIRECTIONS = ("both", "up", "down")


def set_bandwidth(names: Names, device: str, index: int, bw_mbps: float,
                  direction: str = "both") -> None:
    """Cap the device's upload (its egress), download (the switch port's egress) or both."""
    if direction not in DIRECTIONS:
        raise TestbedError(f"direction '{direction}' is unknown; use one of {list(DIRECTIONS)}")
    if direction in ("both", "up"):
        shaping.set_rate(names.device_ns(device), names.device_link, bw_mbps)
    if direction in ("both", "down"):
        shaping.set_rate(names.switch_ns, names.device_port(index), bw_mbps)


def bandwidth(names: Names, device: str) -> float:
    return shaping.current_rate_mbps(names.device_ns(device), names.device_link)


def namespace_pids(netns: str) -> set[int]:
    out = sh.run("ip", "netns", "pids", netns, check=False)
    return {int(p) for p in out.split() if p.isdigit()}


def owned_namespaces(names: Names) -> list[str]:
    out = sh.run("ip", "netns", "list", check=False)
    found = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in found if names.owns(n))


def owned_host_links(names: Names) -> list[str]:
    out = sh.run("ip", "-o", "link", "show", check=False)
    links = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            links.append(parts[1].strip().split("@", 1)[0])
    return sorted(link for link in links if names.owns(link))


def remove(names: Names) -> None:
    """Delete the host link and every owned namespace (which takes their links and qdiscs).
    Missing pieces are fine: this also runs after a crash and twice in a row."""
    for link in owned_host_links(names):
        sh.succeeds("ip", "link", "del", link)
    for ns in owned_namespaces(names):
        if not sh.succeeds("ip", "netns", "del", ns):
            log.warning("could not delete namespace %s", ns)
