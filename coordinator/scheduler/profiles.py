"""Scheduler inputs as typed values, already parsed from whatever files held them.

These are what ``schedule()`` takes; ``seed_files`` and ``links`` build them from the seed's
YAML formats. Units follow the seed: MB and Mbit/s are binary (2^20).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["DeviceProfile", "Link", "ModelProfile", "NetworkLinks", "Objective"]


class Objective(str, Enum):
    """What the schedule optimises."""

    THROUGHPUT = "throughput"  # least bottleneck; ties: lower latency, then fewer devices
    LATENCY = "latency"  # least end-to-end latency; ties: lower bottleneck, then fewer devices


@dataclass(frozen=True)
class ModelProfile:
    """Per-layer model data, as in models.yml (layers are the seed's sub-layers, 1-based)."""

    name: str
    mem_MB: tuple[float, ...]  # weight memory per layer
    parameters_in: int  # input elements of the first layer, per batch item
    parameters_out: tuple[int, ...]  # output elements per layer, per batch item

    @property
    def layers(self) -> int:
        return len(self.mem_MB)


@dataclass(frozen=True)
class DeviceProfile:
    """One host with its device type's capacity and profile for the model being scheduled."""

    host: str
    device_type: str
    mem_MB: float  # memory capacity
    bw_Mbps: float  # NIC bandwidth; links default to the slower NIC of a pair
    time_s: tuple[float, ...]  # per-layer compute time at the scheduled batch size and dtype
    # A stage's own time on its frames (profiled under the device's CPU, see `pipeedge-coord
    # profile`): a fixed part per microbatch, and seconds per MB received or sent. 0: ignored.
    frame_s: float = 0.0
    wire_s_per_MB: float = 0.0


@dataclass(frozen=True)
class Link:
    """A directed network leg; bandwidth 0 means unusable."""

    bw_Mbps: float
    latency_ms: float = 0.0


@dataclass(frozen=True)
class NetworkLinks:
    """Measured network, resolved for every ordered host pair.

    Client legs are None when not modelled: then, as in the seed, the input arrives and the
    output leaves for free.
    """

    host_to_host: Mapping[tuple[str, str], Link]
    client_to_host: Mapping[str, Link] | None = field(default=None)
    host_to_client: Mapping[str, Link] | None = field(default=None)
