"""OpenAI-compatible HTTP endpoint for a deployed decoder pipeline (stdlib only).

``pipeedge-coord serve-http --pipeline pipeline.json --port 8000`` serves

- ``POST /v1/completions``       prompt (string, strings, token ids or lists of them), ``n``;
- ``POST /v1/chat/completions``  messages, rendered with the tokenizer's chat template if it has
                                 one, else a plain ``role: content`` template;
- ``GET  /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

Both POST routes take ``max_tokens`` (chat also ``max_completion_tokens``), ``temperature``
(default 1), ``top_p``, ``top_k`` (extension), ``seed``, ``stop`` and ``stream``; with
``stream: true`` the answer is Server-Sent Events (``data: {chunk}`` lines, then
``data: [DONE]``), and ``stream_options.include_usage`` adds a final usage chunk. Unsupported
options (``logprobs``, non-zero penalties, ``tools``) get a 400 rather than being ignored.
Each request runs as its own session(s) through the shared ``TextGenerator``, so concurrent
requests interleave in the pipeline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from pipeedge.client.generate import SamplingParams, TextGenerator, TokenEvent
from pipeedge.errors import PipelineError
from pipeedge.tokenizer import message_text

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 16     # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256          # chat has no documented default; bounded by the context
MAX_BODY_BYTES = 4 << 20
MAX_CHOICES = 16


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.code}}


_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _pipeline_error(exc: PipelineError) -> RequestError:
    status = _GRPC_TO_HTTP.get(exc.code, 500)
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    return RequestError(status, str(exc), kind=kind, code=exc.code.name.lower())


class OpenAIService:
    """Request handling, independent of the HTTP plumbing (so it is easy to test)."""

    def __init__(self, generator: TextGenerator, *, model_name: str | None = None,
                 max_concurrency: int = 16) -> None:
        self.generator = generator
        self.model_name = model_name or generator.model
        self.created = int(time.time())
        self._slots = threading.BoundedSemaphore(max_concurrency)

    # -- parsing ------------------------------------------------------------------------------
    def _check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"model {model!r} is not served here; this server serves "
                               f"{self.model_name!r} (GET /v1/models)", param="model",
                               code="model_not_found")

    def _params(self, body: dict, default_max: int, prompt_len: int) -> SamplingParams:
        for key in ("logprobs", "top_logprobs", "tools", "functions", "suffix", "best_of"):
            allowed = (None, 1) if key == "best_of" else (None, False, 0, "", [])
            if body.get(key) not in allowed:
                raise RequestError(400, f"{key} is not supported by this server", param=key)
        for key in ("presence_penalty", "frequency_penalty"):
            if body.get(key) not in (None, 0, 0.0):
                raise RequestError(400, f"{key} is not supported (only 0)", param=key)
        if body.get("logit_bias"):
            raise RequestError(400, "logit_bias is not supported", param="logit_bias")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        room = self.generator.max_positions - prompt_len
        if max_tokens is None:
            max_tokens = max(1, min(default_max, room))
        stop = body.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) \
                or len(stop) > 4:
            raise RequestError(400, "stop must be a string or a list of up to 4 strings",
                               param="stop")
        try:
            params = SamplingParams(
                max_new_tokens=_int(body, "max_tokens", max_tokens),
                temperature=_float(body, "temperature", body.get("temperature", 1.0)),
                top_p=_float(body, "top_p", body.get("top_p", 1.0)),
                top_k=_int(body, "top_k", body.get("top_k", 0)),
                seed=None if body.get("seed") is None else _int(body, "seed", body["seed"]),
                stop=tuple(stop))
            params.check()
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if prompt_len + params.max_new_tokens > self.generator.max_positions:
            raise RequestError(400, f"this model's maximum context length is "
                               f"{self.generator.max_positions} tokens; the prompt has "
                               f"{prompt_len} and max_tokens is {params.max_new_tokens}",
                               param="max_tokens", code="context_length_exceeded")
        return params

    def _prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        if prompt is None:
            raise RequestError(400, "prompt is required", param="prompt")
        if isinstance(prompt, str):
            items: list = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt:
            items = prompt
        else:
            raise RequestError(400, "prompt must be a string, a list of strings, a list of "
                               "token ids or a list of such lists", param="prompt")
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
    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "pipeedge"}

    def completions(self, body: dict) -> tuple[dict | None, Iterator[dict] | None]:
        """Returns (response, None) or, when streaming, (None, chunk iterator)."""
        self._check_model(body)
        prompts = self._prompts(body)
        n = _int(body, "n", body.get("n", 1))
        if not 1 <= n * len(prompts) <= MAX_CHOICES:
            raise RequestError(400, f"n x prompts must be 1..{MAX_CHOICES}", param="n")
        params = self._params(body, DEFAULT_COMPLETION_TOKENS, max(len(p) for p in prompts))
        echo = bool(body.get("echo"))
        runs = [p for p in prompts for _ in range(n)]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created,
                "model": self.model_name}
        usage = _usage(sum(len(p) for p in prompts))
        tok = self.generator.tokenizer

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            def chunks() -> Iterator[dict]:
                if echo:
                    for i, p in enumerate(runs):
                        yield {**base, "choices": [_text_choice(i, tok.decode(p), None)]}
                for ev in self._events(runs, params):
                    usage["completion_tokens"] += 1
                    if ev.text or ev.finish_reason:
                        yield {**base, "choices": [_text_choice(ev.index, ev.text,
                                                                ev.finish_reason)]}
                if include_usage:
                    yield {**base, "choices": [], "usage": _total(usage)}
            return None, chunks()

        texts = [tok.decode(p) if echo else "" for p in runs]
        finish: list[str | None] = [None] * len(runs)
        for ev in self._events(runs, params):
            usage["completion_tokens"] += 1
            texts[ev.index] += ev.text
            finish[ev.index] = ev.finish_reason or finish[ev.index]
        choices = [_text_choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finish))]
        return {**base, "choices": choices, "usage": _total(usage)}, None

    def chat_completions(self, body: dict) -> tuple[dict | None, Iterator[dict] | None]:
        self._check_model(body)
        prompt = self._chat_prompt(body)
        n = _int(body, "n", body.get("n", 1))
        if not 1 <= n <= MAX_CHOICES:
            raise RequestError(400, f"n must be 1..{MAX_CHOICES}", param="n")
        params = self._params(body, DEFAULT_CHAT_TOKENS, len(prompt))
        runs = [prompt] * n
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = _usage(len(prompt))

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            base = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": self.model_name}

            def chunks() -> Iterator[dict]:
                for i in range(n):
                    yield {**base, "choices": [{"index": i, "finish_reason": None,
                                                "delta": {"role": "assistant", "content": ""}}]}
                for ev in self._events(runs, params):
                    usage["completion_tokens"] += 1
                    if ev.text:
                        yield {**base, "choices": [{"index": ev.index, "finish_reason": None,
                                                    "delta": {"content": ev.text}}]}
                    if ev.finish_reason:
                        yield {**base, "choices": [{"index": ev.index, "delta": {},
                                                    "finish_reason": ev.finish_reason}]}
                if include_usage:
                    yield {**base, "choices": [], "usage": _total(usage)}
            return None, chunks()

        texts, finish = [""] * n, [None] * n
        for ev in self._events(runs, params):
            usage["completion_tokens"] += 1
            texts[ev.index] += ev.text
            finish[ev.index] = ev.finish_reason or finish[ev.index]
        choices = [{"index": i, "message": {"role": "assistant", "content": t},
                    "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": self.model_name, "choices": choices, "usage": _total(usage)}, None

    def _events(self, runs: list[list[int]], params: SamplingParams) -> Iterator[TokenEvent]:
        with self._slots:
            events = self.generator.generate_many(runs, params, concurrency=len(runs))
            try:
                yield from events
            except PipelineError as exc:
                raise _pipeline_error(exc) from None
            finally:
                events.close()  # ends the sessions if the client went away


def _int(body: dict, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{key} must be an integer, got {value!r}", param=key)
    return value


def _float(body: dict, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{key} must be a number, got {value!r}", param=key)
    return float(value)


def _usage(prompt_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": 0}


def _total(usage: dict) -> dict:
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


def _text_choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


# -- HTTP plumbing ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    service: OpenAIService  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"
    server_version = "pipeedge-openai"

    def log_message(self, fmt: str, *args) -> None:  # route access logs through logging
        log.info("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            return self._json(200, {"status": "ok", "model": self.service.model_name})
        if path == "/v1/models":
            return self._json(200, self.service.models())
        if path.startswith("/v1/models/"):
            if path[len("/v1/models/"):] == self.service.model_name:
                return self._json(200, self.service.model_card())
            return self._error(RequestError(404, f"model {path[len('/v1/models/'):]!r} is not "
                                            "served here", code="model_not_found"))
        self._error(RequestError(404, f"no route GET {path}", kind="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {"/v1/completions": self.service.completions,
                  "/v1/chat/completions": self.service.chat_completions}
        if path not in routes:
            return self._error(RequestError(404, f"no route POST {path}", kind="not_found"))
        try:
            body = self._body()
            response, chunks = routes[path](body)
        except RequestError as exc:
            return self._error(exc)
        except PipelineError as exc:
            return self._error(_pipeline_error(exc))
        except Exception as exc:  # a bug must not kill the server thread silently
            log.exception("request failed")
            return self._error(RequestError(500, f"internal error: {exc}", kind="server_error"))
        if chunks is None:
            return self._json(200, response)
        self._stream(chunks)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            raise RequestError(400, "the request needs a JSON body")
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"body of {length} bytes is over {MAX_BODY_BYTES}")
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "body must be a JSON object")
        return body

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError) -> None:
        self._json(exc.status, exc.body())

    def _stream(self, chunks: Iterator[dict]) -> None:
        # Server-Sent Events; the connection closes at the end (no chunked transfer needed).
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            try:
                for chunk in chunks:
                    self._event(json.dumps(chunk))
            except RequestError as exc:  # failed after the headers went out: report in-band
                self._event(json.dumps(exc.body()))
            self._event("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            log.info("client %s went away mid-stream; its sessions are ended",
                     self.address_string())
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()

    def _event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()


def make_server(service: OpenAIService, host: str = "127.0.0.1",
                port: int = 8000) -> ThreadingHTTPServer:
    """A threading HTTP server for ``service`` (port 0 picks a free port: ``server_address``)."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(pipeline_file, *, host: str = "127.0.0.1", port: int = 8000, tokenizer=None,
          timeout_s: float = 60.0, max_concurrency: int = 16, announce=print) -> None:
    """Serve the decoder pipeline of ``pipeline_file`` until interrupted."""
    generator = TextGenerator(pipeline_file=pipeline_file, tokenizer=tokenizer,
                              timeout_s=timeout_s)
    try:
        server = make_server(OpenAIService(generator, max_concurrency=max_concurrency),
                             host, port)
    except BaseException:
        generator.close()
        raise
    announce(f"serving {generator.model} (tokenizer: {generator.tokenizer.name}) at "
             f"http://{host}:{server.server_address[1]}/v1 (completions, chat/completions)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        generator.close()
