"""Synchronous client: one request (`infer`) or a pipelined stream of them (`infer_many`).

Failover: when the pipeline source can move (the coordinator's control plane, or the pipeline
file it rewrites), a request that fails because a stage died is resent, with the same request
id, to the new pipeline once the coordinator has re-planned. A hung entry stage breaks no call, so
a call without a result for a second asks whether a newer pipeline is out, and moves if so.
Results are matched by request id, so none is delivered twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import grpc
import torch

from pipeedge import channels
from pipeedge._proto import stage_pb2 as pb
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client.discovery import make_source
from pipeedge.client.frames import (RETRYABLE_CODES, STALL_CHECK_S, request_frame,
                                    result_tensors, rpc_error)
from pipeedge.errors import (DeadlineExceededError, NotDeployedError, PipelineError,
                             StageUnavailableError, status_from_int)
from pipeedge.security import Security, client_security

log = logging.getLogger(__name__)

_DONE = object()
_MOVED = object()


class PipelineClient:
    """Talks to a pipeline's first stage.

    Args:
        address: "host:port" of the first stage (no failover); or
        pipeline_file: the file `pipeedge-coord deploy`/`serve` writes (default ./pipeline.json);
        coordinator: "host:port" of `pipeedge-coord serve`, which tells where the pipeline starts.
        timeout_s: deadline for each request.
        recovery_timeout_s: how long to wait for the coordinator to re-plan after a failure.
        max_retries: resends of one request before its error is raised.
        security: credentials (`pipeedge.security.Security`: CA, client certificate, token);
            default: what deploy recorded in the pipeline file, else the process default.
        token: bearer token for Forward/Infer (overrides the one in `security`).

    Example:
        >>> with PipelineClient(coordinator="10.0.0.1:50050") as client:   # doctest: +SKIP
        ...     out = client.infer({"pixel_values": torch.rand(8, 3, 224, 224)})
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 coordinator: str | None = None, timeout_s: float = 60.0,
                 recovery_timeout_s: float = 30.0, max_retries: int = 3,
                 security: Security | None = None, token: str | None = None) -> None:
        self._security = client_security(security, token=token, address=address or coordinator,
                                         pipeline_file=pipeline_file)
        self._source = make_source(address, pipeline_file, coordinator, self._security)
        self.timeout_s = timeout_s
        self.recovery_timeout_s = recovery_timeout_s
        self.max_retries = max_retries
        self.recoveries: list[float] = []  # seconds from a failure to the first result after it
        self._prefix = uuid.uuid4().hex[:8]
        self._count = 0
        self._channel: grpc.Channel | None = None
        self.address, self.version = self._source.entry()
        self._connect(self.address)

    def __enter__(self) -> "PipelineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._channel:
            self._channel.close()
        self._source.close()

    def _connect(self, address: str) -> None:
        if self._channel:
            self._channel.close()
        self.address = address
        self._channel = channels.open_channel(address, security=self._security)
        self._stub = pb_grpc.StageStub(self._channel)

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def _moved(self) -> bool:
        """True if a newer pipeline is published (asked when a call went quiet; no wait)."""
        try:
            return self._source.entry()[1] > self.version
        except Exception:  # noqa: BLE001 - no coordinator or pipeline file now: keep waiting
            return False

    def _call_infer(self, frame: pb.Frame, timeout: float) -> pb.Frame | None:
        """One Infer call; None if the pipeline moved while it went unanswered."""
        call = self._stub.Infer.future(frame, timeout=timeout)
        while True:
            try:
                return call.result(timeout=STALL_CHECK_S)
            except grpc.FutureTimeoutError:
                if self._moved():
                    call.cancel()
                    return None

    def _failover(self) -> bool:
        """Wait for a newer pipeline and connect to it; False if none came."""
        newer = self._source.wait_newer(self.version, self.recovery_timeout_s)
        if newer is None:
            return False
        log.info("pipeline moved to %s (version %d)", *newer)
        self._connect(newer[0])
        self.version = newer[1]
        return True

    # -- one request ----------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, torch.Tensor], *,
              timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """Run one microbatch through the pipeline and return the last stage's outputs."""
        timeout = timeout_s or self.timeout_s
        request_id = self._next_id()
        frame = request_frame(request_id, inputs, timeout)
        failed_at = None
        for attempt in range(self.max_retries + 1):
            try:
                result = self._call_infer(frame, timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE_CODES or attempt == self.max_retries:
                    raise rpc_error(exc, request_id) from None
                result = None
            if result is None:  # a stage failed, or hung while the coordinator re-planned
                if attempt == self.max_retries:
                    raise StageUnavailableError(
                        f"request {request_id} failed {attempt + 1} times; the pipeline at "
                        f"{self.address} keeps failing", request_id=request_id)
                failed_at = failed_at or time.monotonic()
                if not self._failover():
                    time.sleep(0.2 * (attempt + 1))
                _restamp(frame, timeout)
                continue
            if failed_at:
                self.recoveries.append(time.monotonic() - failed_at)
            return result_tensors(result)
        raise AssertionError("unreachable")

    # -- a stream of requests ---------------------------------------------------------------------
    def infer_many(self, batches: Iterable[Mapping[str, torch.Tensor]], *, window: int = 4,
                   timeout_s: float | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Stream microbatches with up to `window` in flight; results come in input order.

        A request that fails for good raises its typed error at its position in the output.
        """
        stream = _Stream(self, iter(batches), window, timeout_s or self.timeout_s)
        try:
            yield from stream.results()
        finally:
            stream.stop()


class _Stream:
    """State of one `infer_many` call, surviving stream re-opens after failures."""

    def __init__(self, client: PipelineClient, source: Iterator, window: int,
                 timeout: float) -> None:
        self.client = client
        self.source = source
        self.window = window
        self.timeout = timeout
        self.order: list[str] = []                        # request ids in input order
        self.pending: OrderedDict[str, pb.Frame] = OrderedDict()  # sent, not yet answered
        self.ready: dict[str, object] = {}                # answered, waiting for their turn
        self.attempts: dict[str, int] = {}
        self.exhausted = False
        self.cond = threading.Condition()
        self.call = None
        self.failed_at: float | None = None
        self._stopped = False

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()
        if self.call is not None:
            self.call.cancel()

    def results(self) -> Iterator[dict[str, torch.Tensor]]:
        position = 0
        resend: list[str] = []
        while True:
            inbox: queue.Queue = queue.Queue()
            alive = threading.Event()
            alive.set()
            self.call = self.client._stub.Forward(self._requests(resend, alive))
            threading.Thread(target=_receive, args=(self.call, inbox), daemon=True,
                             name="sdk-receive").start()
            broken = False
            while not broken:
                while position < len(self.order) and self.order[position] in self.ready:
                    item = self.ready.pop(self.order[position])
                    position += 1
                    if isinstance(item, PipelineError):
                        raise item
                    yield item
                with self.cond:
                    if self.exhausted and not self.pending:
                        return
                item = self._next(inbox)
                if item is _MOVED:  # the entry hung and the coordinator re-planned around it
                    broken = True
                elif isinstance(item, pb.Frame):
                    broken = self._accept(item)
                else:  # the stream ended or broke
                    with self.cond:
                        if self.exhausted and not self.pending:
                            continue  # a clean end: every answer is in
                    broken = True
                    if isinstance(item, grpc.RpcError) and item.code() not in RETRYABLE_CODES:
                        raise rpc_error(item)
            # Re-open on the (possibly new) pipeline and resend everything unanswered.
            alive.clear()
            self.call.cancel()
            self.failed_at = self.failed_at or time.monotonic()
            with self.cond:
                resend = list(self.pending)
            for rid in resend:
                self.attempts[rid] = self.attempts.get(rid, 0) + 1
                if self.attempts[rid] > self.client.max_retries:
                    raise StageUnavailableError(
                        f"request {rid} failed {self.attempts[rid]} times; the pipeline at "
                        f"{self.client.address} keeps failing", request_id=rid)
                _restamp(self.pending[rid], self.timeout)
            if not self.client._failover():
                time.sleep(0.2)

    def _next(self, inbox: queue.Queue):
        """The next result, stream end or error; _MOVED if none came while a newer pipeline
        was published (a hung stage never breaks the stream by itself)."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"no result from {self.client.address} within {self.timeout:.0f}s; a "
                    "stage may be stalled (check `pipeedge-coord status`)")
            try:
                return inbox.get(timeout=min(left, STALL_CHECK_S))
            except queue.Empty:
                if self.client._moved():
                    return _MOVED

    def _accept(self, frame: pb.Frame) -> bool:
        """Take one result; True if it shows the pipeline broke (resend and re-open)."""
        with self.cond:
            if frame.request_id not in self.pending:
                return False  # an answer to a request already answered: never deliver twice
            code = status_from_int(frame.error.code) if frame.error.code else None
            if code in RETRYABLE_CODES:
                return True
            self.pending.pop(frame.request_id)
            self.cond.notify_all()
        try:
            self.ready[frame.request_id] = result_tensors(frame)
        except PipelineError as exc:
            self.ready[frame.request_id] = exc
        if self.failed_at is not None:
            self.client.recoveries.append(time.monotonic() - self.failed_at)
            self.failed_at = None
        return False

    def _requests(self, resend: list[str], alive: threading.Event):
        for rid in resend:
            frame = self.pending.get(rid)
            if frame is not None:
                yield frame
        while True:
            with self.cond:
                while (len(self.pending) >= self.window and alive.is_set()
                       and not self._stopped):
                    self.cond.wait(0.2)
                if self.exhausted or self._stopped or not alive.is_set():
                    return
            # Pull the next input only when a slot is free, so inputs are produced just in time.
            inputs = next(self.source, None)
            with self.cond:
                if inputs is None:
                    self.exhausted = True
                    self.cond.notify_all()
                    return
                rid = self.client._next_id()
                frame = request_frame(rid, inputs, self.timeout)
                self.order.append(rid)
                self.pending[rid] = frame
            yield frame


def _receive(call, inbox: queue.Queue) -> None:
    try:
        for frame in call:
            inbox.put(frame)
    except grpc.RpcError as exc:
        inbox.put(exc)
        return
    inbox.put(_DONE)


def _restamp(frame: pb.Frame, timeout: float) -> None:
    """A resent request gets a fresh deadline."""
    if frame.deadline_unix_ms:
        frame.deadline_unix_ms = int((time.time() + timeout) * 1000)


__all__ = ["PipelineClient", "NotDeployedError"]
