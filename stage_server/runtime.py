"""One assignment at work: receive -> compute -> send, overlapped through bounded queues.

Receiving microbatch i+1 (in the upstream stream's reader thread, which also decodes and
validates), computing i (the compute thread) and sending i-1 (the downstream link's sender)
happen at once. Queues are bounded (default 2 in, 2 out, the scheduler's buffer model), so a
slow stage pushes back on the stream instead of growing memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import torch

from pipeedge import codec, wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.logs import Throttle
from pipeedge.stage_server.adaptive import OutputCompression
from pipeedge.stage_server.backends import ShardBackend
from pipeedge.stage_server.downstream import DownstreamLink, Outgoing
from pipeedge.stage_server.metrics import StageHooks
from pipeedge.stage_server.routing import Route, error_frame
from pipeedge.stage_server.sessions import SessionError

if TYPE_CHECKING:
    from pipeedge.security import Security

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 2


class RequestError(Exception):
    """A request that fails on its own; becomes an error frame or a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Work:
    frame: wire.Frame                  # the request, tensors already decoded into `inputs`
    inputs: dict[str, torch.Tensor]
    route: Route


@dataclass
class Counters:
    frames: int = 0
    items: int = 0
    errors: int = 0
    compute_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


class StageRuntime:
    def __init__(self, assignment: pb.AssignRequest, backend: ShardBackend,
                 assignment_id: str, *, metrics: StageHooks | None = None,
                 security: Security | None = None) -> None:
        self.assignment = assignment
        self.assignment_id = assignment_id
        self.backend = backend
        self.name = assignment.stage_name
        self.counters = Counters()
        # Monitoring hooks (metrics.py): Prometheus when --metrics-port is set, energy baseline.
        self.metrics = metrics or StageHooks()
        self.started_at = time.monotonic()
        self.energy_at_start = self.metrics.energy_joules()
        self._error_log = Throttle(30.0)  # a failing shard logs now and then, not per request
        # Bounded input queue under one lock with the stop flag (see submit/stop).
        self._intake = threading.Condition()
        self._inbox: deque[Work] = deque()
        self._inbox_limit = assignment.queue_in or DEFAULT_QUEUE
        self._outbox: queue.Queue[Outgoing] = queue.Queue(assignment.queue_out or DEFAULT_QUEUE)
        # Activation compression (adaptive.py): fixed or adaptive output encoding, link meter.
        self.compression = OutputCompression(assignment) if assignment.next_hop else None
        self._stopped = threading.Event()
        self.link = (DownstreamLink(assignment.next_hop, self._outbox, self.name,
                                    on_sent=self._count_sent,
                                    compression=self.compression, metrics=self.metrics,
                                    security=security)
                     if assignment.next_hop else None)
        self._compute = threading.Thread(target=self._compute_loop, name="compute", daemon=True)
        self._compute.start()

    # -- intake (upstream reader threads) -------------------------------------------------------
    def submit(self, frame: wire.Frame, route: Route) -> None:
        """Fence, check, decode and queue one request; blocks while the input queue is full.

        Every request counted here is answered exactly once: computed, or failed with a code the
        client can act on (ABORTED / UNAVAILABLE make it fetch the current pipeline and resend).
        """
        route.expect()
        try:
            self._fence(frame)
            work = Work(frame, self._decode(frame), route)
        except RequestError as exc:
            self._reject(frame, route, exc.code, str(exc))
            return
        except Exception as exc:
            # Every counted request must be answered, or its stream never ends (Infer without a
            # deadline waits forever). Decoding rejects bad frames with ValueError; anything
            # else is a decoder bug, reported instead of hanging (found by tests/integration/test_fuzz.py).
            log.exception("decoding request %s failed", frame.request_id)
            self._reject(frame, route, grpc.StatusCode.INTERNAL,
                         f"stage {self.name} cannot decode request {frame.request_id}: "
                         f"{type(exc).__name__}")
            return
        with self._intake:
            self._intake.wait_for(lambda: len(self._inbox) < self._inbox_limit
                                  or self._stopped.is_set())
            if not self._stopped.is_set():
                self._inbox.append(work)
                self._intake.notify_all()
                return
        self._fail(work, grpc.StatusCode.UNAVAILABLE,
                   f"stage {self.name} was reassigned; retry the request")

    def _reject(self, frame: wire.Frame, route: Route, code: grpc.StatusCode, message: str) -> None:
        self.counters.errors += 1
        self.metrics.error(code)
        route.deliver(error_frame(frame, code, message, self.name))

    def _fence(self, frame: wire.Frame) -> None:
        """Compute a frame only within its own deployment (docs/failure-model.md).

        A frame carries the epoch of the pipeline its sender used; every stage of one deployment
        holds the same epoch, and every deployment a new one. Accepting only equal epochs means
        a request meets the layer ranges of exactly one plan, whatever re-plans happen around
        it. Epoch 0 (a client that does not know) is the model's input, so only a stage that
        starts at layer 1 takes it, and stamps its own epoch for the stages after it.
        """
        epoch = self.assignment.epoch
        if frame.epoch == epoch:
            return
        if frame.epoch == 0 and self.assignment.first_layer == 1:
            frame.epoch = epoch
            return
        a = self.assignment
        raise RequestError(
            grpc.StatusCode.ABORTED,
            f"request {frame.request_id[:64]} was sent to pipeline epoch {frame.epoch}, but "
            f"stage {self.name} now holds layers {a.first_layer}-{a.last_layer} of epoch "
            f"{epoch}; fetch the current pipeline (coordinator= or the pipeline file) and resend")

    def _decode(self, frame: wire.Frame) -> dict[str, torch.Tensor]:
        start = time.perf_counter()  # metrics: decode time
        if frame.error.code:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "a request frame must not carry an error")
        if frame.session_id and not frame.tensors:
            return {}  # end-of-session frame (sessions.py): nothing to validate
        try:
            # Names, dtypes, shapes and byte counts are checked on the headers first (meta
            # tensors, nothing allocated), so a frame that does not fit this shard costs no
            # decode: a 64 MiB 2-bit frame would otherwise grow to 1 GB of float32 first.
            headers = codec.describe_tensors(frame.tensors)
            self.backend.validate(headers)
            self._check_batch(headers)
            tensors = codec.decode_tensors(frame.tensors)
        except ValueError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"layers {self.assignment.first_layer}-"
                               f"{self.assignment.last_layer}: {exc}") from None
        nbytes = codec.payload_bytes(frame.tensors)
        self.counters.bytes_in += nbytes
        self.metrics.decoded(nbytes, time.perf_counter() - start)
        return tensors

    def _check_batch(self, tensors: dict[str, torch.Tensor]) -> None:
        batch = _batch_size(tensors)
        if tensors and batch == 0:  # found by tests/integration/test_fuzz.py: went through every stage
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "microbatch of 0 items; send at least one")
        limit = self.assignment.max_microbatch
        if limit and batch > limit:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"microbatch of {batch} exceeds stage {self.name}'s limit of "
                               f"{limit}; split the batch or redeploy with a larger microbatch")

    # -- compute ----------------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        if self.assignment.threads:
            torch.set_num_threads(self.assignment.threads)
        while True:
            with self._intake:
                self._intake.wait_for(lambda: self._inbox or self._stopped.is_set())
                if self._stopped.is_set():
                    return  # stop() answers what is still queued
                work = self._inbox.popleft()
                self._intake.notify_all()
            frame = work.frame
            if frame.deadline_unix_ms and time.time() * 1000 > frame.deadline_unix_ms:
                self._fail(work, grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"request {frame.request_id} expired before stage {self.name} "
                           "computed it; raise the deadline or lower the load")
                continue
            start = time.perf_counter()
            try:
                # Autoregressive decoding: a session's frames use (and extend) that session's
                # state on the backend; an empty one ends the session (sessions.py).
                if frame.session_id:
                    outputs = self.backend.run_session(work.inputs, frame.session_id, frame.step)
                else:
                    outputs = self.backend.run(work.inputs)
            except SessionError as exc:
                self._fail(work, exc.code, str(exc))
                continue
            except Exception as exc:  # a shard failure must not take the server down
                report, held = self._error_log.ready()
                if report:
                    log.exception("compute failed for request %s (%d more since last report)",
                                  frame.request_id, held, extra={"event": "compute_error"})
                self._fail(work, grpc.StatusCode.INTERNAL,
                           f"stage {self.name} failed computing request {frame.request_id}: {exc}")
                continue
            if work.inputs:  # an end-of-session frame computes nothing: not a microbatch
                self.counters.compute_s += time.perf_counter() - start
                self.counters.frames += 1
                self.counters.items += _batch_size(work.inputs)
                self.metrics.computed(_batch_size(work.inputs), time.perf_counter() - start)
            encode_start = time.perf_counter()  # metrics: encode time
            result = wire.Frame(request_id=frame.request_id, hop_tag=frame.hop_tag,
                                session_id=frame.session_id, step=frame.step,
                                deadline_unix_ms=frame.deadline_unix_ms,
                                trace_id=frame.trace_id, epoch=frame.epoch)
            try:
                codec.encode_tensors(result, outputs,
                                     self.compression.encoding() if self.compression else None)
            except ValueError as exc:
                self._fail(work, grpc.StatusCode.INTERNAL, f"stage {self.name}: {exc}")
                continue
            self.metrics.encoded(time.perf_counter() - encode_start)
            del work.inputs, outputs
            if self.link is None:
                work.route.deliver(result)
            else:
                self._send(Outgoing(result, work.route, result.hop_tag))

    def _send(self, item: Outgoing) -> None:
        """Queue a result for the next hop; fail it instead if the stage stops meanwhile (a
        dead next hop must not hold the compute thread, and with it stop(), forever)."""
        while not self._stopped.is_set():
            try:
                self._outbox.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        self._fail_outgoing(item)

    def _fail_outgoing(self, item: Outgoing) -> None:
        item.frame.hop_tag = item.upstream_tag
        self.counters.errors += 1
        self.metrics.error(grpc.StatusCode.UNAVAILABLE)
        item.route.deliver(error_frame(item.frame, grpc.StatusCode.UNAVAILABLE,
                                       f"stage {self.name} was reassigned; retry the request",
                                       self.name))

    def _fail(self, work: Work, code: grpc.StatusCode, message: str) -> None:
        self.counters.errors += 1
        self.metrics.error(code)
        work.route.deliver(error_frame(work.frame, code, message, self.name))

    def _count_sent(self, frame: wire.Frame) -> None:
        nbytes = codec.payload_bytes(frame.tensors)
        self.counters.bytes_out += nbytes
        self.metrics.sent(nbytes)

    # -- lifecycle and status ------------------------------------------------------------------
    def queue_depths(self) -> tuple[int, int]:
        return len(self._inbox), self._outbox.qsize()

    def stop(self) -> None:
        """Stop accepting work and answer everything not yet computed with UNAVAILABLE.

        The flag is set under the intake lock, so no request can be queued after the drain
        below: every request counted by `submit` is answered (in-flight counts never leak).
        """
        with self._intake:
            self._stopped.set()
            queued = list(self._inbox)
            self._inbox.clear()
            self._intake.notify_all()
        for work in queued:
            self._fail(work, grpc.StatusCode.UNAVAILABLE,
                       f"stage {self.name} was reassigned; retry the request")
        self._compute.join(timeout=30)  # finishes the microbatch it is computing, if any
        if self._compute.is_alive():
            log.warning("compute thread of stage %s did not finish within 30 s", self.name)
        if self.link:
            self.link.close()  # answers what it sent or still carries
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                break
            self._fail_outgoing(item)
        self.backend.close()


def _batch_size(tensors: dict[str, torch.Tensor]) -> int:
    for t in tensors.values():
        return int(t.shape[0]) if t.dim() else 1
    return 0
