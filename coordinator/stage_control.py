"""Control-plane calls from the coordinator to one stage server, each with a deadline."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeedge import channels
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.errors import PipeEdgeError
from pipeedge.security import Security
from pipeedge.security import default as default_security


class StageUnreachable(PipeEdgeError):
    """A stage server did not answer; the message names it and says what to check."""


class StageControl:
    def __init__(self, name: str, address: str, *, security: Security | None = None) -> None:
        self.name = name
        self.address = address
        # None: the process default (PIPEEDGE_TLS_* variables, else plaintext); the coordinator
        # passes hosts.yml's (`Deployment.control_security`) or the pipeline file's.
        self._security = security if security is not None else default_security()
        self._channel = channels.open_channel(address, security=self._security)
        self.stub = pb_grpc.StageStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def check_serving(self, timeout_s: float = 5.0) -> None:
        """Raise StageUnreachable unless the stage's health service says SERVING."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except (grpc.FutureTimeoutError, grpc.RpcError):
            raise StageUnreachable(
                f"host {self.name} ({self.address}) is unreachable: start `pipeedge-stage "
                f"--port {self.address.rsplit(':', 1)[-1]}` there or fix its address in "
                "hosts.yml" + (" (with TLS: or it refused the handshake; check tls: in hosts.yml "
                               "against the stage's --tls-* flags and CA)"
                               if self._security and self._security.tls else "")) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise StageUnreachable(f"host {self.name} ({self.address}) is not serving "
                                   "(shutting down?); restart it")

    def assign(self, request: pb.AssignRequest) -> pb.AssignReply:
        return self.stub.Assign(request, timeout=channels.ASSIGN_DEADLINE_S)

    def release(self, below_epoch: int = 0) -> pb.ReleaseReply:
        """Drop the assignment; with `below_epoch`, only one older than that epoch (fencing a
        stage left out of a re-plan without racing a newer deployment)."""
        return self.stub.Release(pb.ReleaseRequest(below_epoch=below_epoch),
                                 timeout=channels.CONTROL_DEADLINE_S)

    def status(self, timeout_s: float = channels.CONTROL_DEADLINE_S) -> pb.StageStatus:
        return self.stub.Status(pb.StatusRequest(), timeout=timeout_s)

    def push_weights(self, blob: bytes, progress: Callable[[int], None] | None = None) -> str:
        """Send a safetensors blob unless the stage has it cached; returns its sha256."""
        sha = hashlib.sha256(blob).hexdigest()
        if self.stub.HasWeights(pb.HasWeightsRequest(sha256=sha),
                                timeout=channels.CONTROL_DEADLINE_S).cached:
            if progress:
                progress(len(blob))
            return sha
        # Generous deadline: ~1 MB/s is the slowest link we plan for, plus a minute.
        timeout = 60.0 + len(blob) / 1e6
        self.stub.PushWeights(_chunks(blob, sha, progress), timeout=timeout)
        return sha


def _chunks(blob: bytes, sha: str, progress) -> Iterator[pb.WeightChunk]:
    view = memoryview(blob)
    size = channels.WEIGHT_CHUNK_BYTES
    for offset in range(0, max(len(blob), 1), size):
        piece = bytes(view[offset:offset + size])
        chunk = pb.WeightChunk(data=piece)
        if offset == 0:
            chunk.sha256, chunk.total_bytes = sha, len(blob)
        if progress:
            progress(len(piece))
        yield chunk
