"""The live dashboard: ``/dashboard`` (a static page) and ``/dashboard/state.json`` (its data).

The page (``apps/static/``: plain HTML, JS and CSS, no build step, nothing loaded from
elsewhere) polls ``state.json`` about once a second. A poll asks every stage for its Status
through `monitor.PipelineMonitor`, so rates, busy share and the bottleneck are exactly what
``pipeedge-coord status --watch`` prints; this module only adds what a page needs on top: the
stages' assignment details, a short throughput history, and events seen between polls (a stage
down or back, a re-plan, the coordinator's problem line). Polls are made on demand (nobody
watching costs nothing) and shared by every open page (at most one per `min_interval_s`).

Served by ``serve-http`` (beside the API) and by ``pipeedge-coord serve --dashboard-port``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.monitor import PipelineMonitor, StageRow
from pipeedge.pipeline_file import Pipeline
from pipeedge.security import for_pipeline

STATIC_DIR = Path(__file__).parent / "static"
HISTORY_POINTS = 300     # throughput samples kept per pipeline (5 minutes at one poll a second)
EVENTS_KEPT = 50
# The page and its scripts come only from this server (no CDN, no inline code).
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"


class FileSource:
    """A pipeline file as `deploy` wrote it (``serve`` rewrites it after every re-plan)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def current(self) -> tuple[Pipeline | None, int, list[str], str]:
        """(pipeline, epoch, hosts the coordinator counts down, why it does not serve)."""
        try:
            p = Pipeline.load(self.path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return None, 0, [], f"cannot read {self.path}: {exc}"
        return p, p.version, [], ""


class PlaneSource:
    """The control plane of ``pipeedge-coord serve`` itself: also its down hosts and problem."""

    def __init__(self, plane) -> None:
        self.plane = plane

    def current(self) -> tuple[Pipeline | None, int, list[str], str]:
        plane = self.plane
        return plane.pipeline, plane.version, sorted(plane.down), plane.problem


def _encoding(a: pb.AssignRequest, st: pb.StageStatus) -> str:
    if not a.next_hop:
        return "-"  # the last stage sends nothing downstream
    kind = pb.Encoding.Kind.Name(a.output_encoding.kind).lower()
    text = f"uniform {a.output_encoding.bits}b" if kind == "uniform" else kind
    if a.target_items_per_s:
        text = f"adaptive (now {st.output_bits}b)"
    return text


def _stage_json(row: StageRow, info) -> dict:
    out = {"name": row.name, "address": row.address, "state": row.state, "layers": row.layers,
           "backend": info.backend, "device": info.device_type}
    st = row.status
    if row.state != "up" or st is None:
        return out
    a = st.assignment
    weights = a.weights_dtype or a.dtype
    out.update(
        backend=pb.Backend.Name(a.backend or pb.TORCH).lower(), device=st.device or a.device,
        dtype=pb.DType.Name(a.dtype or pb.FLOAT32).lower(),
        weights_dtype=pb.DType.Name(weights or pb.FLOAT32).lower(),
        encoding=_encoding(a, st), threads=st.threads, parameter_bytes=st.parameter_bytes,
        queue_in=st.queue_in_depth, queue_out=st.queue_out_depth, in_flight=st.in_flight,
        items=st.items_processed, errors=st.errors,
        items_per_s=row.items_per_s.instant, items_per_s_window=row.items_per_s.window,
        ms_per_item=None if row.compute_s_per_item is None else row.compute_s_per_item * 1e3,
        busy=row.busy, mb_out_per_s=row.mb_out_per_s,
        link_mbps=st.link_mbps or None, output_bits=st.output_bits or None,
        energy_j_per_item=row.joules_per_item)
    return out


class PipelineBoard:
    """One pipeline's view: a monitor over its current stages, history and events."""

    def __init__(self, source, *, window: int = 5, status_timeout_s: float = 1.0) -> None:
        self.source = source
        self.window = window
        self.status_timeout_s = status_timeout_s
        self.monitor: PipelineMonitor | None = None
        self.key: tuple | None = None
        self.history: deque[tuple[float, float]] = deque(maxlen=HISTORY_POINTS)
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.version: int | None = None
        self.states: dict[str, str] = {}
        self.down: set[str] = set()
        self.problem = ""

    def close(self) -> None:
        if self.monitor:
            self.monitor.close()

    def _event(self, kind: str, text: str) -> None:
        self.events.append({"t": time.time(), "kind": kind, "text": text})

    def _follow(self, pipeline: Pipeline, version: int, down: list[str], problem: str) -> None:
        """Swap the monitor when the stages change; record what changed as events."""
        key = tuple((s.name, s.address, s.first_layer, s.last_layer) for s in pipeline.stages)
        if self.version is not None and version != self.version:
            chain = ", ".join(f"{s.name} {s.first_layer}-{s.last_layer}" for s in pipeline.stages)
            self._event("replan", f"re-plan: epoch {self.version} -> {version} ({chain})")
        self.version = version
        for name in sorted(set(down) - self.down):
            self._event("down", f"the coordinator counts {name} as down")
        for name in sorted(self.down - set(down)):
            self._event("up", f"the coordinator counts {name} as up again")
        self.down = set(down)
        if problem and problem != self.problem:
            self._event("problem", problem)
        self.problem = problem
        if key != self.key:
            self.close()
            self.monitor = PipelineMonitor(pipeline, window=self.window,
                                           timeout_s=self.status_timeout_s,
                                           security=for_pipeline(pipeline, "client"))
            self.key = key

    def poll(self) -> dict:
        pipeline, version, down, problem = self.source.current()
        if pipeline is None:
            return {"model": None, "problem": problem, "stages": [],
                    "events": list(self.events), "history": list(self.history)}
        self._follow(pipeline, version, down, problem)
        assert self.monitor is not None  # _follow opened one
        snap = self.monitor.poll()
        stages = [_stage_json(r, info) for r, info in zip(snap.rows, pipeline.stages)]
        for s in stages:
            before = self.states.get(s["name"])
            if before is not None and before != s["state"]:
                if s["state"] == "DOWN":
                    self._event("down", f"stage {s['name']} ({s['address']}) does not answer")
                else:
                    self._event("up", f"stage {s['name']} is {s['state']} again")
            self.states[s["name"]] = s["state"]
        if snap.bottleneck:
            i, why = snap.bottleneck
            stages[i]["bottleneck"] = why
        t = snap.throughput
        rate = t.instant if t.instant is not None else t.window
        now = time.time()
        if rate is not None:
            self.history.append((now, rate))
        return {"model": pipeline.model, "version": version, "problem": problem,
                "down": sorted(down), "microbatch": pipeline.microbatch,
                "items_per_s": rate, "items_per_s_window": t.window,
                "stages": stages, "events": list(self.events), "history": list(self.history)}


class Dashboard:
    """Every served pipeline's board; `state()` is what ``state.json`` answers."""

    def __init__(self, sources, *, min_interval_s: float = 0.5, window: int = 5) -> None:
        self.boards = [PipelineBoard(s, window=window) for s in sources]
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last: tuple[float, dict] | None = None

    @classmethod
    def of_files(cls, paths, **kwargs) -> Dashboard:
        return cls([FileSource(p) for p in paths], **kwargs)

    def state(self) -> dict:
        with self._lock:  # one poll at a time; pages polling together share it
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.min_interval_s:
                self._last = (now, {"time": time.time(),
                                    "pipelines": [b.poll() for b in self.boards]})
            return self._last[1]

    def close(self) -> None:
        for b in self.boards:
            b.close()


def routes(dashboard: Dashboard, authorize=None) -> list:
    """``/`` (redirect), ``/dashboard``, its static files and ``/dashboard/state.json``;
    `authorize(request)` (raising) guards the data, the page itself holds none."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "dashboard.html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def state(request: Request) -> Response:
        if authorize is not None:
            authorize(request)
        return JSONResponse(await run_in_threadpool(dashboard.state),
                            headers={"Cache-Control": "no-store"})

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard")

    return [Route("/", home, methods=["GET"]),
            Route("/dashboard", page, methods=["GET"]),
            Route("/dashboard/state.json", state, methods=["GET"]),
            Mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard")]


def make_app(dashboard: Dashboard, *, token: str | None = None):
    """The dashboard alone (``pipeedge-coord serve --dashboard-port``), with the same bearer
    token check and error shape as ``serve-http``."""
    from starlette.applications import Starlette

    from pipeedge.apps.openai_http import bearer_check, error_handlers

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            dashboard.close()

    return Starlette(routes=routes(dashboard, bearer_check(token)), lifespan=lifespan,
                     exception_handlers=error_handlers())
