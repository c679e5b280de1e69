"""Autoregressive sessions on one stage: the KV cache of this stage's layers, per session.

A generation is a *session* (``Frame.session_id``, chosen by the client). Its frames flow through
the pipeline like any other, in order: ``step`` 0 is the prefill (the prompt), each later step
appends the token(s) the client sampled. Every stage keeps, per session, the keys/values of its
own attention layers; nothing else is stored. A session ends

- when a frame of that session arrives with **no tensors** (the client's end-of-session frame;
  each stage frees the session and forwards the empty frame, so it reaches every stage in order
  behind the session's last step), or
- after ``idle_timeout_s`` without a frame (client gone or cancelled without ending it), or
- when the assignment is released.

Steps must come in order. A step equal to the last one completed is treated as a *retry*: the
cache is cut back to where that step began and the step is recomputed, so a client may resend a
step that failed further down the pipeline. Any other out-of-order step is refused.

Limits come from the environment of the stage process: ``PIPEEDGE_SESSION_IDLE_S`` (default 300),
``PIPEEDGE_MAX_SESSIONS`` (default 64) and ``PIPEEDGE_SESSION_MAX_MB`` (KV-cache megabytes over all
sessions, default 0 = unlimited).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import torch

from pipeedge.models import DecoderShard, KVCache

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 300.0
DEFAULT_MAX_SESSIONS = 64


class SessionError(Exception):
    """A session frame that cannot be served; ``code`` becomes the frame's error code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    session_id: str
    cache: KVCache
    last_step: int = -1          # last step completed; -1 until the prefill succeeds
    length_before: int = 0       # cache length when the last (or current) step began
    last_used: float = field(default_factory=time.monotonic)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, os.environ[name], default)
        return default


class SessionStore:
    """The live sessions of one assignment. Steps run on the compute thread; a reaper thread
    drops idle sessions. Dict updates are locked; a session's cache is only touched by compute."""

    def __init__(self, new_cache: Callable[[], KVCache], *, stage: str = "",
                 idle_timeout_s: float | None = None, max_sessions: int | None = None,
                 max_bytes: int | None = None) -> None:
        self._new_cache = new_cache
        self.stage = stage or "this stage"
        self.idle_timeout_s = (idle_timeout_s if idle_timeout_s is not None
                               else _env_float("PIPEEDGE_SESSION_IDLE_S", DEFAULT_IDLE_S))
        self.max_sessions = int(max_sessions if max_sessions is not None
                                else _env_float("PIPEEDGE_MAX_SESSIONS", DEFAULT_MAX_SESSIONS))
        self.max_bytes = int(max_bytes if max_bytes is not None
                             else _env_float("PIPEEDGE_SESSION_MAX_MB", 0) * 1e6)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.ended = 0       # sessions ended by their client
        self.expired = 0     # sessions dropped for idleness
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper",
                                        daemon=True)
        self._reaper.start()

    # -- the compute path ---------------------------------------------------------------------
    def run(self, tensors: Mapping[str, torch.Tensor], session_id: str, step: int,
            compute: Callable[[Mapping[str, torch.Tensor], KVCache], dict[str, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
        """Serve one frame of a session: end it (no tensors) or run ``compute`` on its cache."""
        if not tensors:
            self.end(session_id)
            return {}
        session = self._begin(session_id, step)
        try:
            outputs = compute(tensors, session.cache)
        except ValueError as exc:  # batch changed, context full, ...: the request's fault
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"session {session_id!r} step {step} at stage {self.stage}: {exc}"
                               ) from None
        session.last_step = step
        session.last_used = time.monotonic()
        return outputs

    def _begin(self, session_id: str, step: int) -> Session:
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if step == 0:
                if session is None:
                    self._check_room()
                else:  # a retried prefill (or a reused id) starts over
                    session.cache.clear()
                session = Session(session_id, self._new_cache(), last_used=now)
                self._sessions[session_id] = session
                return session
            if session is None:
                raise SessionError(
                    grpc.StatusCode.NOT_FOUND,
                    f"session {session_id!r} is unknown to stage {self.stage} (ended, idle for "
                    f"over {self.idle_timeout_s:.0f}s, or the stage was reassigned); start it "
                    "again from step 0")
            session.last_used = now
        if step == session.last_step + 1:
            session.length_before = session.cache.length
        elif step == session.last_step and step > 0:  # retry of the last step: recompute it
            session.cache.truncate(session.length_before)
        else:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"session {session_id!r} got step {step} at stage {self.stage} but its last "
                f"completed step is {session.last_step}; send steps in order (0 = prefill)")
        return session

    def _check_room(self) -> None:
        if len(self._sessions) >= self.max_sessions:
            raise SessionError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stage {self.stage} already holds {len(self._sessions)} sessions (limit "
                f"{self.max_sessions}); end finished sessions or raise PIPEEDGE_MAX_SESSIONS")
        if self.max_bytes and self._bytes_locked() >= self.max_bytes:
            raise SessionError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stage {self.stage}'s KV caches hold {self._bytes_locked() / 1e6:.1f} MB (limit "
                f"{self.max_bytes / 1e6:.1f} MB); end sessions or raise PIPEEDGE_SESSION_MAX_MB")

    # -- ending -------------------------------------------------------------------------------
    def end(self, session_id: str) -> bool:
        """Free a session's cache; False if it was not here (already ended or expired)."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.cache.clear()
        self.ended += 1
        return True

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Drop sessions idle for longer than the timeout; returns their ids."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [sid for sid, s in self._sessions.items()
                    if now - s.last_used > self.idle_timeout_s]
            dropped = [self._sessions.pop(sid) for sid in idle]
        for s in dropped:
            s.cache.clear()
        self.expired += len(dropped)
        if dropped:
            log.info("stage %s dropped %d idle session(s)", self.stage, len(dropped))
        return idle

    def _reap_loop(self) -> None:
        period = min(max(self.idle_timeout_s / 4, 0.05), 5.0)
        while not self._closed.wait(period):
            self.expire_idle()

    def close(self) -> None:
        """Stop the reaper and free every session (the assignment is going away)."""
        self._closed.set()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.cache.clear()

    # -- inspection ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def _bytes_locked(self) -> int:
        return sum(s.cache.nbytes for s in self._sessions.values())

    @property
    def cache_bytes(self) -> int:
        """KV-cache bytes allocated over all live sessions."""
        with self._lock:
            return self._bytes_locked()

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)


def profile_decode(model_name: str, first_layer: int, last_layer: int, *,
                   config_json: str | None = None, context_len: int = 128, batch: int = 1,
                   repeats: int = 5, dtype: torch.dtype = torch.float32,
                   device: str = "cpu") -> dict[str, float]:
    """Time a decoder shard the way generation uses it: one prefill of ``context_len`` tokens,
    then single-token decode steps against that cache (seeded random weights).

    Returns ``prefill_s`` (one prefill), ``step_s`` (median decode step), ``kv_bytes`` (cache
    of one session after the prefill, capacity included). The Profile rpc reports the same
    per-layer step cost (``decode_context``) for the scheduler's decode-step plans.
    """
    from pipeedge import models

    info = models.model_info(model_name, config_json)
    if not info.is_decoder:
        raise ValueError(f"{model_name} is not a decoder model")
    shard = models.build_shard(info, first_layer, last_layer,
                               models.load_shard_state(info, first_layer, last_layer, 0),
                               dtype=dtype).to(device)
    assert isinstance(shard, models.DecoderShard)  # is_decoder, checked above
    with torch.inference_mode():
        shard(_decode_inputs(shard, batch, context_len, dtype, device))  # warm-up
    timing = time_decode_step(shard, context_len=context_len, batch=batch, repeats=repeats,
                              dtype=dtype, device=device)
    return {"prefill_s": timing.prefill_s, "step_s": timing.step_s,
            "kv_bytes": float(timing.kv_bytes)}


@dataclass(frozen=True)
class DecodeTiming:
    prefill_s: float                  # one prefill of the context (untimed warm-up excluded)
    step_s: float                     # one single-token step against the cached context
    kv_bytes: int                     # cache of the session after the prefill
    outputs: dict[str, torch.Tensor]  # what one step sends on (sizes a cut after the shard)


def time_decode_step(shard: DecoderShard, *, context_len: int, batch: int = 1, repeats: int = 5,
                     warmup: int = 1, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> DecodeTiming:
    """Prefill a fresh cache of ``shard`` (a DecoderShard) with ``context_len`` random tokens,
    then time single-token steps, each against exactly that context: ``warmup`` untimed, then
    ``seconds_per_call`` (the median of ``repeats``, or the rate over seconds under a CPU
    quota, where one step's time is luck)."""
    from pipeedge.stage_server.call_timing import seconds_per_call

    with torch.inference_mode():
        cache = shard.new_cache()
        start = time.perf_counter()
        shard(_decode_inputs(shard, batch, context_len, dtype, device), cache=cache)
        prefill = time.perf_counter() - start
        kv_bytes = cache.nbytes
        base = cache.length
        last: list[dict[str, torch.Tensor]] = []

        def step() -> None:
            cache.truncate(base)  # every step sees the same context length
            last[:] = [shard(_decode_inputs(shard, batch, 1, dtype, device), cache=cache)]

        for _ in range(warmup):
            step()
        step_s = seconds_per_call(step, repeats)
        cache.clear()
    return DecodeTiming(prefill, step_s, kv_bytes, last[0])


def _decode_inputs(shard: DecoderShard, batch: int, tokens: int, dtype: torch.dtype,
                   device: str | torch.device) -> dict[str, torch.Tensor]:
    """Random inputs of a decoder shard: token ids for the first, hidden states otherwise."""
    if shard.is_first:
        return {"input_ids": torch.randint(3, 200, (batch, tokens), device=device)}
    return {s.name: torch.randn(batch, tokens, s.shape[2], device=device, dtype=dtype)
            for s in shard.input_spec()}
