"""Routes: how a result finds its way back to the stream that sent the request.

Every upstream Forward stream (a client, or the previous stage) gets one `Route`. Results for it
are queued there and the stream's response generator yields them. A route ends once its sender
has closed its side and every request it sent has been answered.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc

from pipeedge import wire
from pipeedge._proto import stage_pb2 as pb

_END = object()


class InFlight:
    """A counter shared by threads: requests accepted and not yet answered, open data calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n

    def add_below(self, limit: int) -> bool:
        """Count one more if that stays within `limit`; False (and no change) otherwise."""
        with self._lock:
            if self.value >= limit:
                return False
            self.value += 1
            return True


class Route:
    """Result queue of one upstream stream, with the count of requests still owed an answer."""

    def __init__(self, in_flight: InFlight | None = None) -> None:
        self._in_flight = in_flight or InFlight()
        self._results: queue.SimpleQueue[wire.Frame | object] = queue.SimpleQueue()  # or _END
        self._lock = threading.Lock()
        self._outstanding = 0
        self._input_done = False
        self._closed = False

    def expect(self) -> None:
        """Count one request accepted from this stream."""
        with self._lock:
            self._outstanding += 1
        self._in_flight.add(1)

    def deliver(self, frame: wire.Frame) -> None:
        """Hand back one result (or error) frame for a request counted with `expect`."""
        with self._lock:
            self._outstanding -= 1
            finished = self._input_done and self._outstanding <= 0
        self._in_flight.add(-1)
        self._results.put(frame)
        if finished:
            self._close()

    def input_done(self) -> None:
        """The sender closed its side; end the stream once all answers are out."""
        with self._lock:
            self._input_done = True
            finished = self._outstanding <= 0
        if finished:
            self._close()

    def cancel(self) -> None:
        self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._results.put(_END)

    def results(self) -> Iterator[wire.Frame]:
        """Yield result frames until the route ends (the Forward response generator)."""
        while True:
            item = self._results.get()
            if not isinstance(item, wire.Frame):  # _END
                return
            yield item

    def next_result(self, timeout: float | None = None) -> wire.Frame | None:
        """One result (the unary Infer path); None if the route ended without one."""
        item = self._results.get(timeout=timeout)
        return item if isinstance(item, wire.Frame) else None  # None: _END


def error_frame(request: wire.Frame, code: grpc.StatusCode, message: str,
                stage: str) -> wire.Frame:
    """A result frame that reports a failed request, keeping its ids so the sender can match it."""
    if len(message) > 1000:  # messages echo request fields (e.g. a tensor's name); keep them
        message = message[:1000] + "..."  # under gRPC's 8 KB status limit on the Infer path
    return wire.Frame(request_id=request.request_id, hop_tag=request.hop_tag,
                      session_id=request.session_id, step=request.step, trace_id=request.trace_id,
                      epoch=request.epoch,
                      error=pb.FrameError(code=code.value[0], message=message, stage=stage))
