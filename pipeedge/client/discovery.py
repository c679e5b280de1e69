"""Where the pipeline starts, and how to learn that it moved after a failure.

Three sources, one interface: a fixed address (no failover), the pipeline file (re-read until
it changes), or the coordinator's control plane (`GetPipeline` with `newer_than`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from pipeedge import channels
from pipeedge._proto import coordinator_pb2 as cpb
from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc
from pipeedge.errors import NotDeployedError, error_for
from pipeedge.pipeline_file import DEFAULT_PATH, Pipeline

if TYPE_CHECKING:
    from pipeedge.security import Security


class PipelineSource:
    """Fixed entry address: nothing to refresh."""

    def __init__(self, address: str) -> None:
        self._address = address

    def entry(self) -> tuple[str, int]:
        """(entry address, version)."""
        return self._address, 0

    def wait_newer(self, version: int, timeout_s: float) -> tuple[str, int] | None:
        return None

    def close(self) -> None:
        pass


class PipelineFileSource(PipelineSource):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entry(self) -> tuple[str, int]:
        pipeline = Pipeline.load(self.path)
        return pipeline.entry, pipeline.version

    def wait_newer(self, version: int, timeout_s: float) -> tuple[str, int] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                address, current = self.entry()
                if current > version:
                    return address, current
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.1)
        return None


class CoordinatorSource(PipelineSource):
    def __init__(self, address: str, security: Security | None = None) -> None:
        self.address = address
        self._channel = channels.open_channel(address, security=security)
        self._stub = cpb_grpc.CoordinatorStub(self._channel)

    def entry(self) -> tuple[str, int]:
        try:
            info = self._stub.GetPipeline(cpb.GetPipelineRequest(),
                                          timeout=channels.CONTROL_DEADLINE_S)
        except grpc.RpcError as exc:
            raise error_for(exc.code(), f"coordinator {self.address} did not answer "
                            f"({exc.code().name}: {exc.details()}); check that `pipeedge-coord "
                            "serve` runs there and the address") from None
        if not info.version:
            raise NotDeployedError(f"coordinator {self.address} has no pipeline deployed yet"
                                   + (f": {info.problem}" if info.problem else ""),
                                   code=grpc.StatusCode.FAILED_PRECONDITION)
        return info.entry, info.version

    def wait_newer(self, version: int, timeout_s: float) -> tuple[str, int] | None:
        # The coordinator holds a bounded number of long-polls and answers the rest at once:
        # poll again (briefly apart) until the deadline.
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                info = self._stub.GetPipeline(cpb.GetPipelineRequest(newer_than=version),
                                              timeout=left)
            except grpc.RpcError:
                info = None  # the coordinator restarts or is gone: ask again shortly
            if info is not None and info.version > version:
                return info.entry, info.version
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        self._channel.close()


def make_source(address: str | None, pipeline_file: str | Path | None,
                coordinator: str | None, security: Security | None = None) -> PipelineSource:
    """Where the pipeline starts: a coordinator (asked with `security`), a fixed address, or
    the pipeline file."""
    if coordinator:
        return CoordinatorSource(coordinator, security)
    if address:
        return PipelineSource(address)
    return PipelineFileSource(Path(pipeline_file) if pipeline_file else DEFAULT_PATH)
