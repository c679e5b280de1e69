"""The deployed pipeline's description: written by `pipeedge-coord deploy`, read by the SDK.

This module owns the file's format (JSON): the typed fields below are stored as they always
were, with the deployment's epoch, per-stage parameter bytes and credential files under
`extra` (`version`, `parameter_bytes`, `security`), so files written before load unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeedge.records import CredentialPaths, StageInfo, WeightsSource

if TYPE_CHECKING:  # models imports torch: loaded where it is used
    from pipeedge.models import ModelInfo

DEFAULT_PATH = Path("pipeline.json")


@dataclass(frozen=True)
class Pipeline:
    model: str
    stages: tuple[StageInfo, ...]
    microbatch: int = 8
    dtype: str = "float32"
    weights: WeightsSource | None = None  # None: not recorded
    coordinator: str = ""         # control-plane address when one serves, else empty
    # The weights directory's config.json text the stages were assigned with; "" = the shipped
    # config of `model` (or, for files written without it, the weights directory's own).
    model_config_json: str = ""
    version: int = 0              # the deployment's epoch: clients stamp it on every frame
    parameter_bytes: tuple[int, ...] = ()  # what each stage holds, as its Assign reply said
    credentials: CredentialPaths | None = None  # hosts.yml tls:/token: files, when secured

    def model_info(self) -> ModelInfo:
        """The model the stages run: what clients size inputs, labels and tokens by."""
        from pipeedge import models

        text = self.model_config_json or None
        directory = self.weights_directory
        if text is None and directory is not None and (directory / "config.json").is_file():
            text = (directory / "config.json").read_text(encoding="utf-8")
        return models.model_info(self.model, text)

    @property
    def weights_directory(self) -> Path | None:
        """The local:/push: weights directory (it may exist only on the devices)."""
        return self.weights.directory if self.weights else None

    @property
    def entry(self) -> str:
        """Clients talk only to the first stage."""
        return self.stages[0].address

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object (also what the control plane's state file keeps)."""
        extra: dict[str, Any] = {"version": self.version,
                                 "parameter_bytes": list(self.parameter_bytes)}
        if self.credentials is not None:
            extra["security"] = {"coordinator": dict(self.credentials.coordinator),
                                 "client": dict(self.credentials.client)}
        return {"model": self.model, "stages": [asdict(s) for s in self.stages],
                "microbatch": self.microbatch, "dtype": self.dtype,
                "weights": self.weights.describe() if self.weights else "",
                "coordinator": self.coordinator, "extra": extra,
                "model_config_json": self.model_config_json, "entry": self.entry}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pipeline:
        """Inverse of `to_dict`; unknown keys are ignored (files from newer versions)."""
        extra = data.get("extra") or {}
        security = extra.get("security")
        known = {f.name for f in fields(cls)} - {"stages", "weights", "version",
                                                 "parameter_bytes", "credentials"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   stages=tuple(StageInfo(**s) for s in data["stages"]),
                   weights=WeightsSource.parse(data["weights"]) if data.get("weights") else None,
                   version=int(extra.get("version", 0)),
                   parameter_bytes=tuple(int(b) for b in extra.get("parameter_bytes", ())),
                   credentials=CredentialPaths(security.get("coordinator") or {},
                                               security.get("client") or {})
                   if security else None)

    def save(self, path: Path = DEFAULT_PATH) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)  # readers never see half a file
        return path

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> Pipeline:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline file {path} not found; run "
                                    "`pipeedge-coord deploy hosts.yml` or pass --pipeline")
        return cls.from_dict(json.loads(path.read_text()))
