"""Synchronous client: one request (`infer`) or a pipelined stream of them (`infer_many`).

Failover: when the pipeline source can move (the coordinator's control plane, or the pipeline
file it rewrites), a request that fails because a stage died is resent, with the same request
id, to the new pipeline once the coordinator has re-planned. A hung entry stage breaks no call, so
a call without a result for a second asks whether a newer pipeline is out, and moves if so.
Results are matched by request id, so none is delivered twice.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import torch

from pipeedge import channels, wire
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client.discovery import make_source
from pipeedge.client.frames import request_frame, result_tensors, rpc_error
from pipeedge.client.retry import BUSY_CODES, MOVED_CODES, PipelineView, RetryPolicy, stamp
from pipeedge.errors import (
    DeadlineExceededError,
    NotDeployedError,
    PipelineError,
    StageUnavailableError,
    error_for,
    status_from_int,
)
from pipeedge.security import Security, client_security

log = logging.getLogger(__name__)

_DONE = object()
_MOVED = object()
# Resends of a request that failed with a "moved" code when the client has a fixed address.
FIXED_ADDRESS_RETRIES = 2


class PipelineClient:
    """Talks to a pipeline's first stage.

    Args:
        address: "host:port" of the first stage (no failover); or
        pipeline_file: the file `pipeedge-coord deploy`/`serve` writes (default ./pipeline.json);
        coordinator: "host:port" of `pipeedge-coord serve`, which tells where the pipeline starts.
        timeout_s: deadline for each request (from each send: a resend gets a fresh one).
        recovery_timeout_s, max_retries: shortcuts for the fields of `retry`.
        retry: the `RetryPolicy` (pipeedge.client.retry), shared with the other clients.
        security: credentials (`pipeedge.security.Security`: CA, client certificate, token);
            default: what deploy recorded in the pipeline file, else the process default.
        token: bearer token for Forward/Infer (overrides the one in `security`).

    Safe to use from several threads at once (AsyncPipelineClient does).

    Example:
        >>> with PipelineClient(coordinator="10.0.0.1:50050") as client:   # doctest: +SKIP
        ...     out = client.infer({"pixel_values": torch.rand(8, 3, 224, 224)})
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 coordinator: str | None = None, timeout_s: float = 60.0,
                 recovery_timeout_s: float | None = None, max_retries: int | None = None,
                 retry: RetryPolicy | None = None, security: Security | None = None,
                 token: str | None = None) -> None:
        policy = retry or RetryPolicy()
        if recovery_timeout_s is not None:
            policy = replace(policy, recovery_timeout_s=recovery_timeout_s)
        if max_retries is not None:
            policy = replace(policy, max_retries=max_retries)
        self.retry = policy
        self._security = client_security(security, token=token, address=address or coordinator,
                                         pipeline_file=pipeline_file)
        self._source = make_source(address, pipeline_file, coordinator, self._security)
        try:
            self.view = PipelineView(self._source, policy)
        except BaseException:
            self._source.close()
            raise
        self.timeout_s = timeout_s
        self.recoveries: list[float] = []  # seconds from a failure to the first result after it
        self._prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._channel_address = ""
        self._stub_for(self.view.address)

    @property
    def address(self) -> str:
        return self.view.current()[0]

    @property
    def version(self) -> int:
        """Epoch of the pipeline this client sends to now."""
        return self.view.current()[1]

    def __enter__(self) -> PipelineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._channel:
                self._channel.close()
        self._source.close()

    def _stub_for(self, address: str) -> pb_grpc.StageStub:
        """The stub of `address`, reconnecting when the pipeline moved there."""
        with self._lock:
            if self._channel is None or self._channel_address != address:
                old = self._channel
                self._channel = channels.open_channel(address, security=self._security)
                self._channel_address = address
                self._stub = wire.stage_stub(self._channel)
                if old is not None:  # calls still on it fail and are resent: nothing is lost
                    old.close()
            return self._stub

    def _next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _recover(self, code: grpc.StatusCode | None, seen: int, attempt: int) -> None:
        """Before a resend: wait for a newer pipeline (moved codes) or back off (busy)."""
        if code in BUSY_CODES:
            time.sleep(self.retry.busy_wait(attempt))
        elif not self.view.move_past(seen, wait=code is not None):
            time.sleep(min(0.2 * attempt, 1.0))

    def _retries(self, code: grpc.StatusCode | None) -> int:
        """Resends allowed for a failure: a fixed address has no newer pipeline to move to, so
        a moved code is retried only twice there (a stage reassigned a moment ago)."""
        if code in MOVED_CODES and not self.view.can_move:
            return min(self.retry.max_retries, FIXED_ADDRESS_RETRIES)
        return self.retry.max_retries

    # -- one request ----------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, torch.Tensor], *,
              timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """Run one microbatch through the pipeline and return the last stage's outputs."""
        timeout = timeout_s or self.timeout_s
        request_id = self._next_id()
        frame = request_frame(request_id, inputs, None)
        failed_at = None
        attempt = 0
        while True:
            address, epoch = self.view.current()
            stamp(frame, epoch, timeout)
            error, result = self._call_infer(self._stub_for(address), frame, timeout, epoch)
            if result is not None:
                if failed_at:
                    self.recoveries.append(time.monotonic() - failed_at)
                return result
            code = error.code if error is not None else None
            if attempt >= self._retries(code):
                raise error or StageUnavailableError(
                    f"request {request_id} got no answer from {address} in {attempt + 1} "
                    "tries", code=grpc.StatusCode.UNAVAILABLE, request_id=request_id)
            attempt += 1
            failed_at = failed_at or time.monotonic()
            self._recover(code, epoch, attempt)

    def _call_infer(self, stub: pb_grpc.StageStub, frame: wire.Frame, timeout: float, epoch: int
                    ) -> tuple[PipelineError | None, dict[str, torch.Tensor] | None]:
        """One Infer call: (None, outputs), or (error, None) when it should be resent (error
        None: the call went quiet while a newer pipeline came out). Other errors raise."""
        call = stub.Infer.future(frame, timeout=timeout)
        while True:
            try:
                reply = call.result(timeout=self.retry.stall_check_s)
                return None, result_tensors(reply)
            except grpc.FutureTimeoutError:
                if self.view.current()[1] > epoch or self.view.newer_published():
                    call.cancel()
                    return None, None
            except grpc.RpcError as exc:
                error = rpc_error(exc, frame.request_id)
                if not self.retry.retryable(exc.code()):
                    raise error from None
                return error, None

    # -- a stream of requests ---------------------------------------------------------------------
    def infer_many(self, batches: Iterable[Mapping[str, torch.Tensor]], *, window: int = 4,
                   timeout_s: float | None = None) -> Generator[dict[str, torch.Tensor], None, None]:
        """Stream microbatches with up to `window` in flight; results come in input order.

        Inputs are pulled only when a slot is free. A request that fails for good raises its
        typed error at its position in the output.
        """
        stream = _Stream(self, iter(batches), window, timeout_s or self.timeout_s)
        try:
            yield from stream.results()
        finally:
            stream.stop()


class _Stream:
    """One `infer_many` call: requests multiplexed over a Forward stream that is re-opened on
    the current pipeline after a failure, resending what is unanswered.

    Every request lives in `pending` from the moment it gets its id until it is answered.
    Sending goes through `to_send` under `cond`: a re-open puts all of `pending` there, and a
    request pulled by a stream that has meanwhile been replaced goes there too, so none is ever
    left unsent (a slow input generator pulled one while the stream broke, and it was lost).
    """

    def __init__(self, client: PipelineClient, source: Iterator[Mapping[str, torch.Tensor]],
                 window: int, timeout: float) -> None:
        self.client = client
        self.source = source
        self.window = window
        self.timeout = timeout
        self.order: deque[str] = deque()                  # request ids in input order
        self.pending: OrderedDict[str, wire.Frame] = OrderedDict()  # id'd, not yet answered
        self.to_send: deque[str] = deque()                # pending ids the current stream owes
        # answered, waiting for their turn
        self.ready: dict[str, dict[str, torch.Tensor] | PipelineError] = {}
        self.attempts: dict[str, int] = {}
        self.exhausted = False
        self.pulling = False                              # a stream is pulling the next input
        self.cond = threading.Condition()
        self.generation = 0                               # bumped at every (re-)open
        self.epoch = 0                                    # the current stream's pipeline
        self.call: grpc.Call | None = None
        self.failed_at: float | None = None
        self._stopped = False

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()
        if self.call is not None:
            self.call.cancel()

    def results(self) -> Iterator[dict[str, torch.Tensor]]:
        code: grpc.StatusCode | None = None
        while True:
            address, epoch = self.client.view.current()
            with self.cond:
                self.generation += 1
                self.epoch = epoch
                self.to_send = deque(self.pending)  # everything unanswered, in order
                generation = self.generation
            inbox: queue.Queue[object] = queue.Queue()  # frames, RpcErrors, _DONE
            self.call = self.client._stub_for(address).Forward(self._requests(generation))
            threading.Thread(target=_receive, args=(self.call, inbox), daemon=True,
                             name="sdk-receive").start()
            code, last_error = None, None
            while True:
                yield from self._deliver_ready()
                with self.cond:
                    if self.exhausted and not self.pending and not self.pulling:
                        self.call.cancel()
                        return
                item = self._next(inbox)
                if item is _MOVED:  # the entry hung and the coordinator re-planned around it
                    break
                if isinstance(item, wire.Frame):
                    code = self._accept(item)
                    if code is not None:
                        last_error = error_for(code, item.error.message, stage=item.error.stage)
                        break
                    continue
                with self.cond:  # the stream ended or broke
                    if self.exhausted and not self.pending and not self.pulling:
                        continue  # a clean end: every answer is in
                if isinstance(item, grpc.RpcError):
                    last_error = rpc_error(item)
                    if not self.client.retry.retryable(item.code()):
                        raise last_error
                    code = item.code()
                else:
                    code = grpc.StatusCode.UNAVAILABLE
                break
            # Re-open on the (possibly new) pipeline and resend everything unanswered.
            self.call.cancel()
            while True:  # answers that arrived before the break still count
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, wire.Frame):
                    self._accept(item, resend_ok=False)
            self.failed_at = self.failed_at or time.monotonic()
            with self.cond:
                owed = list(self.pending)
            worst = 0
            for rid in owed:
                self.attempts[rid] = self.attempts.get(rid, 0) + 1
                worst = max(worst, self.attempts[rid])
                if self.attempts[rid] > self.client._retries(code):
                    self.ready[rid] = last_error or error_for(
                        code or grpc.StatusCode.UNAVAILABLE,
                        f"request {rid} failed {self.attempts[rid]} times; the pipeline at "
                        f"{self.client.address} keeps failing", request_id=rid)
                    with self.cond:
                        self.pending.pop(rid, None)
                        self.cond.notify_all()
            self.client._recover(code, epoch, max(worst, 1))

    def _deliver_ready(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.order and self.order[0] in self.ready:
            item = self.ready.pop(self.order.popleft())
            if isinstance(item, PipelineError):
                raise item
            yield item

    def _next(self, inbox: queue.Queue[object]) -> object:
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
                return inbox.get(timeout=min(left, self.client.retry.stall_check_s))
            except queue.Empty:
                with self.cond:
                    if not self.pending:
                        deadline = time.monotonic() + self.timeout  # idle: a slow input
                        continue
                if self.client.view.current()[1] > self.epoch or \
                        self.client.view.newer_published():
                    return _MOVED

    def _accept(self, frame: wire.Frame, resend_ok: bool = True) -> grpc.StatusCode | None:
        """Take one result; the code if it shows the pipeline moved (re-open and resend
        everything), else None. A request a full stage refused is resent alone, later."""
        code = status_from_int(frame.error.code) if frame.error.code else None
        rid = frame.request_id
        with self.cond:
            if rid not in self.pending:
                return None  # an answer to a request already answered: never deliver twice
            if code in BUSY_CODES and self._retry_later(rid):
                return None
            if code in MOVED_CODES:
                return code if resend_ok else None
            self.pending.pop(rid)
            self.cond.notify_all()
        try:
            self.ready[rid] = result_tensors(frame)
        except PipelineError as exc:
            self.ready[rid] = exc
        if self.failed_at is not None:
            self.client.recoveries.append(time.monotonic() - self.failed_at)
            self.failed_at = None
        return None

    def _retry_later(self, rid: str) -> bool:
        """Queue `rid` for a resend after the busy backoff; False once out of retries."""
        self.attempts[rid] = attempt = self.attempts.get(rid, 0) + 1
        if attempt > self.client.retry.max_retries:
            return False

        def requeue() -> None:
            with self.cond:
                if rid in self.pending and rid not in self.to_send:
                    self.to_send.append(rid)
                    self.cond.notify_all()

        timer = threading.Timer(self.client.retry.busy_wait(attempt), requeue)
        timer.daemon = True
        timer.start()
        return True

    def _requests(self, generation: int) -> Iterator[wire.Frame]:
        """The request iterator of stream `generation` (runs in gRPC's sending thread)."""
        while True:
            with self.cond:
                while True:
                    if self._stopped or self.generation != generation:
                        return
                    if self.to_send:
                        rid = self.to_send.popleft()
                        frame = self.pending.get(rid)
                        if frame is None:
                            continue  # answered meanwhile
                        stamp(frame, self.epoch, self.timeout)
                        break
                    if self.exhausted and not self.pending:
                        return  # half-close only once every answer is in (resends may come)
                    if not self.exhausted and len(self.pending) < self.window \
                            and not self.pulling:
                        self.pulling = True
                        frame = None
                        break
                    self.cond.wait(0.2)
            if frame is None:
                # Pull the next input only when a slot is free, so inputs are produced just in
                # time; outside the lock, since a generator may take its time.
                try:
                    inputs = next(self.source, None)
                except BaseException:
                    with self.cond:
                        self.pulling = False
                        self.exhausted = True
                        self.cond.notify_all()
                    raise
                with self.cond:
                    self.pulling = False
                    self.cond.notify_all()
                    if inputs is None:
                        self.exhausted = True
                        continue  # the stream stays open for resends until all is answered
                    rid = self.client._next_id()
                    frame = request_frame(rid, inputs, None)
                    self.order.append(rid)
                    self.pending[rid] = frame
                    if self.generation != generation:  # this stream was replaced meanwhile:
                        self.to_send.append(rid)        # the current one sends it
                        return
                    stamp(frame, self.epoch, self.timeout)
            yield frame


def _receive(call: Iterable[wire.Frame], inbox: queue.Queue[object]) -> None:
    try:
        for frame in call:
            inbox.put(frame)
    except grpc.RpcError as exc:
        inbox.put(exc)
        return
    inbox.put(_DONE)


__all__ = ["NotDeployedError", "PipelineClient"]
