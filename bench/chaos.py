"""Chaos test (issue 13): many concurrent clients against `pipeedge-coord serve` while a seeded
fault schedule breaks stages and coordinators; every answer is checked against the unsplit model.

Two pipelines run side by side on local processes: an encoder (tiny ViT, 3 stages) and a decoder
(tiny GPT-2, 3 stages), each watched by its own `pipeedge-coord serve --check-interval 0.2`
subprocess. Clients, all concurrent, each in its own thread (async ones as tasks of one event
loop): `PipelineClient.infer`, `PipelineClient.infer_many` (a plain and a slow input generator,
20 ms per item), `AsyncPipelineClient`, and `TextGenerator` greedy generation. Clients open a new
SDK object from time to time (and after every error), as short-lived processes would.

Fault kinds (seeded random order, every kind at least once):
  stage_kill          kill -9 of a stage, restarted on the same port after 0.5-8 s
  stage_fast_restart  a replacement starts on the same port (SO_REUSEPORT) and the old process
                      is killed at once: back, empty, before two health checks can fail
  stage_stop          SIGSTOP of a stage for 0.3-8 s, then SIGCONT
  coord_kill          kill -9 of a coordinator, restarted on the same port after 0-4 s
  redeploy            SIGHUP to a coordinator (a redeploy under load); a coordinator that
                      dies of it is restarted like a supervisor would, and that is recorded
  idle_streams        64 Forward streams opened with raw gRPC on an entry stage, left idle
  watch_flood         32 GetPipeline(newer_than=2**62) calls parked at a coordinator

Per request: correct (within --tolerance of the unsplit model; generation: the same greedy tokens),
wrong (a result that differs: the worst bug), lost (neither returned nor raised by the end of the
drain), duplicated (delivered twice), a typed error (`pipeedge.errors.PipelineError`, counted by
class) or an untyped error (anything else). The longest stall is the longest time any client had
work outstanding without any progress. One summary line goes to stdout; progress to stderr.

Exit status 0 only if wrong = lost = duplicated = untyped = 0 and the longest stall is under
--stall-bound (default 25 s: above the recovery of any single fault here, below the 30 s request
deadline, so a request that only ends in DeadlineExceededError after a freeze fails the run).

Usage:
    python bench/chaos.py --clients 72 --duration 600 --plot build/chaos/timeline.png
    python bench/chaos.py --clients 24 --duration 90 --drain-timeout 30 --seed 13
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODER = "pipeedge/tiny-vit"
DECODER = "pipeedge/tiny-gpt2"
PARTITION = "1,4,5,8,9,12"  # 3 stages of 4 sub-layers (both tiny models have 12)
FAULT_KINDS = ("stage_kill", "stage_fast_restart", "stage_stop", "coord_kill", "redeploy",
               "idle_streams", "watch_flood")
# Stage faults are the ones that race re-plans against traffic: drawn most often.
FAULT_WEIGHTS = {"stage_kill": 3, "stage_fast_restart": 2, "stage_stop": 2, "coord_kill": 1,
                 "redeploy": 1.5, "idle_streams": 1, "watch_flood": 1}
CLIENT_KINDS = ("infer", "infer_many", "infer_many_slow", "async", "generate")
CLIENT_SHARES = (0.30, 0.20, 0.15, 0.15, 0.20)
OUTCOMES = ("correct", "wrong", "lost", "duplicated", "typed", "untyped")
# A client whose round failed waits this long before the next (no hot loop of instant errors).
ERROR_BACKOFF_S = 0.2
# Faults started this long before a failure are listed as what preceded it.
BLAME_WINDOW_S = 8.0

log = logging.getLogger("chaos")

# Lets a replacement stage bind the port its predecessor still holds (stage_fast_restart):
# imported by every child Python through PYTHONPATH; inert without PIPEEDGE_CHAOS_REUSEPORT.
_SHIM = '''import os
if os.environ.get("PIPEEDGE_CHAOS_REUSEPORT") == "1":
    try:
        from pipeedge import channels as _c
        _c.SERVER_OPTIONS = [(k, 1 if k == "grpc.so_reuseport" else v)
                             for k, v in _c.SERVER_OPTIONS]
    except Exception:
        pass
'''


# -- bookkeeping ----------------------------------------------------------------------------------
@dataclass
class _Req:
    rid: int
    client: str
    kind: str
    started: float
    counted: bool  # False: client set-up, a request only if it fails


@dataclass
class _ClientClock:
    outstanding: int = 0
    mark: float = 0.0  # last progress, or when work became outstanding


class Ledger:
    """Every request from begin to exactly one outcome; stalls per client. Thread-safe."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._lock = threading.Lock()
        self._next = 0
        self.open: dict[int, _Req] = {}
        self.outcomes: Counter = Counter()
        self.by_kind: dict[str, Counter] = defaultdict(Counter)
        self.typed: Counter = Counter()
        self.untyped: Counter = Counter()
        self.samples: dict[str, list] = defaultdict(list)  # "outcome/client kind" -> samples
        self.stalls: list[dict] = []  # every stall over `stall_note_s`, for the report
        self.stall_note_s = 10.0
        self.per_second: dict[str, Counter] = defaultdict(Counter)
        self.clocks: dict[str, _ClientClock] = defaultdict(_ClientClock)
        self.stall = (0.0, "", 0.0)  # (seconds, client, when it ended, s since t0)
        self.closed = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    def begin(self, client: str, kind: str, counted: bool = True) -> int:
        with self._lock:
            self._next += 1
            now = self.now()
            clock = self.clocks[client]
            if clock.outstanding == 0:
                clock.mark = now
            clock.outstanding += 1
            self.open[self._next] = _Req(self._next, client, kind, now, counted)
            return self._next

    def progress(self, client: str) -> None:
        with self._lock:
            self._tick(self.clocks[client], client, self.now())

    def _tick(self, clock: _ClientClock, client: str, now: float) -> None:
        if clock.outstanding:
            self._stalled(client, now - clock.mark, now)
        clock.mark = now

    def _stalled(self, client: str, seconds: float, now: float) -> None:
        if seconds > self.stall[0]:
            self.stall = (seconds, client, now)
        if seconds > self.stall_note_s and len(self.stalls) < 500:
            self.stalls.append({"client": client, "seconds": round(seconds, 2),
                                "from_s": round(now - seconds, 2), "to_s": round(now, 2)})

    def finish(self, rid: int, outcome: str, detail: str = "", exc: BaseException | None = None,
               ) -> None:
        with self._lock:
            req = self.open.pop(rid, None)
            if req is None or self.closed:
                return  # already settled (or declared lost at the end)
            now = self.now()
            clock = self.clocks[req.client]
            self._tick(clock, req.client, now)
            clock.outstanding -= 1
            if not req.counted and outcome == "correct":
                return
            self._count(req, outcome, now, detail, exc)

    def extra(self, client: str, kind: str, outcome: str, detail: str) -> None:
        """An outcome with no request of its own (a result delivered twice)."""
        with self._lock:
            if not self.closed:
                self._count(_Req(0, client, kind, self.now(), True), outcome, self.now(), detail)

    def _count(self, req: _Req, outcome: str, now: float, detail: str,
               exc: BaseException | None = None) -> None:
        self.outcomes[outcome] += 1
        self.by_kind[req.kind][outcome] += 1
        self.per_second[outcome][int(now)] += 1
        if outcome in ("typed", "untyped"):
            (self.typed if outcome == "typed" else self.untyped)[type(exc).__name__] += 1
            detail = detail or f"{type(exc).__name__}: {exc}"[:300]
        key = f"{outcome}/{req.kind}"
        if outcome != "correct" and len(self.samples[key]) < 40:
            self.samples[key].append({"outcome": outcome, "t": round(now, 2),
                                      "client": req.client, "kind": req.kind,
                                      "detail": detail[:300],
                                      "age_s": round(now - req.started, 2)})

    def close(self) -> None:
        """What is still open now is lost; the clients holding it stalled until now."""
        with self._lock:
            now = self.now()
            for req in list(self.open.values()):
                clock = self.clocks[req.client]
                if clock.outstanding:
                    self._stalled(req.client, now - clock.mark, now)
                    clock.outstanding = 0
                if req.counted:
                    self._count(req, "lost", now, "no result nor error by the end of the drain")
            self.open.clear()
            self.closed = True

    def snapshot(self) -> dict:
        with self._lock:
            return {"outcomes": dict(self.outcomes), "open": len(self.open),
                    "stall": self.stall[0]}


def classify_error(exc: BaseException) -> str:
    from pipeedge.errors import PipelineError

    return "typed" if isinstance(exc, PipelineError) else "untyped"


# -- references (the unsplit model, in this process) ----------------------------------------------
class EncoderReference:
    def __init__(self, model: str, pool: int, batch: int) -> None:
        import torch

        from pipeedge import models

        info = models.model_info(model)
        full = models.build_shard(info, 1, info.num_layers,
                                  models.load_shard_state(info, 1, info.num_layers, 0))
        self.inputs = [models.example_inputs(info, batch, seed=i) for i in range(pool)]
        with torch.inference_mode():
            self.expected = [full(x)["logits"].clone() for x in self.inputs]

    def check(self, index: int, out, tolerance: float) -> str:
        """'' if `out` is the right answer to input `index`, else what is wrong."""
        try:
            got = out["logits"]
        except Exception:  # noqa: BLE001 - anything but a dict with logits is a wrong answer
            return f"no logits in the result ({type(out).__name__})"
        want = self.expected[index]
        if tuple(got.shape) != tuple(want.shape):
            return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
        diff = float((got.float() - want).abs().max())
        if not diff <= tolerance:
            return f"max |diff| {diff:.3g} > {tolerance:g} (input {index})"
        return ""


class DecoderReference:
    """Greedy continuations of seeded prompts with the unsplit model (prefill, then one token a
    step, as the pipeline runs), and the logits of every step (random tiny weights often repeat
    one token, so the tokens alone would miss a wrong layer range). Prompts whose top-2 logits
    come closer than `margin` at any step are dropped, so float noise between split and unsplit
    can never flip a token."""

    def __init__(self, model: str, pool: int, new_tokens: int, seed: int,
                 margin: float = 1e-3) -> None:
        import torch

        from pipeedge import models

        info = models.model_info(model)
        full = models.build_shard(info, 1, info.num_layers,
                                  models.load_shard_state(info, 1, info.num_layers, 0))
        rng = random.Random(seed)
        vocab = int(info.config["vocab_size"])
        self.prompts: list[list[int]] = []
        self.expected: list[list[int]] = []
        self.logits: list[list] = []
        tries = 0
        while len(self.prompts) < pool and tries < pool * 20:
            tries += 1
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 12))]
            cache = full.new_cache()
            ids = torch.tensor([prompt])
            tokens, steps, close = [], [], False
            with torch.inference_mode():
                for _ in range(new_tokens):
                    logits = full({"input_ids": ids}, cache)["logits"][0]
                    top = torch.topk(logits, 2).values
                    if float(top[0] - top[1]) < margin:
                        close = True
                        break
                    token = int(torch.argmax(logits))
                    tokens.append(token)
                    steps.append(logits.clone())
                    ids = torch.tensor([[token]])
            if not close:
                self.prompts.append(prompt)
                self.expected.append(tokens)
                self.logits.append(steps)
        if len(self.prompts) < pool:
            raise RuntimeError(f"only {len(self.prompts)} of {pool} prompts have clear greedy "
                               "steps; lower --new-tokens")

    def check_step(self, index: int, step: int, logits, tolerance: float) -> str:
        """'' if `logits` are step `step` of prompt `index`'s generation, else what differs."""
        want = self.logits[index][step]
        if logits is None or logits.numel() != want.numel():
            return f"step {step}: logits {None if logits is None else tuple(logits.shape)}"
        diff = float((logits.float().reshape(-1) - want).abs().max())
        return "" if diff <= tolerance else f"step {step}: max |diff| {diff:.3g}"


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pipeline:
    """One served pipeline: its stages (LocalCluster), its coordinator subprocess."""

    name: str
    model: str
    cluster: object
    hosts: Path
    coord_port: int
    coord: subprocess.Popen | None = None
    coord_starts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # stage processes
    coord_lock: threading.Lock = field(default_factory=threading.Lock)  # the coordinator
    busy_stage: bool = False   # one stage fault at a time per pipeline
    busy_coord: bool = False   # one coordinator fault at a time
    events: list = field(default_factory=list)

    @property
    def coordinator(self) -> str:
        return f"127.0.0.1:{self.coord_port}"

    # stages
    def restart_stage(self, index: int, *, kill_old: bool) -> None:
        """Start stage `index` again on its port; with kill_old, the old process is killed only
        once the new one listens (SO_REUSEPORT), i.e. a restart no health check can see."""
        with self.lock:
            old = self.cluster.stages[index]
            log_path = old.log_path
            if log_path.exists():
                log_path.rename(log_path.with_suffix(f".log.{int(time.time() * 1000)}"))
            new = self.cluster.start_stage(old.name, port=old.port)
            if kill_old and old.process.poll() is None:
                old.process.kill()
                old.process.wait(timeout=30)
            self.cluster.stages[index] = new

    def signal_stage(self, index: int, sig: int) -> None:
        with self.lock:
            proc = self.cluster.stages[index].process
            if proc.poll() is None:
                proc.send_signal(sig)
                if sig == signal.SIGKILL:
                    proc.wait(timeout=30)

    # coordinator
    def start_coordinator(self, timeout_s: float = 120.0) -> float:
        """Start `serve` on the pipeline's port and wait until it answers; seconds taken."""
        start = time.monotonic()
        log_path = self.cluster.workdir / "coordinator.log"
        for attempt in range(5):
            self.coord_starts += 1
            with open(log_path, "a") as out:
                out.write(f"\n=== chaos: coordinator start {self.coord_starts} ===\n")
                out.flush()
                self.coord = subprocess.Popen(
                    [sys.executable, "-m", "pipeedge.coordinator.cli", "serve", str(self.hosts),
                     "--host", "127.0.0.1", "--port", str(self.coord_port),
                     "--check-interval", "0.2"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            while time.monotonic() - start < timeout_s:
                if self.coord.poll() is not None:
                    break
                if self.coordinator_answers():
                    return time.monotonic() - start
                time.sleep(0.2)
            if self.coord.poll() is None:
                raise RuntimeError(f"coordinator of {self.name} did not answer within "
                                   f"{timeout_s:.0f}s; see {log_path}")
            self.events.append({"t": time.time(), "event": "coordinator exited at start",
                                "rc": self.coord.returncode})
            time.sleep(1.0 + attempt)  # like a supervisor's backoff
        raise RuntimeError(f"coordinator of {self.name} failed to start 5 times; see {log_path}")

    def coordinator_answers(self) -> bool:
        info = self.pipeline_info(1.0)
        return info is not None and info.version > 0

    def pipeline_info(self, timeout_s: float):
        import grpc

        from pipeedge._proto import coordinator_pb2 as cpb
        from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc

        with grpc.insecure_channel(self.coordinator) as ch:
            try:
                return cpb_grpc.CoordinatorStub(ch).GetPipeline(cpb.GetPipelineRequest(),
                                                                timeout=timeout_s)
            except grpc.RpcError:
                return None

    def entry(self) -> str:
        info = self.pipeline_info(2.0)
        if info is not None and info.entry:
            return info.entry
        return self.cluster.stages[0].address

    def stop(self) -> None:
        for s in self.cluster.stages:
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGCONT)
        if self.coord and self.coord.poll() is None:
            self.coord.terminate()
            try:
                self.coord.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.coord.kill()
                self.coord.wait()
        self.cluster.stop()


def start_pipeline(name: str, model: str, microbatch: int, workdir: Path) -> Pipeline:
    from pipeedge.coordinator.local_cluster import LocalCluster

    wd = workdir / name
    shutil.rmtree(wd, ignore_errors=True)  # no coordinator state or pipeline file of a past run
    wd.mkdir(parents=True)
    cluster = LocalCluster(3, threads=1, workdir=wd).__enter__()
    hosts = cluster.hosts_file(model, partition=PARTITION, weights="random:0",
                               microbatch=microbatch)
    return Pipeline(name, model, cluster, hosts, free_port())


# -- faults ---------------------------------------------------------------------------------------
class Faults:
    """Seeded fault schedule: each fault runs in its own thread and undoes itself."""

    def __init__(self, pipelines: list[Pipeline], ledger: Ledger, rng: random.Random,
                 args) -> None:
        self.pipelines = pipelines
        self.ledger = ledger
        self.rng = rng
        self.args = args
        self.log: list[dict] = []
        self.active: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def run(self, duration: float, stop: threading.Event) -> None:
        end = time.monotonic() + duration
        kinds_allowed = self.args.faults
        if not kinds_allowed:  # a control run: load only
            stop.wait(duration)
            return
        pending = list(kinds_allowed)
        self.rng.shuffle(pending)  # every kind once first, then at random
        while time.monotonic() < end and not stop.is_set():
            kinds = pending or self.rng.choices(
                kinds_allowed, weights=[FAULT_WEIGHTS[k] for k in kinds_allowed])
            for kind in kinds:
                started = self._start(kind)
                if started:
                    if kind in pending:
                        pending.remove(kind)
                    break
            time.sleep(self.rng.uniform(self.args.fault_gap_min, self.args.fault_gap_max))
        for t in self._threads:
            t.join()

    def _start(self, kind: str) -> bool:
        rng = self.rng
        candidates = list(self.pipelines)
        rng.shuffle(candidates)
        for p in candidates:
            with self._lock:
                if kind.startswith("stage_"):
                    if p.busy_stage:
                        continue
                    p.busy_stage = True
                    target = rng.randrange(len(p.cluster.stages))
                elif kind in ("coord_kill", "redeploy"):
                    if p.busy_coord:
                        continue
                    p.busy_coord = True
                    target = -1
                else:
                    target = -1
            params = self._params(kind)
            record = {"kind": kind, "pipeline": p.name, "stage": target,
                      "t_start": round(self.ledger.now(), 2), "t_end": None, **params}
            with self._lock:
                self.log.append(record)
                self.active[id(record)] = record
            t = threading.Thread(target=self._run_one, args=(kind, p, target, params, record),
                                 name=f"fault-{kind}", daemon=True)
            self._threads.append(t)
            t.start()
            return True
        return False

    def _params(self, kind: str) -> dict:
        r = self.rng
        if kind == "stage_kill":
            # a third of the restarts come within a second: the port is back between checks
            return {"restart_after_s": round(r.choice([r.uniform(0.0, 1.0), r.uniform(1.0, 8.0),
                                                       r.uniform(1.0, 8.0)]), 2)}
        if kind == "stage_stop":
            return {"stopped_s": round(r.uniform(0.3, 8.0), 2)}
        if kind == "coord_kill":
            return {"restart_after_s": round(r.uniform(0.0, 4.0), 2)}
        if kind == "idle_streams":
            return {"streams": self.args.idle_streams, "held_s": round(r.uniform(5.0, 15.0), 2)}
        if kind == "watch_flood":
            return {"calls": self.args.watch_flood, "held_s": round(r.uniform(5.0, 15.0), 2)}
        return {}

    def _run_one(self, kind: str, p: Pipeline, target: int, params: dict, record: dict) -> None:
        try:
            getattr(self, "_" + kind)(p, target, params, record)
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported, not hidden
            self.errors.append(f"{kind} on {p.name}: {exc!r}")
            record["error"] = repr(exc)
            log.error("fault %s on %s failed: %s", kind, p.name, traceback.format_exc())
        finally:
            record["t_end"] = round(self.ledger.now(), 2)
            with self._lock:
                self.active.pop(id(record), None)
                if kind.startswith("stage_"):
                    p.busy_stage = False
                elif kind in ("coord_kill", "redeploy"):
                    p.busy_coord = False

    def _stage_kill(self, p: Pipeline, i: int, params: dict, record: dict) -> None:
        p.signal_stage(i, signal.SIGKILL)
        time.sleep(params["restart_after_s"])
        p.restart_stage(i, kill_old=False)

    def _stage_fast_restart(self, p: Pipeline, i: int, params: dict, record: dict) -> None:
        p.restart_stage(i, kill_old=True)
        record["t_start"] = round(self.ledger.now(), 2)  # the crash is the moment of the kill

    def _stage_stop(self, p: Pipeline, i: int, params: dict, record: dict) -> None:
        p.signal_stage(i, signal.SIGSTOP)
        try:
            time.sleep(params["stopped_s"])
        finally:
            p.signal_stage(i, signal.SIGCONT)

    def _coord_kill(self, p: Pipeline, _: int, params: dict, record: dict) -> None:
        with p.coord_lock:
            p.coord.kill()
            p.coord.wait(timeout=30)
        time.sleep(params["restart_after_s"])
        with p.coord_lock:
            record["coordinator_start_s"] = round(p.start_coordinator(), 2)

    def _redeploy(self, p: Pipeline, _: int, params: dict, record: dict) -> None:
        with p.coord_lock:
            p.coord.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        with p.coord_lock:
            if p.coord.poll() is not None:  # no SIGHUP handling: it died; a supervisor restarts
                record["coordinator_died"] = p.coord.returncode
                record["coordinator_start_s"] = round(p.start_coordinator(), 2)

    def _idle_streams(self, p: Pipeline, _: int, params: dict, record: dict) -> None:
        import grpc

        from pipeedge._proto import stage_pb2_grpc as pb_grpc

        entry = p.entry()
        record["address"] = entry
        release = threading.Event()

        def idle():
            release.wait()
            return
            yield  # a request iterator that sends nothing

        chans = [grpc.insecure_channel(entry) for _ in range(4)]
        calls = []
        try:
            for n in range(params["streams"]):
                calls.append(pb_grpc.StageStub(chans[n % 4]).Forward(idle()))
            release.wait(params["held_s"])
        finally:
            release.set()
            for c in calls:
                c.cancel()
            for ch in chans:
                ch.close()

    def _watch_flood(self, p: Pipeline, _: int, params: dict, record: dict) -> None:
        import grpc

        from pipeedge._proto import coordinator_pb2 as cpb
        from pipeedge._proto import coordinator_pb2_grpc as cpb_grpc

        with grpc.insecure_channel(p.coordinator) as ch:
            stub = cpb_grpc.CoordinatorStub(ch)
            calls = [stub.GetPipeline.future(cpb.GetPipelineRequest(newer_than=2**62),
                                             timeout=params["held_s"])
                     for _ in range(params["calls"])]
            time.sleep(params["held_s"])
            for c in calls:
                c.cancel()

    def recent(self, now: float, window: float = BLAME_WINDOW_S,
               pipeline: str | None = None) -> list[str]:
        """Faults (of `pipeline`, default any) active at `now` or ended within `window`
        before it."""
        with self._lock:
            out = []
            for f in self.log:
                if pipeline and f["pipeline"] != pipeline:
                    continue
                if f["t_start"] <= now and (f["t_end"] is None or f["t_end"] >= now - window):
                    out.append(f"{f['kind']}({f['pipeline']}"
                               f"{'/stage' + str(f['stage']) if f['stage'] >= 0 else ''})")
            return out


# -- clients --------------------------------------------------------------------------------------
class Clients:
    """Client threads (and one event loop of async clients), each doing rounds until stopped."""

    def __init__(self, args, ledger: Ledger, enc: Pipeline, dec: Pipeline,
                 enc_ref: EncoderReference, dec_ref: DecoderReference) -> None:
        self.args = args
        self.ledger = ledger
        self.enc, self.dec = enc, dec
        self.enc_ref, self.dec_ref = enc_ref, dec_ref
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.crashed: list[str] = []  # harness bugs inside a client loop
        from pipeedge.client import AsyncPipelineClient

        self.async_mode = ("coordinator" if "coordinator" in
                           inspect.signature(AsyncPipelineClient).parameters
                           else "pipeline_file")

    def start(self, counts: dict[str, int]) -> None:
        n = 0
        async_names = []
        for kind in CLIENT_KINDS:
            for _ in range(counts.get(kind, 0)):
                name = f"{kind}-{n}"
                n += 1
                rng = random.Random(f"{self.args.seed}/{name}")
                if kind == "async":
                    async_names.append((name, rng))
                    continue
                target = self._generate if kind == "generate" else self._sync
                t = threading.Thread(target=self._guard, args=(target, name, kind, rng),
                                     name=name, daemon=True)
                self.threads.append(t)
        if async_names:
            t = threading.Thread(target=self._async_loop, args=(async_names,), name="async",
                                 daemon=True)
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def join(self, timeout_s: float) -> list[str]:
        """Stop new rounds; wait for the current ones. Returns the clients still busy."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _guard(self, target, name: str, kind: str, rng: random.Random) -> None:
        try:
            target(name, kind, rng)
        except Exception:  # noqa: BLE001
            self.crashed.append(f"{name}: {traceback.format_exc()}")
            log.error("client %s crashed (harness bug): %s", name, traceback.format_exc())

    def _reopen(self, name: str, kind: str, rng: random.Random, current, factory):
        """A new SDK object now and then before a round (always after an error), as short-lived
        processes would open one; its set-up counts as a request only if it fails. None if it
        failed."""
        if current is not None and rng.random() >= self.args.reconnect:
            return current
        if current is not None:
            current.close()
        rid = self.ledger.begin(name, kind, counted=False)
        try:
            opened = factory()
        except Exception as exc:  # noqa: BLE001
            self.ledger.finish(rid, classify_error(exc), f"client set-up: {exc!r}", exc)
            time.sleep(1.0)
            return None
        self.ledger.finish(rid, "correct")
        return opened

    # sync encoder clients
    def _sync(self, name: str, kind: str, rng: random.Random) -> None:
        from pipeedge.client import PipelineClient

        client = None
        while not self.stop.is_set():
            client = self._reopen(name, kind, rng, client, lambda: PipelineClient(
                coordinator=self.enc.coordinator, timeout_s=self.args.request_timeout))
            if client is None:
                continue
            try:
                if kind == "infer":
                    ok = self._one(client, name, kind, rng)
                else:
                    ok = self._stream(client, name, kind, rng)
            except Exception:
                client.close()
                raise
            if not ok:
                client.close()
                client = None
                time.sleep(ERROR_BACKOFF_S)
        if client is not None:
            client.close()

    def _one(self, client, name: str, kind: str, rng: random.Random) -> bool:
        index = rng.randrange(len(self.enc_ref.inputs))
        rid = self.ledger.begin(name, kind)
        try:
            out = client.infer(self.enc_ref.inputs[index])
        except Exception as exc:  # noqa: BLE001
            self.ledger.finish(rid, classify_error(exc), exc=exc)
            return False
        self._settle(rid, index, out)
        return True

    def _settle(self, rid: int, index: int, out) -> None:
        problem = self.enc_ref.check(index, out, self.args.tolerance)
        self.ledger.finish(rid, "wrong" if problem else "correct", problem)

    def _stream(self, client, name: str, kind: str, rng: random.Random) -> bool:
        count = rng.randint(5, 40)
        slow = kind == "infer_many_slow"
        pulled: list[tuple[int, int]] = []  # (request, input index) in the order the SDK pulled
        pool = len(self.enc_ref.inputs)
        indices = [rng.randrange(pool) for _ in range(count)]
        gate = threading.Lock()
        ended = []  # set once the stream's outcome is settled: no pull may open a request then

        def feed():
            for index in indices:
                if self.stop.is_set():
                    return
                if slow:
                    time.sleep(0.02)
                with gate:
                    if ended:
                        return
                    pulled.append((self.ledger.begin(name, kind), index))
                yield self.enc_ref.inputs[index]

        def settle_rest() -> list[tuple[int, int]]:
            with gate:
                ended.append(True)
                return pulled[delivered:]

        delivered = 0
        try:
            for out in client.infer_many(feed(), window=self.args.window):
                if delivered >= len(pulled):
                    self.ledger.extra(name, kind, "duplicated",
                                      f"result {delivered + 1} of a stream of {len(pulled)}")
                else:
                    self._settle(*pulled[delivered], out)
                delivered += 1
        except Exception as exc:  # noqa: BLE001 - the error ends the stream: it is the answer
            outcome = classify_error(exc)    # of every request not delivered before it
            for rid, _ in settle_rest():
                self.ledger.finish(rid, outcome, f"stream ended by {exc!r}"[:300], exc)
            return False
        for rid, _ in settle_rest():
            self.ledger.finish(rid, "lost", f"the stream ended after {delivered} of "
                                            f"{len(pulled)} results")
        return True

    # generation
    def _generate(self, name: str, kind: str, rng: random.Random) -> None:
        from pipeedge.client import TextGenerator

        gen = None
        ref = self.dec_ref
        while not self.stop.is_set():
            gen = self._reopen(name, kind, rng, gen, lambda: TextGenerator(
                coordinator=self.dec.coordinator, model=self.dec.model,
                timeout_s=self.args.request_timeout))
            if gen is None:
                continue
            picks = [rng.randrange(len(ref.prompts)) for _ in range(2)]
            rids = [self.ledger.begin(name, kind) for _ in picks]
            got: list[list[int]] = [[] for _ in picks]
            off: list[str] = ["" for _ in picks]  # the first step whose logits differ
            settled = [False] * len(picks)
            want_len = self.args.new_tokens
            try:
                for ev in gen.generate_many([ref.prompts[i] for i in picks], concurrency=2,
                                            max_new_tokens=want_len, stop_token_ids=(),
                                            return_logits=True):
                    self.ledger.progress(name)
                    k = ev.index
                    if not 0 <= k < len(picks):
                        self.ledger.extra(name, kind, "wrong", f"event for prompt index {k}")
                        continue
                    if settled[k]:
                        self.ledger.extra(name, kind, "duplicated",
                                          f"token after the end of generation {k}")
                        continue
                    step = len(got[k])
                    got[k].append(ev.token_id)
                    if not off[k] and step < want_len:
                        off[k] = ref.check_step(picks[k], step, ev.logits, self.args.tolerance)
                    if len(got[k]) == want_len or ev.finish_reason is not None:
                        settled[k] = True
                        want = ref.expected[picks[k]][:want_len]
                        if got[k] == want and not off[k]:
                            self.ledger.finish(rids[k], "correct")
                        else:
                            self.ledger.finish(rids[k], "wrong", f"tokens {got[k]} vs {want}; "
                                               f"{off[k]} (finish {ev.finish_reason})")
            except Exception as exc:  # noqa: BLE001
                for k, rid in enumerate(rids):
                    if not settled[k]:
                        self.ledger.finish(rid, classify_error(exc),
                                           f"generation ended by {exc!r}"[:300], exc)
                gen.close()
                gen = None
                time.sleep(ERROR_BACKOFF_S)
                continue
            for k, rid in enumerate(rids):
                if not settled[k]:
                    self.ledger.finish(rid, "lost", f"generation ended after {len(got[k])} "
                                                    f"of {want_len} tokens")
        if gen is not None:
            gen.close()

    # async encoder clients
    def _async_loop(self, clients: list[tuple[str, random.Random]]) -> None:
        async def main():
            await asyncio.gather(*(self._async_client(n, r) for n, r in clients))

        try:
            asyncio.run(main())
        except Exception:  # noqa: BLE001
            self.crashed.append(f"async loop: {traceback.format_exc()}")

    async def _async_client(self, name: str, rng: random.Random) -> None:
        from pipeedge.client import AsyncPipelineClient

        kind = "async"
        client = None
        try:
            while not self.stop.is_set():
                if client is None or rng.random() < self.args.reconnect:
                    if client is not None:
                        await client.close()
                    client = None
                    rid = self.ledger.begin(name, kind, counted=False)
                    try:
                        if self.async_mode == "coordinator":
                            client = AsyncPipelineClient(coordinator=self.enc.coordinator,
                                                         timeout_s=self.args.request_timeout)
                        else:  # no failover in the SDK yet: the file `serve` rewrites
                            client = AsyncPipelineClient(
                                pipeline_file=self.enc.cluster.workdir / "pipeline.json",
                                timeout_s=self.args.request_timeout)
                    except Exception as exc:  # noqa: BLE001
                        self.ledger.finish(rid, classify_error(exc), f"client set-up: {exc!r}",
                                           exc)
                        await asyncio.sleep(1.0)
                        continue
                    self.ledger.finish(rid, "correct")
                indices = [rng.randrange(len(self.enc_ref.inputs))
                           for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 8))]
                rids = [self.ledger.begin(name, kind) for _ in indices]
                try:
                    if len(indices) == 1:
                        outs = [await client.infer(self.enc_ref.inputs[indices[0]])]
                    else:
                        outs = await client.infer_many([self.enc_ref.inputs[i] for i in indices],
                                                       window=self.args.window)
                except Exception as exc:  # noqa: BLE001
                    for rid in rids:
                        self.ledger.finish(rid, classify_error(exc), exc=exc)
                    await client.close()
                    client = None
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                outs = list(outs)
                if len(outs) > len(indices):
                    self.ledger.extra(name, kind, "duplicated",
                                      f"{len(outs)} results for {len(indices)} inputs")
                for k, (rid, index) in enumerate(zip(rids, indices)):
                    if k < len(outs):
                        self._settle(rid, index, outs[k])
                    else:
                        self.ledger.finish(rid, "lost", f"{len(outs)} results for "
                                                        f"{len(indices)} inputs")
        finally:
            if client is not None:
                await client.close()


def _pipeline_of(client_kind: str) -> str:
    return "dec" if client_kind == "generate" else "enc"


def client_counts(total: int) -> dict[str, int]:
    counts = {k: max(1, int(total * s)) for k, s in zip(CLIENT_KINDS, CLIENT_SHARES)}
    counts["infer"] += total - sum(counts.values())
    return counts


# -- report ---------------------------------------------------------------------------------------
def summary_line(res: dict) -> str:
    o = res["outcomes"]
    typed = ", ".join(f"{k} {v}" for k, v in sorted(res["typed_errors"].items())) or "-"
    untyped = ", ".join(f"{k} {v}" for k, v in sorted(res["untyped_errors"].items())) or "-"
    return (f"chaos seed {res['seed']}: {res['requests']} requests, {o['correct']} correct, "
            f"{o['wrong']} wrong, {o['lost']} lost, {o['duplicated']} duplicated, "
            f"{o['typed']} typed errors ({typed}), {o['untyped']} untyped errors ({untyped}), "
            f"longest stall {res['longest_stall_s']:.1f}s (bound {res['stall_bound_s']:g}s); "
            f"{res['clients']} clients, {len(res['faults'])} faults over "
            f"{res['fault_seconds']:.0f}s: {'PASS' if res['passed'] else 'FAIL'}")


def plot_timeline(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = int(res["wall_s"]) + 1
    fig, (ax, axf) = plt.subplots(2, 1, figsize=(14, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    colors = {"correct": "tab:green", "typed": "tab:orange", "wrong": "tab:red",
              "untyped": "tab:purple", "lost": "black", "duplicated": "tab:brown"}
    for outcome, series in res["per_second"].items():
        ys = [series.get(str(s), 0) for s in range(end)]
        if any(ys):
            ax.plot(range(end), ys, label=outcome, color=colors.get(outcome), lw=1)
    ax.set_ylabel("requests/s completed")
    ax.set_title(f"chaos seed {res['seed']}: {res['clients']} clients; "
                 f"{res['outcomes']['wrong']} wrong, {res['outcomes']['lost']} lost, "
                 f"longest stall {res['longest_stall_s']:.1f}s")
    ax.legend(loc="upper right")
    for i, kind in enumerate(FAULT_KINDS):
        for f in res["faults"]:
            if f["kind"] == kind:
                t_end = f["t_end"] if f["t_end"] is not None else res["wall_s"]
                axf.broken_barh([(f["t_start"], max(0.3, t_end - f["t_start"]))], (i - 0.4, 0.8),
                                color="tab:blue" if f["pipeline"] == "enc" else "tab:olive")
    axf.set_yticks(range(len(FAULT_KINDS)), FAULT_KINDS)
    axf.set_xlabel("seconds (blue: encoder pipeline, olive: decoder pipeline)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--clients", type=int, default=72, help="concurrent clients (all kinds)")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before faults")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds of load after the last fault ended, before the drain")
    ap.add_argument("--drain-timeout", type=float, default=120.0,
                    help="seconds the clients get to finish; what is still open is lost")
    ap.add_argument("--stall-bound", type=float, default=25.0,
                    help="fail if a client had work outstanding this long with no progress")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="SDK timeout_s")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| of logits")
    ap.add_argument("--window", type=int, default=4, help="infer_many window")
    ap.add_argument("--new-tokens", type=int, default=12, help="tokens per generation")
    ap.add_argument("--reconnect", type=float, default=0.2,
                    help="chance a client opens a new SDK object before a round")
    ap.add_argument("--fault-gap-min", type=float, default=2.0)
    ap.add_argument("--fault-gap-max", type=float, default=7.0)
    ap.add_argument("--idle-streams", type=int, default=64)
    ap.add_argument("--watch-flood", type=int, default=32)
    ap.add_argument("--faults", default="all",
                    help="comma-separated fault kinds (default all: " + ",".join(FAULT_KINDS)
                    + "); 'none' for a control run with load only")
    ap.add_argument("--progress-every", type=float, default=5.0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep stage/coordinator logs here (default: a temporary directory)")
    ap.add_argument("--json", type=Path, default=Path("build/chaos/result.json"))
    ap.add_argument("--plot", type=Path, default=None, help="PNG timeline (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.faults == "all":
        args.faults = list(FAULT_KINDS)
    elif args.faults == "none":
        args.faults = []
    else:
        args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
        unknown = set(args.faults) - set(FAULT_KINDS)
        if unknown:
            ap.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    return args


def _progress(ledger: Ledger, faults: Faults, clients_stop: threading.Event, phase: list,
              every: float, done: threading.Event) -> None:
    last = 0
    while not done.wait(every):
        snap = ledger.snapshot()
        o = snap["outcomes"]
        total = sum(o.values())
        active = ", ".join(faults.recent(ledger.now(), 0.0)) or "-"
        print(f"[{ledger.now():6.0f}s {phase[0]}] {total} done (+{total - last}), "
              f"correct {o.get('correct', 0)}, wrong {o.get('wrong', 0)}, "
              f"lost {o.get('lost', 0)}, dup {o.get('duplicated', 0)}, "
              f"typed {o.get('typed', 0)}, untyped {o.get('untyped', 0)}, open {snap['open']}, "
              f"longest stall {snap['stall']:.1f}s; faults: {active}", file=sys.stderr,
              flush=True)
        last = total


def run(args) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pipeedge-chaos-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    shim = workdir / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SHIM)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PIPEEDGE_CHAOS_REUSEPORT"] = "1"

    t_setup = time.monotonic()
    print(f"chaos: seed {args.seed}, {args.clients} clients, {args.duration:.0f}s of faults; "
          f"starting 2 x 3 stages and 2 coordinators in {workdir}", file=sys.stderr, flush=True)
    pipelines: list[Pipeline] = []
    holder: dict = {}

    def start(name, model, mb):
        try:
            holder[name] = start_pipeline(name, model, mb, workdir)
        except Exception as exc:  # noqa: BLE001
            holder[name + "_error"] = exc

    starters = [threading.Thread(target=start, args=a)
                for a in (("enc", ENCODER, 2), ("dec", DECODER, 1))]
    for t in starters:
        t.start()
    enc_ref = EncoderReference(ENCODER, 64, 2)
    dec_ref = DecoderReference(DECODER, 32, args.new_tokens, args.seed)
    for t in starters:
        t.join()
    pipelines = [holder[k] for k in ("enc", "dec") if k in holder]
    faults = None
    try:
        for k in ("enc", "dec"):
            if k + "_error" in holder:
                raise holder[k + "_error"]
        enc, dec = pipelines
        for p in pipelines:
            p.start_coordinator()
        print(f"chaos: set up in {time.monotonic() - t_setup:.0f}s (coordinators "
              f"{enc.coordinator}, {dec.coordinator})", file=sys.stderr, flush=True)

        ledger = Ledger(time.monotonic())
        faults = Faults(pipelines, ledger, rng, args)
        clients = Clients(args, ledger, enc, dec, enc_ref, dec_ref)
        counts = client_counts(args.clients)
        phase = ["warmup"]
        done = threading.Event()
        threading.Thread(target=_progress, args=(ledger, faults, clients.stop, phase,
                                                 args.progress_every, done), daemon=True).start()
        clients.start(counts)
        time.sleep(args.warmup)
        phase[0] = "faults"
        t_faults = ledger.now()
        faults.run(args.duration, threading.Event())  # returns once every fault is undone
        fault_seconds = ledger.now() - t_faults
        phase[0] = "settle"
        time.sleep(args.settle)
        phase[0] = "drain"
        busy = clients.join(args.drain_timeout)
        ledger.close()
        done.set()
        wall = ledger.now()
    finally:
        for p in pipelines:
            try:
                p.stop()
            except Exception:
                log.exception("stopping %s", p.name)

    o = {k: ledger.outcomes.get(k, 0) for k in OUTCOMES}
    stall_s, stall_client, stall_at = ledger.stall
    failures = []
    for key, samples in sorted(ledger.samples.items()):
        if key.split("/")[0] in ("wrong", "lost", "duplicated", "untyped"):
            for s in samples:
                where = _pipeline_of(s["kind"])
                failures.append({**s, "preceded_by": sorted(set(
                    faults.recent(s["t"] - s["age_s"], pipeline=where)
                    + faults.recent(s["t"], pipeline=where)))})
    for s in ledger.stalls:
        if s["seconds"] >= args.stall_bound:
            failures.append({"outcome": "stall", "t": s["to_s"], **s, "preceded_by": faults.recent(
                s["from_s"], pipeline=_pipeline_of(s["client"].rsplit("-", 1)[0]))})
    blame: Counter = Counter()
    for f in failures:
        for kind in {x.split("(")[0] for x in f["preceded_by"]} or {"(no fault)"}:
            blame[f"{f['outcome']} after {kind}"] += 1
    harness_errors = clients.crashed + faults.errors
    passed = (o["wrong"] == o["lost"] == o["duplicated"] == o["untyped"] == 0
              and stall_s < args.stall_bound and not harness_errors)
    res = {
        "seed": args.seed, "clients": args.clients, "client_counts": counts,
        "async_client_mode": clients.async_mode,
        "requests": sum(o.values()) - o["duplicated"], "outcomes": o,
        "typed_errors": dict(ledger.typed), "untyped_errors": dict(ledger.untyped),
        "by_client_kind": {k: dict(v) for k, v in ledger.by_kind.items()},
        "longest_stall_s": round(stall_s, 2),
        "longest_stall": {"client": stall_client, "ended_at_s": round(stall_at, 2),
                          "preceded_by": faults.recent(
                              stall_at - stall_s,
                              pipeline=_pipeline_of(stall_client.rsplit("-", 1)[0]))},
        "stall_bound_s": args.stall_bound, "passed": passed,
        "fault_seconds": round(fault_seconds, 1), "wall_s": round(wall, 1),
        "fault_kinds_run": dict(Counter(f["kind"] for f in faults.log)),
        "faults": faults.log, "coordinator_events": {p.name: p.events for p in pipelines},
        "failures": failures, "failures_by_fault": dict(blame),
        "clients_still_busy_after_drain": busy, "harness_errors": harness_errors,
        "per_second": {k: {str(s): n for s, n in sorted(v.items())}
                       for k, v in ledger.per_second.items()},
        "samples": dict(ledger.samples), "stalls_over_10s": ledger.stalls,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if tmp is not None:
        tmp.cleanup()
    return res


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pipeedge").setLevel(logging.ERROR)  # the SDK's failover notes
    args = parse_args(argv)
    res = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    if args.plot:
        try:
            plot_timeline(res, args.plot)
        except ImportError:
            print("chaos: matplotlib is missing (pip install -e '.[bench]'); no plot",
                  file=sys.stderr)
    for line, n in sorted(res["failures_by_fault"].items(), key=lambda kv: -kv[1]):
        print(f"chaos: {n:5d} x {line}", file=sys.stderr)
    if res["harness_errors"]:
        print("chaos: HARNESS ERRORS:\n" + "\n".join(res["harness_errors"]), file=sys.stderr)
    print(summary_line(res), flush=True)
    # Client threads still stuck in the SDK must not keep the process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if res["passed"] else 1)


if __name__ == "__main__":
    main()
