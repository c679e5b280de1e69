"""Text generation over a deployed decoder pipeline: tokens stream back as they are produced.

Every generation is a *session*: the prompt goes down the pipeline as step 0 (prefill), then one
sampled token per step; each stage keeps the KV cache of its own layers for the session, and the
last stage returns the logits of the last position only. Sampling (greedy, temperature, top-k,
top-p, seed) and stop conditions run here, on the client. A finished, failed or abandoned
generation sends an end-of-session frame (a frame with the session id and no tensors), which
frees the session on every stage; stages also drop sessions left idle.

Several sessions in flight keep every stage busy: while stage 2 computes session A's step, stage 1
already works on session B's. ``generate_many`` drives up to ``concurrency`` sessions over one
multiplexed stream; ``generate`` is one session. Both are safe to call from several threads at once
(the HTTP server does).

Failover: with ``coordinator=`` (or the pipeline file that ``pipeedge-coord serve`` rewrites), a
step that fails because a stage died or hung waits for the re-planned pipeline and goes on there:
each open session starts over on the new stages with one prefill of its prompt plus the tokens
generated so far (the old stages' KV caches are gone), so the token stream continues where it was
and no token is produced twice.

Example:
    >>> gen = TextGenerator(pipeline_file="pipeline.json")            # doctest: +SKIP
    >>> for ev in gen.generate("Once upon a time", max_new_tokens=32):
    ...     print(ev.text, end="", flush=True)
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import torch

from pipeedge import channels, codec, models, wire
from pipeedge.client.discovery import make_source
from pipeedge.client.frames import result_tensors, rpc_error
from pipeedge.client.retry import BUSY_CODES, PipelineView, RetryPolicy, stamp
from pipeedge.errors import DeadlineExceededError, PipelineError, StageUnavailableError
from pipeedge.security import Security, client_security
from pipeedge.tokenizer import TextStream, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


# -- sampling ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature`` 0 means greedy (argmax). ``top_k`` 0 and ``top_p`` 1 disable those filters.
    ``stop_token_ids`` None means the model's end-of-sequence ids; pass ``()`` to never stop early.
    ``stop`` strings end the text before their first occurrence (not included in the output).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()

    def check(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None = None) -> int:
    """Pick the next token from one position's logits (V,): argmax when greedy, else temperature,
    then top-k, then top-p (nucleus) filtering, as transformers' sampling warpers apply them."""
    logits = logits.float()
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# -- results ----------------------------------------------------------------------------------------


@dataclass
class TokenEvent:
    """One generated token. ``text`` is the new text it completes (may be empty: a partial UTF-8
    character, a special token, or text held back while it could still become a stop string).
    ``finish_reason`` is set on a generation's last event: "stop" (stop token or string) or
    "length" (max_new_tokens reached)."""

    index: int                  # which prompt (generate_many); 0 for generate
    token_id: int
    text: str
    finish_reason: str | None = None
    logits: torch.Tensor | None = None  # (vocab,) float32, with return_logits=True


@dataclass
class Completion:
    index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


# -- transport: one Forward stream shared by all sessions of a client ------------------------------

_CLOSE = object()


class _Mux:
    """Sends frames over one long-lived Forward stream and hands each result to the future
    registered for its request id. A broken stream fails its waiters; the next send reopens."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        self.address = address
        self._channel = channels.open_channel(address, security=security)
        self._stub = wire.stage_stub(self._channel)
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[object] | None = None  # frames, then _CLOSE
        self._call = None
        self._waiters: dict[str, Future[wire.Frame]] = {}
        self._closed = False

    def send(self, frame: wire.Frame) -> Future[wire.Frame]:
        fut: Future[wire.Frame] = Future()
        with self._lock:
            if self._closed:
                raise StageUnavailableError(f"generator for {self.address} is closed",
                                            code=grpc.StatusCode.UNAVAILABLE)
            outbox = self._outbox if self._outbox is not None else self._open()
            self._waiters[frame.request_id] = fut
            outbox.put(frame)
        return fut

    def _open(self) -> queue.SimpleQueue[object]:
        outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        call = self._stub.Forward(iter(outbox.get, _CLOSE))
        self._outbox, self._call = outbox, call
        threading.Thread(target=self._receive, args=(call, outbox), name="generate-receive",
                         daemon=True).start()
        return outbox

    def _receive(self, call: Iterable[wire.Frame], outbox: queue.SimpleQueue[object]) -> None:
        error: BaseException | None = None
        try:
            for frame in call:
                with self._lock:
                    fut = self._waiters.pop(frame.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
        except grpc.RpcError as exc:
            error = rpc_error(exc) if exc.code() != grpc.StatusCode.CANCELLED else \
                StageUnavailableError(f"stream to {self.address} was cancelled",
                                      code=grpc.StatusCode.CANCELLED)
        with self._lock:
            if self._outbox is outbox:
                self._outbox, self._call = None, None
            waiters, self._waiters = self._waiters, {}
        outbox.put(_CLOSE)
        error = error or StageUnavailableError(f"stream to {self.address} ended",
                                               code=grpc.StatusCode.UNAVAILABLE)
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(error)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            outbox, call = self._outbox, self._call
        if outbox is not None:
            outbox.put(_CLOSE)
        if call is not None:
            call.cancel()
        self._channel.close()


# -- one generation ---------------------------------------------------------------------------------


class _Run:
    """State of one session: prompt, sampled tokens, stop handling, text stream."""

    def __init__(self, index: int, prompt_ids: list[int], params: SamplingParams,
                 tokenizer: Tokenizer, eos_ids: tuple[int, ...], return_logits: bool) -> None:
        self.index = index
        self.prompt_ids = prompt_ids
        self.params = params
        self.session_id = uuid.uuid4().hex
        self.step = 0       # tokens sampled so far
        self.wire_step = 0  # Frame.step of this session on the stages; 0 = prefill
        self.stop_ids = set(eos_ids if params.stop_token_ids is None else params.stop_token_ids)
        self.stream = TextStream(tokenizer)
        self.completion = Completion(index, prompt_ids)
        self.return_logits = return_logits
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(int(seed) + index)
        self.pending = ""   # text held back while it may be the start of a stop string
        self.hold = max((len(s) for s in params.stop), default=1) - 1

    def inputs(self) -> dict[str, torch.Tensor]:
        """Prefill: the prompt and whatever was generated before a failover; then one token."""
        ids = (self.prompt_ids + self.completion.token_ids if self.wire_step == 0
               else self.completion.token_ids[-1:])
        return {"input_ids": torch.tensor([ids], dtype=torch.int64)}

    def restart(self) -> None:
        """Continue on a new pipeline: a fresh session that prefills everything so far."""
        self.session_id = uuid.uuid4().hex
        self.wire_step = 0

    def advance(self, logits: torch.Tensor) -> TokenEvent:
        """Sample from the last position's logits; the returned event says if the run is over."""
        row = logits[0].float()
        token = sample_token(row, self.params, self.generator)
        c = self.completion
        c.token_ids.append(token)
        self.step += 1
        self.wire_step += 1
        finish = None
        if token in self.stop_ids:
            finish, delta = "stop", self.stream.flush()
        else:
            delta = self.stream.push(token)
            if len(c.token_ids) >= self.params.max_new_tokens:
                finish, delta = "length", delta + self.stream.flush()
        text = self.pending + delta
        if self.params.stop:
            cut = min((i for i in (text.find(s) for s in self.params.stop) if i >= 0),
                      default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            elif finish is None and self.hold:
                keep = len(text) - self.hold
                text, self.pending = text[:max(keep, 0)], text[max(keep, 0):]
            else:
                self.pending = ""
        c.text += text
        c.finish_reason = finish
        return TokenEvent(self.index, token, text, finish, row if self.return_logits else None)


# -- the generator ----------------------------------------------------------------------------------


class TextGenerator:
    """Generates text on a deployed decoder pipeline.

    Args:
        address: "host:port" of the first stage (no failover); if omitted, read from
            ``pipeline_file`` or asked of ``coordinator``.
        pipeline_file: the file ``pipeedge-coord deploy``/``serve`` wrote (default
            ./pipeline.json); read again after a failure, since ``serve`` rewrites it.
        coordinator: "host:port" of ``pipeedge-coord serve``: where the pipeline starts now and
            after a re-plan (``model`` is then needed unless a pipeline file names it).
        model: the model name (default: the pipeline file's); needed with a bare address.
        model_config_json: config.json text when the model is not one PipeEdge ships.
        tokenizer: a ``Tokenizer``, or a local directory holding the model's tokenizer. Default:
            the pipeline's weights directory if it has tokenizer files, else byte-level.
        timeout_s: deadline for each step.
        recovery_timeout_s: how long a failed step waits for a re-planned pipeline.
        security, token: credentials as for ``PipelineClient`` (default: what the pipeline
            file records, when the address comes from it).
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 model: str | None = None, model_config_json: str | None = None,
                 tokenizer: Tokenizer | str | Path | None = None,
                 timeout_s: float = 60.0, security: Security | None = None,
                 token: str | None = None, coordinator: str | None = None,
                 recovery_timeout_s: float | None = None,
                 retry: RetryPolicy | None = None) -> None:
        security = client_security(security, token=token, address=address or coordinator,
                                   pipeline_file=pipeline_file)
        weights_dir = None
        info = None
        if model is None or (address is None and coordinator is None):
            from pipeedge.pipeline_file import Pipeline

            pipeline = Pipeline.load(Path(pipeline_file) if pipeline_file else Path("pipeline.json"))
            if model in (None, pipeline.model) and model_config_json is None:
                info = pipeline.model_info()  # a directory's own config, as deployed
            model = model or pipeline.model
            weights_dir = pipeline.weights_directory
        self.info = info or models.model_info(model, model_config_json)
        if not self.info.is_decoder:
            raise ValueError(f"{model} is not a decoder (text-generation) model; use "
                             "PipelineClient.infer for it")
        self.model = model
        self.retry = retry or RetryPolicy()
        if recovery_timeout_s is not None:
            self.retry = replace(self.retry, recovery_timeout_s=recovery_timeout_s)
        self._source = make_source(address, pipeline_file, coordinator, security)
        try:
            self.view = PipelineView(self._source, self.retry)
        except BaseException:
            self._source.close()
            raise
        self.address, self.version = self.view.current()
        self._security = security
        self.timeout_s = timeout_s
        self.recoveries: list[float] = []  # seconds from a failure to the resent steps
        if isinstance(tokenizer, Tokenizer):
            self.tokenizer = tokenizer
        else:
            self.tokenizer = load_tokenizer(tokenizer or weights_dir, self.info.config)
        self.max_positions = self.info.max_positions
        self._mux = _Mux(self.address, security)
        self._move_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    def __enter__(self) -> TextGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._mux.close()
        self._source.close()

    # -- public API ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            bos = self.info.config.get("bos_token_id")
            if bos is None:
                raise ValueError("the prompt is empty and the model has no bos_token_id")
            ids = [int(bos)]
        vocab = int(self.info.config["vocab_size"])
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary 0..{vocab - 1}")
        return ids

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                 return_logits: bool = False, **kwargs: Any) -> Iterator[TokenEvent]:
        """Stream the tokens of one generation as they are produced.

        Keyword arguments are ``SamplingParams`` fields (``max_new_tokens``, ``temperature``,
        ``top_k``, ``top_p``, ``seed``, ``stop``, ``stop_token_ids``). Closing the iterator early
        ends the session on every stage.
        """
        return self.generate_many([prompt], params, concurrency=1, return_logits=return_logits,
                                  **kwargs)

    def generate_many(self, prompts: Iterable[str | Sequence[int]],
                      params: SamplingParams | None = None, *, concurrency: int = 4,
                      return_logits: bool = False, **kwargs: Any
                      ) -> Generator[TokenEvent, None, None]:
        """Generate for several prompts with up to ``concurrency`` sessions in flight; events of
        different prompts interleave (``TokenEvent.index`` says which)."""
        params = self._params(params, kwargs)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        runs = (self._new_run(i, p, params, return_logits) for i, p in enumerate(prompts))
        return self._drive(runs, concurrency)

    def complete(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 **kwargs: Any) -> Completion:
        """Generate to the end and return the whole completion."""
        return self.complete_many([prompt], params, concurrency=1, **kwargs)[0]

    def complete_many(self, prompts: Sequence[str | Sequence[int]],
                      params: SamplingParams | None = None, *, concurrency: int = 4,
                      **kwargs: Any) -> list[Completion]:
        params = self._params(params, kwargs)
        runs = [self._new_run(i, p, params, False) for i, p in enumerate(prompts)]
        for _ in self._drive(iter(runs), concurrency):
            pass
        return [r.completion for r in runs]

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _params(params: SamplingParams | None, kwargs: dict[str, Any]) -> SamplingParams:
        params = replace(params or SamplingParams(), **kwargs)
        if isinstance(params.stop, str):
            params = replace(params, stop=(params.stop,))
        params = replace(params, stop=tuple(s for s in params.stop if s))
        if params.stop_token_ids is not None:
            params = replace(params, stop_token_ids=tuple(int(t) for t in params.stop_token_ids))
        params.check()
        return params

    def _new_run(self, index: int, prompt: str | Sequence[int], params: SamplingParams,
                 return_logits: bool) -> _Run:
        ids = self.encode_prompt(prompt)
        if len(ids) + params.max_new_tokens > self.max_positions:
            raise ValueError(f"prompt of {len(ids)} tokens + max_new_tokens "
                             f"{params.max_new_tokens} exceed the {self.max_positions} positions "
                             f"of {self.model}; shorten the prompt or lower max_new_tokens")
        return _Run(index, ids, params, self.tokenizer, self.tokenizer.eos_token_ids,
                    return_logits)

    def _send(self, run: _Run) -> Future[wire.Frame]:
        frame = wire.Frame(request_id=f"{self._prefix}-{next(self._ids)}",
                           session_id=run.session_id, step=run.wire_step)
        codec.encode_tensors(frame, run.inputs())
        return self._mux.send(stamp(frame, self.version, self.timeout_s))

    def _end(self, run: _Run) -> None:
        """Free the session on every stage (fire and forget)."""
        frame = wire.Frame(request_id=f"{self._prefix}-{next(self._ids)}",
                           session_id=run.session_id, step=run.wire_step, epoch=self.version)
        try:
            self._mux.send(frame)
        except Exception:  # noqa: BLE001 (the stream is gone: the stages' idle timeout frees it)
            log.debug("could not end session %s", run.session_id)

    def _move(self, seen: int, error: BaseException | None) -> bool:
        """Go to a pipeline newer than version `seen`: at once if another generation already
        moved, else ask the view (`error`: what failed, then wait for one; None = a quiet
        step, no waiting). False if none came."""
        with self._move_lock:
            if self.version <= seen:
                if not self.view.move_past(seen, wait=error is not None):
                    return False
                address, version = self.view.current()
                old, self._mux = self._mux, _Mux(address, self._security)
                self.address, self.version = address, version
                old.close()
                log.warning("pipeline moved to epoch %d (entry %s); resuming the open "
                            "generations", self.version, self.address,
                            extra={"event": "failover", "version": self.version})
            return True

    def _drive(self, runs: Iterator[_Run], concurrency: int
               ) -> Generator[TokenEvent, None, None]:
        active: dict[Future[wire.Frame], _Run] = {}
        version = self.version

        def start_next() -> None:
            run = next(runs, None)
            if run is not None:
                active[self._send(run)] = run

        def resume(error: BaseException | None) -> bool:
            """Move to a newer pipeline and restart every open session there."""
            nonlocal version
            failed_at = time.monotonic()
            if not self._move(version, error):
                return False
            version = self.version
            open_runs = list(active.values())
            active.clear()
            for run in open_runs:
                run.restart()
                active[self._send(run)] = run
            self.recoveries.append(time.monotonic() - failed_at)
            return True

        busy: dict[int, int] = {}  # run index -> refusals by a full stage in a row

        def retry_busy(fut: Future[wire.Frame], exc: PipelineError) -> None:
            """Only this session starts over, after a backoff. Its old session is ended first:
            a refused step may have advanced it on the stages before the full one, and left
            there it would hold a KV cache slot until the idle timeout (a session store kept
            full that way refused every restart: a livelock)."""
            run = active.pop(fut)
            busy[run.index] = attempt = busy.get(run.index, 0) + 1
            if attempt > self.retry.max_retries:
                raise exc
            self._end(run)
            run.restart()
            delayed.append((time.monotonic() + self.retry.busy_wait(attempt), run))

        delayed: list[tuple[float, _Run]] = []  # (when, run): resends after a busy refusal

        def send_due() -> float:
            """Send the delayed runs that are due; seconds until the next one (or the stall
            check), so the loop never sleeps while other sessions have results waiting."""
            now = time.monotonic()
            for item in [d for d in delayed if d[0] <= now]:
                delayed.remove(item)
                active[self._send(item[1])] = item[1]
            return min([self.retry.stall_check_s] + [d[0] - now for d in delayed])

        try:
            for _ in range(concurrency):
                start_next()
            quiet_since = time.monotonic()
            while active or delayed:
                timeout = send_due()
                if not active:
                    time.sleep(max(timeout, 0.0))
                    quiet_since = time.monotonic()
                    continue
                done, _ = wait(list(active), timeout=timeout, return_when=FIRST_COMPLETED)
                if not done and delayed:
                    continue  # a resend is due: not a stall
                if not done:  # a hung stage breaks nothing: has the coordinator re-planned?
                    if resume(None):
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > self.timeout_s:
                        raise DeadlineExceededError(
                            f"no generation step came back from {self.address} within "
                            f"{self.timeout_s:.0f}s; a stage may be stalled (pipeedge-coord "
                            "status)", code=grpc.StatusCode.DEADLINE_EXCEEDED)
                    continue
                quiet_since = time.monotonic()
                # In the order the steps were sent (`done` is a set): with FIFO stages that is
                # the order they finished, so no session's step overtakes an earlier one's.
                for fut in [f for f in active if f in done]:
                    if fut not in active:  # resumed on a new pipeline already
                        continue
                    try:
                        logits = result_tensors(fut.result())["logits"]
                    except PipelineError as exc:
                        if exc.code in BUSY_CODES:  # a full stage (sessions, requests)
                            retry_busy(fut, exc)
                            continue
                        # A dead or reassigned stage: wait for the re-plan. NOT_FOUND (a stage
                        # lost the session): move only if a newer pipeline is already out.
                        if self.retry.retryable(exc.code) and resume(exc) or \
                                exc.code == grpc.StatusCode.NOT_FOUND and resume(None):
                            break
                        raise
                    busy.pop(active[fut].index, None)
                    run = active.pop(fut)
                    event = run.advance(logits)
                    if event.finish_reason is None:
                        active[self._send(run)] = run  # next step goes out before we yield
                    else:
                        self._end(run)
                        start_next()
                    yield event
        finally:
            for run in active.values():
                self._end(run)
