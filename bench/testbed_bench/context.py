"""What every section shares: settings, the testbeds it runs on, and how a section says no."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeedge import models
from pipeedge.coordinator.testbed import Testbed, spec_from_dict

log = logging.getLogger(__name__)

VIT = "google/vit-base-patch16-224"
BERT = "bert-base-uncased"
TINY_VIT = "pipeedge/tiny-vit"
TINY_BERT = "pipeedge/tiny-bert"


class Skipped(Exception):
    """A section cannot run here yet; the message says what it waits for."""


@dataclass
class Settings:
    out_dir: Path                 # results.json, REPORT.md, figures
    workdir: Path                 # testbed state, hosts files, profiles (scratch)
    cpu: float = 0.4              # cores per equal device (4 x 0.4 leaves the host 0.4 core)
    priority: float = 10.0        # testbed cpu_priority: devices keep their quota on a busy host
    microbatch: int = 2
    quick: bool = False           # tiny models, few microbatches: checks the report end to end
    seed: int = 0

    @property
    def vit(self) -> str:
        return TINY_VIT if self.quick else VIT

    @property
    def bert(self) -> str:
        return TINY_BERT if self.quick else BERT

    def count(self, stages: int) -> int:
        """Microbatches to stream on `stages` stages: enough past the fill for a stable rate."""
        return {1: 4, 2: 6}.get(stages, 8) if self.quick else {1: 8, 2: 16}.get(stages, 20)


def inputs_for(model: str, batch: int, seed: int = 0):
    info = models.model_info(model)
    return models.example_inputs(info, batch, seed=seed)


@dataclass
class Testbeds:
    """Brings testbeds up on first use and every one of them down at the end."""

    settings: Settings
    _up: dict[str, Testbed] = field(default_factory=dict)

    def get(self, key: str, doc: dict) -> Testbed:
        if key not in self._up:
            doc = {"state_dir": str(self.settings.workdir / "state"), **doc}
            log.info("bringing up testbed %s (%d device groups)", doc["name"], len(doc["devices"]))
            self._up[key] = Testbed.up(spec_from_dict(doc))
        return self._up[key]

    def close(self) -> None:
        for tb in self._up.values():
            left = tb.down()
            if not left.empty():
                log.warning("testbed %s left %s", tb.state.prefix, left.describe())
        self._up.clear()


def equal_devices(settings: Settings, count: int = 4) -> dict:
    """Testbed A: `count` identical CPU-capped devices on fast links."""
    return {"name": "pebench", "subnet": "10.77.10.0/24", "cpu_priority": settings.priority,
            "device_types": {"edge": {"cpu": settings.cpu, "mem_mb": 2048, "bw_mbps": 1000}},
            "devices": [{"type": "edge", "count": count}],
            "deployment": {"weights": f"random:{settings.seed}",
                           "microbatch": settings.microbatch}}
