"""OpenAI request semantics for a decoder pipeline, independent of the HTTP framework.

`CompletionService` turns ``/v1/completions`` and ``/v1/chat/completions`` bodies into
generations on a shared `TextGenerator` (awaited through the async SDK's `AsyncTextGenerator`)
and their results into OpenAI-shaped objects. A streaming answer is an async iterator of chunks
that has already waited for its first token, so a pipeline that fails at once still becomes an
HTTP error rather than a 200 with an error inside.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from pipeedge.client.aio import AsyncTextGenerator
from pipeedge.client.generate import SamplingParams, TextGenerator, TokenEvent
from pipeedge.errors import PipelineError
from pipeedge.tokenizer import message_text

DEFAULT_COMPLETION_TOKENS = 16     # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256          # chat has no documented default; bounded by the context
MAX_CHOICES = 16


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.code}}


def listed_inputs(value, param: str) -> list:
    """OpenAI's `prompt` / `input`: a string, token ids, or a non-empty list of those, as a
    list of items (one per completion or embedding)."""
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(t, int) for t in value)):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise RequestError(400, f"{param} must be a non-empty string, list of strings, list of "
                       "token ids or list of such lists", param=param)


_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def pipeline_error(exc: PipelineError) -> RequestError:
    """The HTTP answer for a failed pipeline call."""
    status = _GRPC_TO_HTTP.get(exc.code, 500)
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    return RequestError(status, str(exc), kind=kind, code=exc.code.name.lower())


# -- typed fields -----------------------------------------------------------------------------------


def get_int(body: dict, key: str, default: Any, *, low: int | None = None) -> int:
    value = default if body.get(key) is None else body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{key} must be an integer, got {value!r}", param=key)
    if low is not None and value < low:
        raise RequestError(400, f"{key} must be >= {low}, got {value}", param=key)
    return value


def get_number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise RequestError(400, f"{key} must be a number from {low:g} to {high:g}, got "
                           f"{value!r}", param=key)
    return float(value)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _text_choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


class CompletionService:
    """Completions and chat on one decoder pipeline; ``model_name`` is its public id."""

    kind = "decoder"

    def __init__(self, generator: TextGenerator, *, model_name: str | None = None) -> None:
        self.generator = generator   # prompts, tokenizer, limits
        self.agen = AsyncTextGenerator(generator)  # the generations themselves
        self.model_name = model_name or generator.model
        self.created = int(time.time())

    async def aclose(self) -> None:
        await self.agen.close()

    # -- parsing ------------------------------------------------------------------------------
    def _params(self, body: dict, default_max: int, prompt_len: int) -> SamplingParams:
        for key in ("logprobs", "top_logprobs", "tools", "functions", "suffix", "best_of"):
            allowed: tuple[object, ...] = (None, 1) if key == "best_of" else (None, False, 0, "", [])
            if body.get(key) not in allowed:
                raise RequestError(400, f"{key} is not supported by this server", param=key)
        for key in ("presence_penalty", "frequency_penalty"):
            if body.get(key) not in (None, 0, 0.0):
                raise RequestError(400, f"{key} is not supported (only 0)", param=key)
        if body.get("logit_bias"):
            raise RequestError(400, "logit_bias is not supported", param="logit_bias")
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
            else "max_tokens"
        room = self.generator.max_positions - prompt_len
        max_tokens = get_int(body, key, max(1, min(default_max, room)), low=1)
        stop = body.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) \
                or len(stop) > 4:
            raise RequestError(400, "stop must be a string or a list of up to 4 strings",
                               param="stop")
        temperature = get_number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = get_number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:  # the nucleus is the single most likely token: greedy
            temperature, top_p = 0.0, 1.0
        seed = None if body.get("seed") is None else get_int(body, "seed", None)
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                top_k=get_int(body, "top_k", 0, low=0), seed=seed,
                                stop=tuple(stop))
        if prompt_len + max_tokens > self.generator.max_positions:
            raise RequestError(400, f"this model's maximum context length is "
                               f"{self.generator.max_positions} tokens; the prompt has "
                               f"{prompt_len} and {key} is {max_tokens}",
                               param=key, code="context_length_exceeded")
        return params

    def _prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        if prompt is None:
            raise RequestError(400, "prompt is required", param="prompt")
        items = listed_inputs(prompt, "prompt")
        out = []
        for p in items:
            if not (isinstance(p, str) or (isinstance(p, list)
                                          and all(isinstance(t, int) for t in p))):
                raise RequestError(400, "each prompt must be a string or a list of token ids",
                                   param="prompt")
            try:
                out.append(self.generator.encode_prompt(p))
            except ValueError as exc:
                raise RequestError(400, str(exc), param="prompt") from None
        return out

    def _chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) for m in messages):
            raise RequestError(400, "messages must be a non-empty list of {role, content}",
                               param="messages")
        try:
            for m in messages:
                message_text(m)
            return self.generator.encode_prompt(self.generator.tokenizer.chat_ids(messages))
        except ValueError as exc:
            raise RequestError(400, str(exc), param="messages") from None

    # -- endpoints ----------------------------------------------------------------------------
    async def completions(self, body: dict) -> dict | AsyncGenerator[dict, None]:
        """The response object, or (``stream: true``) an async iterator of chunks."""
        prompts = self._prompts(body)
        n = get_int(body, "n", 1, low=1)
        if n * len(prompts) > MAX_CHOICES:
            raise RequestError(400, f"n times the number of prompts must be at most "
                               f"{MAX_CHOICES}", param="n")
        params = self._params(body, DEFAULT_COMPLETION_TOKENS, max(len(p) for p in prompts))
        echo = bool(body.get("echo"))
        runs = [p for p in prompts for _ in range(n)]
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name}
        prompt_tokens = sum(len(p) for p in prompts)
        tok = self.generator.tokenizer
        events = await self._events(runs, params)

        if body.get("stream"):
            async def chunks() -> AsyncGenerator[dict, None]:
                produced = 0
                if echo:
                    for i, p in enumerate(runs):
                        yield {**base, "choices": [_text_choice(i, tok.decode(p), None)]}
                async for ev in events:
                    produced += 1
                    if ev.text or ev.finish_reason:
                        yield {**base, "choices": [_text_choice(ev.index, ev.text,
                                                                ev.finish_reason)]}
                if _include_usage(body):
                    yield {**base, "choices": [], "usage": _usage(prompt_tokens, produced)}
            return chunks()

        texts, finish, produced = await _collect(events, len(runs))
        if echo:
            texts = [tok.decode(p) + t for p, t in zip(runs, texts)]
        choices = [_text_choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finish))]
        return {**base, "choices": choices, "usage": _usage(prompt_tokens, produced)}

    async def chat_completions(self, body: dict) -> dict | AsyncGenerator[dict, None]:
        prompt = self._chat_prompt(body)
        n = get_int(body, "n", 1, low=1)
        if n > MAX_CHOICES:
            raise RequestError(400, f"n must be at most {MAX_CHOICES}", param="n")
        params = self._params(body, DEFAULT_CHAT_TOKENS, len(prompt))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        events = await self._events([prompt] * n, params)

        if body.get("stream"):
            base = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": self.model_name}

            def choice(i: int, delta: dict, finish: str | None = None) -> dict:
                return {**base, "choices": [{"index": i, "delta": delta,
                                             "finish_reason": finish}]}

            async def chunks() -> AsyncGenerator[dict, None]:
                produced = 0
                for i in range(n):
                    yield choice(i, {"role": "assistant", "content": ""})
                async for ev in events:
                    produced += 1
                    if ev.text:
                        yield choice(ev.index, {"content": ev.text})
                    if ev.finish_reason:
                        yield choice(ev.index, {}, ev.finish_reason)
                if _include_usage(body):
                    yield {**base, "choices": [], "usage": _usage(len(prompt), produced)}
            return chunks()

        texts, finish, produced = await _collect(events, n)
        choices = [{"index": i, "message": {"role": "assistant", "content": t},
                    "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": self.model_name, "choices": choices,
                "usage": _usage(len(prompt), produced)}

    async def _events(self, runs: list[list[int]],
                      params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """The generations' events, after the first has arrived (its failure raises here)."""
        events = self.agen.generate_many(runs, params, concurrency=len(runs))
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except PipelineError as exc:
            await events.aclose()
            raise pipeline_error(exc) from None
        except BaseException:
            await events.aclose()
            raise

        async def rest() -> AsyncIterator[TokenEvent]:
            try:
                if first is not None:
                    yield first
                async for ev in events:
                    yield ev
            except PipelineError as exc:
                raise pipeline_error(exc) from None
            finally:
                await events.aclose()
        return rest()


def _include_usage(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


async def _collect(events: AsyncIterator[TokenEvent],
                   count: int) -> tuple[list[str], list[str | None], int]:
    finish: list[str | None] = [None] * count
    texts, produced = [""] * count, 0
    async for ev in events:
        produced += 1
        texts[ev.index] += ev.text
        finish[ev.index] = ev.finish_reason or finish[ev.index]
    return texts, finish, produced
