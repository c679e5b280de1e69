"""Activation compression of a stage's output: the encoding in use, the link meter, adaptation.

`OutputCompression` is what the runtime and the downstream link share:

* ``encoding()`` (compute thread): the `Encoding` to apply to the next result, or None for raw.
* ``watch(frames)`` (the downstream sender): wraps the generator of frames fed into the Forward
  stream and times each send (from handing the frame to gRPC until gRPC asks for the next one,
  i.e. serialisation plus flow control). Payload bytes / send seconds over a window is the link's
  throughput; it is measured for every stage with a next hop and shown as `StageStatus.link_mbps`.
* ``bits``: bits per float element currently on the wire (`StageStatus.output_bits`).

Adaptive mode (`AssignRequest.target_items_per_s` > 0): after each window (>= WINDOW_S seconds
and >= MIN_FRAMES frames sent) the controller predicts the items/s the measured link would carry
at each width of the ladder raw(32), float16(16), uniform 8, 6, 4, 3, 2, from the float elements
and fixed (integer tensor) bytes per item it has seen, and picks:

* narrower, at once, when the current width cannot meet the target: the widest width predicted to
  reach target x (1 + DOWN_MARGIN), or the narrowest allowed width if none does;
* wider only when a wider width is predicted to reach target x (1 + UP_MARGIN), and not before a
  hold time has passed since it last had to leave that width. The hold starts at HOLD_S and
  doubles (up to MAX_HOLD_S) each time a step up has to be undone within two windows, so a link
  whose measured throughput looks better while it is underused (send buffers absorb bursts) is
  probed less and less often instead of oscillating.

The clip of `output_encoding` applies to uniform widths <= CLIP_MAX_BITS (clipping costs
accuracy at 6+ bits on MiniLM, see docs/compression.md).

Test hook, not for production: the environment variable ``PIPEEDGE_TEST_LINK_MBPS`` makes every
sender of this process pace its frames as if the link carried that many megabits (1e6 bits) of
payload per second (a frame of B bytes takes B*8/rate seconds to send). Its value is a number, or
the path of a file holding a number that is re-read when it changes (empty, missing or 0 = no
limit), so a test can throttle a running stage and lift the throttle again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeedge import wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.encoding import link_bits
from pipeedge.quant import CLIPS, MAX_BITS, MIN_BITS

log = logging.getLogger(__name__)

TEST_LINK_ENV = "PIPEEDGE_TEST_LINK_MBPS"
LADDER = (32, 16, 8, 6, 4, 3, 2)  # 32 = raw float32, 16 = float16, the rest uniform
CLIP_MAX_BITS = 4
WINDOW_S = 1.0
MIN_FRAMES = 3
DOWN_MARGIN = 0.1
UP_MARGIN = 0.3
HOLD_S = 2.0
MAX_HOLD_S = 60.0
_FLOAT_DTYPES = (pb.FLOAT32, pb.FLOAT16, pb.BFLOAT16)
_DTYPE_BITS = {pb.DTYPE_UNSPECIFIED: 32, pb.FLOAT32: 32, pb.FLOAT16: 16, pb.BFLOAT16: 16}


def check_assignment(assignment: pb.AssignRequest) -> None:
    """Reject an output encoding this stage could not apply (ValueError -> INVALID_ARGUMENT)."""
    enc = assignment.output_encoding
    if enc.kind not in pb.Encoding.Kind.values():
        raise ValueError(f"output_encoding kind {enc.kind} is unknown; use RAW, FLOAT16, "
                         "BFLOAT16 or UNIFORM")
    if enc.kind == pb.Encoding.UNIFORM and not MIN_BITS <= enc.bits <= MAX_BITS \
            and not assignment.target_items_per_s:
        raise ValueError(f"output_encoding uniform needs bits {MIN_BITS}..{MAX_BITS}, got "
                         f"{enc.bits}")
    if enc.clip not in CLIPS:
        raise ValueError(f"output_encoding clip '{enc.clip}' is unknown; use one of "
                         f"{[c for c in CLIPS if c]} or none")
    if enc.clip and enc.kind != pb.Encoding.UNIFORM and not assignment.target_items_per_s:
        raise ValueError(f"output_encoding clip '{enc.clip}' applies only to uniform encoding")
    if enc.granularity not in pb.Encoding.Granularity.values():
        raise ValueError(f"output_encoding granularity {enc.granularity} is unknown; use "
                         "PER_SAMPLE or PER_ROW")
    if enc.granularity == pb.Encoding.PER_ROW and (enc.kind != pb.Encoding.UNIFORM
                                                   or assignment.target_items_per_s):
        raise ValueError("output_encoding granularity PER_ROW applies only to fixed uniform "
                         "encoding (uniform:BITS:token), not to adaptive or float encodings")
    target = assignment.target_items_per_s
    if not (target >= 0 and math.isfinite(target)):
        raise ValueError(f"target_items_per_s must be a positive number of items/s (0 = not "
                         f"adaptive), got {target}")
    if assignment.adaptive_min_bits and not MIN_BITS <= assignment.adaptive_min_bits <= MAX_BITS:
        raise ValueError(f"adaptive_min_bits must be {MIN_BITS}..{MAX_BITS} (0 = {MIN_BITS}), "
                         f"got {assignment.adaptive_min_bits}")


class LinkThrottle:
    """The ``PIPEEDGE_TEST_LINK_MBPS`` test hook: paces sends to a payload rate."""

    def __init__(self, spec: str) -> None:
        self._spec = spec.strip()
        self._path = None if _is_number(self._spec) else self._spec
        self._mbps = float(self._spec) if self._path is None else 0.0
        self._checked = 0.0
        self._mtime: float | None = None

    @classmethod
    def from_env(cls) -> LinkThrottle | None:
        spec = os.environ.get(TEST_LINK_ENV, "").strip()
        return cls(spec) if spec else None

    def mbps(self) -> float:
        """Current limit in megabits per second; 0 = none. The file is re-read when it changes."""
        if self._path is None:
            return self._mbps
        now = time.monotonic()
        if now - self._checked >= 0.05:
            self._checked = now
            try:
                mtime = os.stat(self._path).st_mtime_ns
                if mtime != self._mtime:
                    self._mtime = mtime
                    with open(self._path) as f:
                        text = f.read().strip()
                    self._mbps = float(text) if _is_number(text) else 0.0
            except OSError:
                self._mtime, self._mbps = None, 0.0
        return self._mbps

    def pace(self, nbytes: int) -> None:
        mbps = self.mbps()
        if mbps > 0:
            time.sleep(nbytes * 8 / (mbps * 1e6))


@dataclass
class _Sent:
    seconds: float
    nbytes: int         # tensor payload bytes (data + params)
    items: int          # samples along dim 0
    float_elems: int    # float elements (what the encoding compresses)
    fixed_bytes: int    # bytes of non-float tensors (always raw)
    float_tensors: int  # float tensors (uniform adds 8 bytes per sample each)


def _measure(frame: wire.Frame, seconds: float) -> _Sent:
    nbytes = items = float_elems = fixed = floats = 0
    for t in frame.tensors:
        nbytes += len(t.data) + len(t.encoding.params)
        if not items and t.shape:
            items = int(t.shape[0])
        if t.dtype in _FLOAT_DTYPES:
            float_elems += math.prod(t.shape)
            floats += 1
        else:
            fixed += len(t.data)
    return _Sent(seconds, nbytes, max(items, 1), float_elems, fixed, floats)


class OutputCompression:
    """One per assignment with a next hop; thread-safe (compute thread reads, sender records)."""

    def __init__(self, assignment: pb.AssignRequest, *, throttle: LinkThrottle | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage = assignment.stage_name
        self._clock = clock
        self._throttle = throttle if throttle is not None else LinkThrottle.from_env()
        self._raw_bits = _DTYPE_BITS.get(assignment.dtype, 32)
        fixed = assignment.output_encoding if assignment.HasField("output_encoding") else None
        self._clip = fixed.clip if fixed is not None else ""
        self.target = assignment.target_items_per_s
        self.adaptive = self.target > 0
        min_bits = min(max(assignment.adaptive_min_bits or MIN_BITS, MIN_BITS), MAX_BITS)
        self.ladder = tuple(b for b in LADDER if b >= min_bits and b <= self._raw_bits)
        if not self.ladder or (self.ladder[-1] > min_bits and min_bits <= 8):
            self.ladder += (min_bits,)
        self._lock = threading.Lock()
        self._window: list[_Sent] = []
        self._window_start = clock()
        self._link_bps = 0.0          # payload bytes per second of send time, last window
        self._hold: dict[int, float] = {}        # width -> hold duration after leaving it
        self._hold_until: dict[int, float] = {}  # width -> no step up to it before this time
        self._raised_at: dict[int, float] = {}   # width -> when we last stepped up to it
        if self.adaptive:
            self.bits = self.ladder[0]
            self._encoding = self._encoding_for(self.bits)
        else:
            self._encoding = fixed if fixed is not None and fixed.kind != pb.Encoding.RAW \
                else None
            self.bits = link_bits(self._encoding, self._raw_bits)

    # -- compute thread ---------------------------------------------------------------------------
    def encoding(self) -> pb.Encoding | None:
        """The encoding for the next result (None = raw)."""
        return self._encoding

    @property
    def link_mbps(self) -> float:
        return self._link_bps * 8 / 1e6

    # -- sender ---------------------------------------------------------------------------------
    def watch(self, frames: Iterator[wire.Frame]) -> Iterator[wire.Frame]:
        """Pass `frames` through to the stream, pacing (test hook) and timing each send."""
        try:
            for frame in frames:
                start = time.perf_counter()
                if self._throttle is not None:
                    self._throttle.pace(sum(len(t.data) + len(t.encoding.params)
                                            for t in frame.tensors))
                yield frame  # gRPC asks for the next frame once this one is sent
                self.record(frame, time.perf_counter() - start)
        finally:
            close = getattr(frames, "close", None)
            if close:
                close()

    def record(self, frame: wire.Frame, seconds: float) -> None:
        sent = _measure(frame, seconds)
        with self._lock:
            self._window.append(sent)
            now = self._clock()
            if len(self._window) < MIN_FRAMES or now - self._window_start < WINDOW_S:
                return
            window, self._window, self._window_start = self._window, [], now
            busy = sum(s.seconds for s in window)
            self._link_bps = sum(s.nbytes for s in window) / max(busy, 1e-9)
            if self.adaptive:
                self._decide(window, now)

    # -- the controller -------------------------------------------------------------------------
    def predicted_items_per_s(self, bits: int, window: list[_Sent]) -> float:
        """Items/s the measured link would carry if the window's frames were sent at `bits`."""
        items = sum(s.items for s in window)
        per_item = (sum(s.float_elems for s in window) * bits / 8
                    + sum(s.fixed_bytes for s in window)) / items
        if bits < 16:  # uniform: float32 (scale, shift) per sample and tensor
            per_item += 8 * sum(s.float_tensors for s in window) / len(window)
        return self._link_bps / max(per_item, 1e-9)

    def _decide(self, window: list[_Sent], now: float) -> None:
        rate = {b: self.predicted_items_per_s(b, window) for b in self.ladder}
        current = self.bits
        new = current
        if rate[current] < self.target:
            fits = [b for b in self.ladder if rate[b] >= self.target * (1 + DOWN_MARGIN)]
            new = fits[0] if fits else self.ladder[-1]
        else:
            wider = [b for b in self.ladder if b > current
                     and rate[b] >= self.target * (1 + UP_MARGIN)
                     and now >= self._hold_until.get(b, 0.0)]
            if wider:
                new = wider[0]
        if new == current:
            return
        if new < current:  # leaving `current` (and anything wider) for a while
            raised = self._raised_at.get(current)
            undo = raised is not None and now - raised <= 2 * WINDOW_S + 0.5
            hold = min(self._hold.get(current, HOLD_S / 2) * 2, MAX_HOLD_S) if undo else HOLD_S
            for b in self.ladder:
                if b > new:
                    self._hold[b] = hold
                    self._hold_until[b] = now + hold
        else:
            self._raised_at[new] = now
        log.info("stage %s output %d -> %d bits: link %.2f Mbps carries %.1f items/s at %d "
                 "bits, %.1f at %d (target %.1f)", self.stage, current, new, self.link_mbps,
                 rate[current], current, rate[new], new, self.target,
                 extra={"event": "output_bits", "bits": new, "link_mbps": self.link_mbps})
        self.bits = new
        self._encoding = self._encoding_for(new)

    def _encoding_for(self, bits: int) -> pb.Encoding | None:
        if bits == self._raw_bits:
            return None
        if bits == 16:
            return pb.Encoding(kind=pb.Encoding.FLOAT16)
        return pb.Encoding(kind=pb.Encoding.UNIFORM, bits=bits,
                           clip=self._clip if bits <= CLIP_MAX_BITS else "")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
