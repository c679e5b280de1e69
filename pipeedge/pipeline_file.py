"""The deployed pipeline's description: written by `pipeedge-coord deploy`, read by the SDK."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_PATH = Path("pipeline.json")


@dataclass(frozen=True)
class StageInfo:
    name: str
    address: str        # host:port of the stage server
    first_layer: int    # 1-based, inclusive
    last_layer: int
    backend: str = "torch"
    device_type: str = ""


@dataclass(frozen=True)
class Pipeline:
    model: str
    stages: tuple[StageInfo, ...]
    microbatch: int = 8
    dtype: str = "float32"
    weights: str = ""             # where the weights came from, for humans
    coordinator: str = ""         # control-plane address when one serves, else empty
    extra: dict = field(default_factory=dict)
    # The weights directory's config.json text the stages were assigned with; "" = the shipped
    # config of `model` (or, for files written without it, the weights directory's own).
    model_config_json: str = ""

    def model_info(self):
        """The model the stages run: what clients size inputs, labels and tokens by."""
        from pipeedge import models

        text = self.model_config_json or None
        kind, _, path = self.weights.partition(":")
        if text is None and kind in ("local", "push") and (Path(path) / "config.json").is_file():
            text = (Path(path) / "config.json").read_text(encoding="utf-8")
        return models.model_info(self.model, text)

    @property
    def entry(self) -> str:
        """Clients talk only to the first stage."""
        return self.stages[0].address

    def save(self, path: Path = DEFAULT_PATH) -> Path:
        data = asdict(self)
        data["entry"] = self.entry
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)  # readers never see half a file
        return path

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> "Pipeline":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline file {path} not found; run "
                                    "`pipeedge-coord deploy hosts.yml` or pass --pipeline")
        data = json.loads(path.read_text())
        data.pop("entry", None)
        data["stages"] = tuple(StageInfo(**s) for s in data["stages"])
        return cls(**data)
