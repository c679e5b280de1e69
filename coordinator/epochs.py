"""Deployment epochs: the fence that keeps a request inside one plan (docs/failure-model.md).

Every deployment attempt gets an epoch larger than any used before, also across coordinator
restarts, and every stage of that attempt is assigned with it. Stages compute only frames of
their own epoch, so an epoch must never be reused for a different plan. Three floors guard that:
the coordinator's state file (written before the epoch is used), the largest epoch any stage
reports, and the wall clock in seconds (which covers a lost state file and restarted stages).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class EpochStore:
    """The coordinator's persistent state: last epoch issued, and the plan that holds it.

    The file is JSON, replaced atomically (write, fsync, rename), so a crash leaves the old or
    the new state, never half of one.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.state: dict = self._read()

    def _read(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("coordinator state %s is unreadable (%s); epochs restart from the "
                        "stages' and the clock's", self.path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))

    def next_epoch(self, floor: int = 0) -> int:
        """A new epoch above everything known (state, `floor`, the clock); persisted first."""
        with self._lock:
            epoch = fresh_epoch(max(self.epoch, floor))
            self._write({**self.state, "epoch": epoch})
            return epoch

    def record(self, **fields) -> None:
        """Persist more state next to the epoch (the published plan, hosts seen)."""
        with self._lock:
            self._write({**self.state, **fields})

    def _write(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self.state = state


def fresh_epoch(floor: int = 0) -> int:
    """An epoch above `floor` and at least the clock in seconds (so one is not reused even when
    every record of earlier ones is lost)."""
    return max(floor + 1, int(time.time()))


def state_path_for(pipeline_path: Path | str) -> Path:
    """Where `serve` keeps its state by default: beside the pipeline file."""
    p = Path(pipeline_path)
    return p.with_name(p.name + ".state")
