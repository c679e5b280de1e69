"""The link to the next stage: one long-lived Forward stream, results routed back by hop tag.

A sender feeds microbatches from the bounded output queue into the stream while a receiver reads
results and hands each one to the route it came from. If the stream breaks, every request still
waiting downstream is answered with UNAVAILABLE naming the next hop, and the next microbatch
opens a fresh stream.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from pipeedge import channels, wire
from pipeedge.logs import Throttle
from pipeedge.stage_server.metrics import StageHooks
from pipeedge.stage_server.routing import Route, error_frame

if TYPE_CHECKING:
    from pipeedge.security import Security
    from pipeedge.stage_server.adaptive import OutputCompression

log = logging.getLogger(__name__)


@dataclass
class Outgoing:
    """A computed microbatch waiting to be sent downstream."""

    frame: wire.Frame     # ready to send; hop_tag is rewritten for the next hop
    route: Route          # where the result goes back
    upstream_tag: int     # the hop tag the upstream sender chose


class DownstreamLink:
    def __init__(self, address: str, outbox: queue.Queue[Outgoing], stage_name: str,
                 on_sent: Callable[[wire.Frame], None] | None = None,
                 compression: OutputCompression | None = None, metrics: StageHooks | None = None,
                 security: Security | None = None) -> None:
        self.address = address
        self._outbox = outbox
        self._stage = stage_name
        self._on_sent = on_sent or (lambda frame: None)
        # Activation compression (adaptive.py): times each send for the link meter and
        # the adaptive encoding; paces sends under the PIPEEDGE_TEST_LINK_MBPS test hook.
        self._watch = compression.watch if compression else (lambda frames: frames)
        self._metrics = metrics or StageHooks()  # send time and next-hop failures (metrics.py)
        self._warn = Throttle(30.0)  # a dead next hop is retried every <= 2 s: warn now and then
        self._tags = itertools.count(1)
        self._pending: dict[int, Outgoing] = {}
        self._carry: deque[Outgoing] = deque()  # taken from the outbox but never sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The stage's own certificate is its client certificate on the hop (plus the token).
        self._channel = channels.open_channel(address, security=security)
        self._stub = wire.stage_stub(self._channel)
        self._thread = threading.Thread(target=self._run, name=f"downstream-{address}",
                                        daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._stop.set()
        self._channel.close()
        self._thread.join(timeout=5)
        self._fail_all()  # the sender thread does the same when it ends later

    def _fail_all(self) -> None:
        """Answer everything sent or carried (pops are atomic: each item is answered once)."""
        self._fail_pending("the stage was reassigned or stopped; retry the request")
        while True:
            with self._lock:
                item = self._carry.popleft() if self._carry else None
            if item is None:
                return
            self._fail(item, "the stage was reassigned or stopped; retry the request")

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            if not self._wait_for_work():
                continue
            alive = threading.Event()
            alive.set()
            try:
                for result in self._stub.Forward(self._watch(self._requests(alive))):
                    self._route_back(result)
                    backoff = 0.05
                # The server ended the stream cleanly only if we stopped sending: fall through.
            except grpc.RpcError as exc:
                report, held = self._warn.ready()
                if report and not self._stop.is_set():
                    log.warning("stream to next hop %s failed: %s (%d more since last report)",
                                self.address, exc.code(), held,
                                extra={"event": "next_hop_error", "next_hop": self.address})
            finally:
                with self._lock:
                    alive.clear()
            self._fail_pending(f"next hop {self.address} failed or is unreachable; "
                               "check that stage or redeploy the pipeline")
            if not self._stop.is_set():
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        self._fail_all()

    def _wait_for_work(self) -> bool:
        """Open a stream only when there is something to send (no idle reconnect loops)."""
        if self._carry:
            return True
        try:
            item = self._outbox.get(timeout=0.2)
        except queue.Empty:
            return False
        self._carry.append(item)
        return True

    def _requests(self, alive: threading.Event) -> Iterator[wire.Frame]:
        # Runs in gRPC's request-consumer thread, which may outlive `_run`: an item taken after
        # close() is answered here, never parked where nobody looks again.
        while not self._stop.is_set():
            try:
                item = self._carry.popleft()
            except IndexError:
                try:
                    item = self._outbox.get(timeout=0.2)
                except queue.Empty:
                    if not alive.is_set():
                        return
                    continue
            with self._lock:
                stopped = self._stop.is_set()
                if not stopped and not alive.is_set():  # the stream died while we waited:
                    self._carry.appendleft(item)        # keep it for the next one
                    return
                if not stopped:
                    tag = next(self._tags)
                    self._pending[tag] = item
            if stopped:
                self._fail(item, "the stage was reassigned or stopped; retry the request")
                return
            item.frame.hop_tag = tag
            self._on_sent(item.frame)
            handed_at = time.perf_counter()
            yield item.frame  # gRPC asks for the next frame once this one is sent
            self._metrics.send_time(time.perf_counter() - handed_at)

    def _route_back(self, result: wire.Frame) -> None:
        with self._lock:
            item = self._pending.pop(result.hop_tag, None)
        if item is None:  # e.g. answered after its stream was failed over; debug, not per frame
            log.debug("result with unknown hop tag %d from %s dropped", result.hop_tag,
                      self.address)
            return
        result.hop_tag = item.upstream_tag
        item.route.deliver(result)

    def _fail_pending(self, message: str) -> None:
        with self._lock:
            items = list(self._pending.values())
            self._pending.clear()
        for item in items:
            self._fail(item, message)

    def _fail(self, item: Outgoing, message: str) -> None:
        frame = item.frame
        frame.hop_tag = item.upstream_tag
        self._metrics.error(grpc.StatusCode.UNAVAILABLE)
        item.route.deliver(error_frame(frame, grpc.StatusCode.UNAVAILABLE, message, self._stage))
