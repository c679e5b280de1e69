"""One retry policy and one view of "the current pipeline", shared by every client.

`PipelineClient`, `AsyncPipelineClient` (which runs on it) and `TextGenerator` all decide the
same way what a failure means:

- *moved* codes (a dead, reassigned or fenced stage: UNAVAILABLE, FAILED_PRECONDITION,
  CANCELLED, ABORTED) mean the pipeline the request went to is gone: wait (bounded) for the
  coordinator to publish a newer one, then resend there, with the same request id;
- *busy* (RESOURCE_EXHAUSTED) means a stage is full: back off and resend to the same pipeline;
- anything else is the request's own fault and is raised at once, typed.

A frame always carries the epoch of the pipeline it is sent to (`Frame.epoch`), and stages
compute only frames of their own epoch, so a resend can never meet a mix of two plans.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import grpc

from pipeedge import wire
from pipeedge.client.discovery import PipelineSource

log = logging.getLogger(__name__)

MOVED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                         grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED})
BUSY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client survives failures.

    max_retries: resends of one request before its error is raised.
    recovery_timeout_s: how long a failed request waits for a newer pipeline.
    stall_check_s: after this long without any result, ask whether a newer pipeline is out (a
        hung stage breaks no call) and move if so.
    busy_backoff_s: first and longest wait before resending a request a full stage refused.
    """

    max_retries: int = 8
    recovery_timeout_s: float = 30.0
    stall_check_s: float = 1.0
    busy_backoff_s: tuple[float, float] = (0.05, 2.0)

    def retryable(self, code: grpc.StatusCode | None) -> bool:
        return code in MOVED_CODES or code in BUSY_CODES

    def busy_wait(self, attempt: int) -> float:
        first, longest = self.busy_backoff_s
        return min(first * (2.0 ** max(attempt - 1, 0)), longest)


class PipelineView:
    """Where the pipeline starts now and its epoch, moved forward (never back) by any thread."""

    def __init__(self, source: PipelineSource, policy: RetryPolicy) -> None:
        self.source = source
        self.policy = policy
        self._lock = threading.Lock()       # guards address and version (never held long)
        self._move_lock = threading.Lock()  # one caller waits for the source at a time
        self.address, self.version = source.entry()

    @property
    def can_move(self) -> bool:
        """False for a fixed address: no coordinator or pipeline file to learn a newer one."""
        return type(self.source) is not PipelineSource

    def current(self) -> tuple[str, int]:
        with self._lock:
            return self.address, self.version

    def newer_published(self) -> bool:
        """Whether a newer pipeline is out (asked when a call went quiet; never waits)."""
        try:
            return self.source.entry()[1] > self.version
        except Exception:  # noqa: BLE001 - no coordinator or pipeline file now: keep waiting
            return False

    def move_past(self, seen: int, *, wait: bool = True) -> bool:
        """Move to a pipeline newer than version `seen`: at once if another caller already
        did, else ask the source (waiting up to the recovery timeout when `wait`). False if
        none came."""
        with self._move_lock:
            if self.current()[1] > seen:
                return True
            try:
                if wait:
                    newer = self.source.wait_newer(seen, self.policy.recovery_timeout_s)
                else:
                    entry = self.source.entry()
                    newer = entry if entry[1] > seen else None
            except Exception:  # noqa: BLE001 - the source is unreachable now: not moved
                newer = None
            if newer is None:
                return False
            with self._lock:
                self.address, self.version = newer
        log.info("pipeline moved to %s (epoch %d)", *newer,
                 extra={"event": "failover", "version": newer[1]})
        return True


def stamp(frame: wire.Frame, epoch: int, timeout_s: float | None) -> wire.Frame:
    """Address a frame to the pipeline of `epoch`, with a deadline from now: done right before
    each send, so a resend waits out no deadline it was given before a failover."""
    frame.epoch = epoch
    if timeout_s:
        frame.deadline_unix_ms = int((time.time() + timeout_s) * 1000)
    return frame
