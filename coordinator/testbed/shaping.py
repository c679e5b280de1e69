"""Token-bucket link caps with `tc tbf` (netem is not assumed to exist).

A device's link is a veth pair; shaping the egress of both ends caps both directions: the
device-side end is its upload, the switch-side end its download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeedge.coordinator.testbed import sh

log = logging.getLogger(__name__)

_MIN_BURST_BYTES = 32 * 1024
_BURST_S = 0.004         # a burst of ~4 ms keeps high rates accurate at a 250 Hz tick
_QUEUE_LATENCY_MS = 100  # room for TCP's window: a shorter queue drops and undershoots the rate


@dataclass(frozen=True)
class TbfParams:
    rate_bits: int
    burst_bytes: int
    latency_ms: int

    def tc_args(self) -> list[str]:
        return ["tbf", "rate", f"{self.rate_bits}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms}ms"]


def tbf_params(mbps: float) -> TbfParams:
    rate_bits = int(mbps * 1e6)
    burst = max(_MIN_BURST_BYTES, int(rate_bits / 8 * _BURST_S))
    return TbfParams(rate_bits, burst, _QUEUE_LATENCY_MS)


def set_rate(netns: str, link: str, mbps: float) -> None:
    """Cap `link`'s egress in `netns` at `mbps` (0 removes the cap). Safe to repeat."""
    if mbps <= 0:
        clear(netns, link)
        return
    sh.run("tc", "-n", netns, "qdisc", "replace", "dev", link, "root",
           *tbf_params(mbps).tc_args())
    log.debug("shaped %s/%s to %g Mbps", netns, link, mbps)


def clear(netns: str, link: str) -> None:
    sh.succeeds("tc", "-n", netns, "qdisc", "del", "dev", link, "root")


def current_rate_mbps(netns: str, link: str) -> float:
    """The tbf rate on `link`, or 0 when it is unshaped (for status)."""
    out = sh.run("tc", "-n", netns, "qdisc", "show", "dev", link, check=False)
    words = out.split()
    if "tbf" not in words or "rate" not in words:
        return 0.0
    return _parse_rate(words[words.index("rate") + 1])


def _parse_rate(text: str) -> float:
    units = {"Gbit": 1e3, "Mbit": 1.0, "Kbit": 1e-3, "bit": 1e-6}
    for unit, scale in units.items():
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    return 0.0
