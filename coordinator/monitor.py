"""Pipeline monitoring from the coordinator: rates out of successive Status polls.

Each stage's `StageStatus` carries counters since its assignment (items, compute seconds, bytes,
energy). Polling them over time gives the seed's three rates per stage: *instant* (the last two
polls), *window* (the last N polls) and *global* (since the assignment). The bottleneck is the
stage with a standing input queue furthest downstream (work piles up in front of it), or, when
nothing queues, the one with the highest compute time per item.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.coordinator.tables import render
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import StageInfo
from pipeedge.security import Security


@dataclass(frozen=True)
class Poll:
    t: float                 # coordinator's monotonic clock when the reply came, seconds
    status: pb.StageStatus


@dataclass(frozen=True)
class Rates:
    """Items per second: last two polls, the window, since the assignment (None = unknown)."""

    instant: float | None = None
    window: float | None = None
    global_: float | None = None


@dataclass(frozen=True)
class StageRow:
    name: str
    address: str
    state: str                              # "up", "empty" (no assignment) or "DOWN"
    layers: str
    status: pb.StageStatus | None = None
    items_per_s: Rates = Rates()
    compute_s_per_item: float | None = None  # over the window, else since the assignment
    busy: float | None = None                # share of wall time spent computing (window)
    mb_out_per_s: float | None = None        # payload sent downstream, MB/s (window)
    mean_q_in: float = 0.0                   # input queue depth averaged over the window
    mean_q_out: float = 0.0
    energy_j: float | None = None            # joules over the window (or since assignment)
    items: int = 0                           # items over the same span as energy_j

    @property
    def joules_per_item(self) -> float | None:
        if self.energy_j is None or self.items <= 0:
            return None
        return self.energy_j / self.items


@dataclass(frozen=True)
class Snapshot:
    rows: list[StageRow]
    bottleneck: tuple[int, str] | None      # (row index, why) or None
    throughput: Rates                        # the last stage's rates: what leaves the pipeline
    energy_j: float | None                   # whole pipeline, each machine counted once
    energy_items: int
    energy_note: str = ""
    polls: int = 1

    @property
    def joules_per_item(self) -> float | None:
        if self.energy_j is None or self.energy_items <= 0:
            return None
        return self.energy_j / self.energy_items


class StageTracker:
    """The last `window + 1` polls of one stage, reset when its assignment changes."""

    def __init__(self, window: int) -> None:
        self.polls: deque[Poll] = deque(maxlen=max(window, 1) + 1)

    def add(self, poll: Poll) -> None:
        if self.polls and self.polls[-1].status.assignment_id != poll.status.assignment_id:
            self.polls.clear()  # new assignment: its counters started again from zero
        self.polls.append(poll)

    def row(self, info: StageInfo) -> StageRow:
        last = self.polls[-1]
        st = last.status
        layers = f"{st.assignment.first_layer}-{st.assignment.last_layer}"
        first = self.polls[0]
        q_in = [p.status.queue_in_depth for p in self.polls]
        q_out = [p.status.queue_out_depth for p in self.polls]
        rates = Rates(
            instant=_rate(self.polls[-2], last) if len(self.polls) >= 2 else None,
            window=_rate(first, last) if len(self.polls) >= 2 else None,
            global_=(st.items_processed / st.assigned_seconds if st.assigned_seconds > 0
                     else None))
        span_items = st.items_processed - first.status.items_processed
        span_compute = st.compute_seconds - first.status.compute_seconds
        dt = last.t - first.t
        per_item: float | None
        if len(self.polls) >= 2 and span_items > 0:
            per_item = span_compute / span_items
        else:
            per_item = st.compute_seconds / st.items_processed if st.items_processed else None
        busy = span_compute / dt if len(self.polls) >= 2 and dt > 0 else None
        mb_out = ((st.bytes_sent - first.status.bytes_sent) / 1e6 / dt
                  if len(self.polls) >= 2 and dt > 0 else None)
        energy_j, items = None, 0
        if st.HasField("energy_joules"):
            if len(self.polls) >= 2 and first.status.HasField("energy_joules"):
                energy_j = st.energy_joules - first.status.energy_joules
                items = span_items
            else:
                energy_j, items = st.energy_joules, st.items_processed
        return StageRow(info.name, info.address, "up", layers, st, rates, per_item, busy, mb_out,
                        sum(q_in) / len(q_in), sum(q_out) / len(q_out), energy_j, items)


def _rate(a: Poll, b: Poll) -> float | None:
    dt = b.t - a.t
    return (b.status.items_processed - a.status.items_processed) / dt if dt > 0 else None


def find_bottleneck(rows: list[StageRow]) -> tuple[int, str] | None:
    """(index, reason) of the stage limiting throughput, or None before any traffic.

    A standing input queue (mean depth >= 1 over the window) means the stage cannot keep up with
    what arrives; upstream stages queue too (backpressure), so the one furthest downstream is the
    bottleneck: "compute" if its output queue is clear, "send" if that is backed up as well (its
    link or the next hop's intake). Without queues, the highest compute time per item wins.
    """
    active = [i for i, r in enumerate(rows) if r.state == "up" and r.compute_s_per_item]
    if not active:
        return None
    queued = [i for i in active if rows[i].mean_q_in >= 1.0]
    if queued:
        i = queued[-1]
        return i, "queue, send" if rows[i].mean_q_out >= 1.0 else "queue, compute"
    # every active row has a compute time (filtered above)
    return max(active, key=lambda i: rows[i].compute_s_per_item or 0.0), "compute"


def machine_of(address: str) -> str:
    """The host part of host:port; stages with the same one share a machine (and its RAPL)."""
    return address.rsplit(":", 1)[0]


class PipelineMonitor:
    """Polls every stage of a pipeline; `poll()` returns a `Snapshot` of rates and energy."""

    def __init__(self, pipeline: Pipeline, *, window: int = 10, timeout_s: float = 3.0,
                 security=None) -> None:
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        # security None: the process default (PIPEEDGE_TLS_* variables, else plaintext)
        self.controls = [StageControl(s.name, s.address, security=security)
                         for s in pipeline.stages]
        self.trackers = [StageTracker(window) for _ in pipeline.stages]
        self.polls = 0

    def close(self) -> None:
        for c in self.controls:
            c.close()

    def __enter__(self) -> PipelineMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def poll(self) -> Snapshot:
        rows: list[StageRow] = []
        for info, ctl, tracker in zip(self.pipeline.stages, self.controls, self.trackers):
            try:
                st = ctl.status(timeout_s=self.timeout_s)
            except grpc.RpcError:
                tracker.polls.clear()
                rows.append(StageRow(info.name, info.address, "DOWN",
                                     f"{info.first_layer}-{info.last_layer}"))
                continue
            if not st.assigned:
                tracker.polls.clear()
                rows.append(StageRow(info.name, info.address, "empty", "-", st))
                continue
            tracker.add(Poll(time.monotonic(), st))
            rows.append(tracker.row(info))
        self.polls += 1
        return summarize(rows, self.polls)


def summarize(rows: list[StageRow], polls: int = 1) -> Snapshot:
    """Pipeline-wide view of the stage rows: throughput, bottleneck, energy per item."""
    up = [r for r in rows if r.state == "up"]
    throughput = up[-1].items_per_s if up and up[-1] is rows[-1] else Rates()
    energy_j, note = None, ""
    missing = [r.name for r in up if r.energy_j is None]
    if not up:
        note = "no stage is assigned"
    elif missing:
        note = f"no readable RAPL or EnergyMon on {', '.join(missing)}"
    else:
        per_machine: dict[str, float] = {}
        for r in up:  # RAPL covers the machine: count each machine once
            assert r.energy_j is not None  # none is missing
            per_machine.setdefault(machine_of(r.address), r.energy_j)
        energy_j = sum(per_machine.values())
    return Snapshot(rows, find_bottleneck(rows), throughput, energy_j,
                    up[-1].items if up else 0, note, polls)


# -- rendering ----------------------------------------------------------------------------------
HEADERS = ["host", "address", "state", "layers", "q_in", "q_out", "in_flight", "items", "errors",
           "inst/s", "window/s", "global/s", "ms/item", "busy", "MB/s out", "wire", "J/item", ""]


def render_snapshot(snap: Snapshot) -> str:
    """The status table, then one line for the whole pipeline."""
    table: list[list[object]] = []
    for i, r in enumerate(snap.rows):
        st = r.status
        if r.state != "up":
            table.append([r.name, r.address, r.state, r.layers, *["-"] * 13, ""])
            continue
        assert st is not None  # an up stage answered Status
        mark = ""
        if snap.bottleneck and snap.bottleneck[0] == i:
            mark = f"<- bottleneck ({snap.bottleneck[1]})"
        table.append([
            r.name, r.address, r.state, r.layers, st.queue_in_depth, st.queue_out_depth,
            st.in_flight, st.items_processed, st.errors, _num(r.items_per_s.instant),
            _num(r.items_per_s.window), _num(r.items_per_s.global_),
            f"{r.compute_s_per_item * 1e3:.3g}" if r.compute_s_per_item is not None else "-",
            f"{r.busy:.0%}" if r.busy is not None else "-", _num(r.mb_out_per_s, 2),
            _wire(st), _joules(r), mark])
    lines = [render(HEADERS, table), "", _summary(snap)]
    return "\n".join(lines)


def _summary(snap: Snapshot) -> str:
    t = snap.throughput
    parts = [f"pipeline: {_num(t.window if t.window is not None else t.global_)} items/s"
             + (" (window)" if t.window is not None else " (since assignment)")]
    if snap.bottleneck:
        r = snap.rows[snap.bottleneck[0]]
        ms = r.compute_s_per_item * 1e3 if r.compute_s_per_item else 0.0
        parts.append(f"bottleneck {r.name} ({snap.bottleneck[1]}; {ms:.3g} ms/item compute)")
    jpi = snap.joules_per_item
    if snap.energy_j is None:
        parts.append(f"energy not available: {snap.energy_note}" if snap.energy_note
                     else "energy not available")
    else:
        parts.append(f"energy {jpi:.3g} J/item" if jpi is not None else "energy -")
    return "; ".join(parts)


def _wire(st: pb.StageStatus) -> str:
    """What the stage sends downstream: bits per float element (adaptive compression changes it)
    and the link throughput it measured, e.g. "8b @ 4.7Mbps"; "-" on the last stage."""
    if not st.output_bits:
        return "-"
    return f"{st.output_bits}b" + (f" @ {st.link_mbps:.3g}Mbps" if st.link_mbps > 0 else "")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _joules(r: StageRow) -> str:
    if r.energy_j is None:
        return "n/a"
    jpi = r.joules_per_item
    return "-" if jpi is None else f"{jpi:.3g}"


# -- energy over an interval (bench) ------------------------------------------------------------
@dataclass
class EnergyProbe:
    """Pipeline energy between `start()` and `stop()`, each machine counted once; None when any
    stage cannot measure energy."""

    pipeline: Pipeline
    timeout_s: float = 3.0
    source: str = ""
    note: str = ""
    security: Security | None = None  # None: the process default
    _start: dict[str, float] | None = field(default=None, repr=False)

    def _read(self) -> dict[str, float] | None:
        per_machine: dict[str, float] = {}
        sources = set()
        for s in self.pipeline.stages:
            ctl = StageControl(s.name, s.address, security=self.security)
            try:
                st = ctl.status(timeout_s=self.timeout_s)
            except grpc.RpcError:
                self.note = f"{s.name} did not answer Status"
                return None
            finally:
                ctl.close()
            if not st.HasField("energy_joules"):
                self.note = f"no readable RAPL or EnergyMon on {s.name}"
                return None
            # Keyed by machine; the first stage seen there stands for it.
            per_machine.setdefault(machine_of(s.address), st.energy_joules)
            sources.add(st.energy_source)
        self.source = ", ".join(sorted(sources))
        return per_machine

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end.keys() != self._start.keys():
            return None
        return sum(end[m] - self._start[m] for m in end)
