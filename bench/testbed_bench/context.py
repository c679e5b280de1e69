"""What every section shares: settings, the testbeds it runs on, and how a section says no."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeedge import models
from pipeedge.coordinator.testbed import Testbed, spec_from_dict
from testbed_bench.measure import Window

log = logging.getLogger(__name__)

VIT = "google/vit-base-patch16-224"
BERT = "bert-base-uncased"
VIT_LARGE = "google/vit-large-patch16-224"
BERT_LARGE = "bert-large-uncased"
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
    max_devices: int = 16         # most emulated devices of a testbed (2: the CI smoke run)
    scale_cpu: float = 0.1        # cores per device in the 16-device sections (16 x 0.1 fit)
    testbed_prefix: str = "pe"    # testbeds are PREFIXbench and PREFIXhet (namespaces, cgroups)
    subnets: str = "10.77.10.0/23"  # first /24 for the equal devices, second for PREFIXhet

    def __post_init__(self) -> None:
        if self.max_devices < 2:
            raise ValueError(f"max_devices must be at least 2, got {self.max_devices}")
        net = ipaddress.IPv4Network(self.subnets)
        if net.prefixlen > 23:
            raise ValueError(f"subnets must be a /23 or larger (two /24s), got {net}")

    def testbed_name(self, role: str) -> str:
        """Testbed prefix for `role` ('bench': equal devices, 'het': heterogeneous)."""
        return f"{self.testbed_prefix}{role}"

    def subnet(self, index: int) -> str:
        """The index-th /24 of `subnets`: 0 for the equal devices, 1 for the heterogeneous."""
        return str(list(ipaddress.IPv4Network(self.subnets).subnets(new_prefix=24))[index])

    def stages(self, wanted: tuple[int, ...]) -> tuple[int, ...]:
        """The stage counts of `wanted` that fit on `max_devices` devices."""
        return tuple(n for n in wanted if n <= self.max_devices)

    @property
    def vit(self) -> str:
        return TINY_VIT if self.quick else VIT

    @property
    def bert(self) -> str:
        return TINY_BERT if self.quick else BERT

    @property
    def large_models(self) -> tuple[str, ...]:
        """The paper's scale: ViT-Large and BERT-Large shapes (tiny models with --quick)."""
        return (TINY_VIT, TINY_BERT) if self.quick else (VIT_LARGE, BERT_LARGE)

    def steady(self, min_intervals: int = 4, target_s: float = 15.0) -> Window:
        """When a throughput measurement may stop: at least `min_intervals` completions and
        `target_s` after the fill, until its two halves agree within 10% or 60 s have passed."""
        if self.quick:
            return Window(min_intervals=2, target_s=1.0, max_s=3.0)
        return Window(min_intervals=min_intervals, target_s=target_s, max_s=60.0)


def local_weights(settings: Settings, model: str) -> str:
    """`local:DIR` holding `model`'s seeded random weights (the same tensors as
    `random:SEED`), written once per run: devices read their shard from it like a real
    checkpoint, instead of each generating it again under its CPU quota at every deploy
    (ViT-Large: ~1.9 CPU s, ~19 s at 0.1 core)."""
    from pipeedge.models.weights import write_hf_directory

    path = settings.workdir / "weights" / model.replace("/", "--")
    if not (path / "config.json").is_file():
        write_hf_directory(models.model_info(model), settings.seed, path)
    return f"local:{path}"


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
            for other in [k for k, tb in self._up.items() if tb.state.prefix == doc["name"]]:
                self.release(other)  # same name and subnet: one of them at a time
            doc = {"state_dir": str(self.settings.workdir / "state"), **doc}
            log.info("bringing up testbed %s (%d device groups)", doc["name"], len(doc["devices"]))
            self._up[key] = Testbed.up(spec_from_dict(doc))
        return self._up[key]

    def release(self, key: str) -> None:
        tb = self._up.pop(key, None)
        if tb is not None:
            left = tb.down()
            if not left.empty():
                log.warning("testbed %s left %s", tb.state.prefix, left.describe())

    def close(self) -> None:
        for key in list(self._up):
            self.release(key)


def equal_devices(settings: Settings, count: int | None = None) -> dict:
    """Testbed A: `count` (default: 4) identical CPU-capped devices on fast links."""
    count = min(count or 4, settings.max_devices)
    return {"name": settings.testbed_name("bench"), "subnet": settings.subnet(0),
            "cpu_priority": settings.priority,
            "device_types": {"edge": {"cpu": settings.cpu, "mem_mb": 2048, "bw_mbps": 1000}},
            "devices": [{"type": "edge", "count": count}],
            "deployment": {"weights": f"random:{settings.seed}",
                           "microbatch": settings.microbatch}}


def many_devices(settings: Settings) -> dict:
    """The scaling testbed: max_devices (16) identical devices of `scale_cpu` cores each, on
    testbed A's name and subnet (it is brought down before A comes up, and back)."""
    return {"name": settings.testbed_name("bench"), "subnet": settings.subnet(0),
            "cpu_priority": settings.priority,
            # 4096 MB: one device holds all of BERT-Large (1.34 GB of weights, ~2.3 GB RSS
            # while loading); 2048 MB was OOM-killed in a trial.
            "device_types": {"edge": {"cpu": settings.scale_cpu, "mem_mb": 4096,
                                      "bw_mbps": 1000}},
            "devices": [{"type": "edge", "count": settings.max_devices}],
            "deployment": {"weights": f"random:{settings.seed}", "microbatch": 1}}
