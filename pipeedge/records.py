"""The key records of a deployment, one definition each, with their proto and file converters.

A field is added here once; everything else builds these records or reads them.

- `LayerRange`: layers first..last of a model (1-based, inclusive), the unit every plan is made
  of (`pipeedge.partition` parses and checks the hosts.yml syntax into it).
- `WeightsSource`: where stages get weights (random seed, a path on the devices, pushed from
  here); owns the `kind:path` text of hosts.yml and the pipeline file and `pb.WeightSource`.
- `PlannedStage` and `StageInfo` are two records on purpose: a planned stage is a hosts.yml host
  (with its settings: encoding, backend override, weights dtype, memory) and the layers it is
  to run, what deploy turns into an `AssignRequest`; a `StageInfo` is what a deployed stage is
  to clients (name, address, layers, backend, device type), written to the pipeline file and
  sent as `coordinator.proto` `PipelineStage`. `PlannedStage.deployed` is the one place one
  becomes the other. The scheduler's `Stage` (coordinator/scheduler/result.py) stays the
  solver's prediction (host name and costs, no settings); planning pairs it with its host.
- `CredentialPaths`: the credential files deploy records in the pipeline file (paths, never
  their contents), for the coordinator's and the clients' calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError

if TYPE_CHECKING:  # the hosts.yml record; planned stages exist only in the coordinator
    from pipeedge.coordinator.hosts import Host


class WeightsSourceError(PipeEdgeError, ValueError):
    """A weights source that cannot be used; the message shows the accepted forms."""


@dataclass(frozen=True)
class LayerRange:
    first: int  # 1-based, inclusive
    last: int   # 1-based, inclusive

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


WEIGHT_KINDS = ("random", "local", "push")


@dataclass(frozen=True)
class WeightsSource:
    """Where stages get weights: random (seeded), local (path on each device) or push (a path
    here, sent to each stage)."""

    kind: str
    path: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, value: Any) -> WeightsSource:
        """`random`, `random:SEED`, `local:/path/on/devices`, `push:/path/here`, or a mapping
        (`source`, `path`, `seed`); None = random seed 0."""
        if value is None:
            return cls("random")
        if isinstance(value, dict):
            kind, path = str(value.get("source", "random")), str(value.get("path", ""))
            seed = value.get("seed", 0)
        else:
            kind, _, rest = str(value).partition(":")
            path, seed = ("", rest or 0) if kind == "random" else (rest, 0)
        if kind not in WEIGHT_KINDS:
            raise WeightsSourceError(f"weights source '{kind}' is unknown; use random[:SEED], "
                                     "local:/path/on/each/device or push:/path/on/coordinator")
        if kind != "random" and not path:
            raise WeightsSourceError(f"weights '{kind}' needs a path, e.g. "
                                     f"{kind}:/models/vit-base")
        try:
            return cls(kind, path, int(seed))
        except (TypeError, ValueError):
            raise WeightsSourceError(f"weights seed '{seed}' must be a whole number, e.g. "
                                     "random:7") from None

    def describe(self) -> str:
        """The `kind:path` text (`random:SEED`) hosts.yml accepts and the pipeline file holds."""
        return f"random:{self.seed}" if self.kind == "random" else f"{self.kind}:{self.path}"

    @property
    def directory(self) -> Path | None:
        """The weights directory named by local:/push: (it may exist only on the devices)."""
        return Path(self.path) if self.kind in ("local", "push") and self.path else None

    def to_proto(self, pushed_sha256: str = "") -> pb.WeightSource:
        if self.kind == "random":
            return pb.WeightSource(random_seed=self.seed)
        if self.kind == "local":
            return pb.WeightSource(local_path=self.path)
        return pb.WeightSource(pushed_sha256=pushed_sha256)


@dataclass(frozen=True)
class StageInfo:
    """A deployed stage as clients see it (pipeline file `stages`, proto `PipelineStage`)."""

    name: str
    address: str        # host:port of the stage server
    first_layer: int    # 1-based, inclusive
    last_layer: int
    backend: str = "torch"
    device_type: str = ""

    @property
    def layers(self) -> LayerRange:
        return LayerRange(self.first_layer, self.last_layer)

    def to_proto(self) -> cpb.PipelineStage:
        return cpb.PipelineStage(name=self.name, address=self.address,
                                 first_layer=self.first_layer, last_layer=self.last_layer)


@dataclass(frozen=True)
class PlannedStage:
    """A hosts.yml host and the layers planning gave it (before deploy assigns them)."""

    host: Host
    layers: LayerRange

    def deployed(self, default_backend: str) -> StageInfo:
        """The stage as the pipeline file records it once deployed."""
        return StageInfo(name=self.host.name, address=self.host.address,
                         first_layer=self.layers.first, last_layer=self.layers.last,
                         backend=self.host.backend or default_backend,
                         device_type=self.host.device_type)


@dataclass(frozen=True)
class CredentialPaths:
    """Credential files (`Security.paths()`: ca, cert, key, token spec) deploy recorded."""

    coordinator: dict[str, str] = field(default_factory=dict)
    client: dict[str, str] = field(default_factory=dict)

    def for_role(self, role: str) -> dict[str, str]:
        """`client` or `coordinator`; a role without its own files uses the coordinator's."""
        return (self.client if role == "client" else {}) or self.coordinator
