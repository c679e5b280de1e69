"""OpenAI-compatible HTTP API for deployed pipelines (Starlette on uvicorn).

``pipeedge-coord serve-http --pipeline gpt2.json --pipeline minilm.json --port 8000`` serves

- ``POST /v1/completions``       prompt (string, strings, token ids or lists of them), ``n``;
- ``POST /v1/chat/completions``  messages, rendered with the tokenizer's chat template if it has
                                 one, else a plain ``role: content`` template;
- ``POST /v1/embeddings``        pooled sentence embeddings of an encoder pipeline;
- ``GET  /v1/models``, ``GET /v1/models/{id}`` (ids may contain ``/``), ``GET /health``;
- ``GET  /dashboard``                the live pipeline view (`dashboard`); ``/`` leads there.

Generation takes ``max_tokens`` (chat also ``max_completion_tokens``), ``temperature`` (0-2,
default 1), ``top_p`` (0-1), ``top_k`` (extension), ``seed``, ``stop`` and ``stream``; with
``stream: true`` the answer is Server-Sent Events (``data: {chunk}``, then ``data: [DONE]``).
A stream is answered only once its first token exists, so an early failure is a plain HTTP
error. Errors have OpenAI's shape (``message``, ``type``, ``param``, ``code``). Optional: a
bearer token, CORS for listed origins, a body size limit, and at most ``max_concurrency``
requests running in the pipelines at once (429 with ``Retry-After`` beyond).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeedge.apps.openai_service import CompletionService, RequestError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
RETRY_AFTER_S = 1


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def bearer_check(token: str | None):
    """``check(request)``: raises a 401 `RequestError` unless the request carries
    ``Authorization: Bearer <token>`` (never raises when `token` is None)."""

    def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer "
                               "<token>' with the server's token", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})

    return check


class _Api:
    """The routes' state: services by model id, credentials, limits."""

    def __init__(self, services: Sequence, *, token: str | None, max_body_bytes: int,
                 max_concurrency: int) -> None:
        self.services = {s.model_name: s for s in services}
        if len(self.services) != len(services):
            raise ValueError("two pipelines serve the same model id")
        self._check = bearer_check(token)
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.busy = 0

    # -- request plumbing ---------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        self._check(request)

    async def body(self, request: Request) -> dict:
        too_big = RequestError(413, f"the request body is over {self.max_body_bytes} bytes",
                               code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise too_big
        data = bytearray()
        async for chunk in request.stream():  # also chunked bodies, counted as they come
            data += chunk
            if len(data) > self.max_body_bytes:
                raise too_big
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def service(self, body: dict, kind: str):
        """The pipeline ``body["model"]`` names (may be left out when only one fits)."""
        model = body.get("model")
        fitting = [s for s in self.services.values() if s.kind == kind]
        if model is None and len(fitting) == 1:
            return fitting[0]
        if model is None:
            raise RequestError(400, "model is required", param="model")
        service = self.services.get(model)
        if service is None:
            raise RequestError(404, f"model {model!r} is not served here; this server serves "
                               f"{sorted(self.services)} (GET /v1/models)", param="model",
                               code="model_not_found")
        if service.kind != kind:
            other = "/v1/embeddings" if service.kind == "encoder" else "/v1/completions"
            raise RequestError(400, f"model {model!r} is an {service.kind} model; use {other}",
                               param="model")
        return service

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.busy >= self.max_concurrency:
            raise RequestError(429, f"{self.max_concurrency} requests are running; retry "
                               "shortly", kind="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
        self.busy += 1  # the event loop is single-threaded: no lock needed
        try:
            yield
        finally:
            self.busy -= 1

    # -- routes -------------------------------------------------------------------------------
    def card(self, service) -> dict:
        return {"id": service.model_name, "object": "model", "created": service.created,
                "owned_by": "pipeedge"}

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self.services)})

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list",
                             "data": [self.card(s) for s in self.services.values()]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        model_id = request.path_params["model_id"]
        if model_id not in self.services:
            raise RequestError(404, f"model {model_id!r} is not served here", param="model",
                               code="model_not_found")
        return JSONResponse(self.card(self.services[model_id]))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionService.completions)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionService.chat_completions)

    async def embeddings(self, request: Request) -> Response:
        self.authorize(request)
        body = await self.body(request)
        service = self.service(body, "encoder")
        with self.slot():
            return JSONResponse(await service.embeddings(body))

    async def _generate(self, request: Request, method) -> Response:
        self.authorize(request)
        body = await self.body(request)
        service = self.service(body, "decoder")
        slot = self.slot()
        slot.__enter__()
        try:
            result = await method(service, body)
        except BaseException:
            slot.__exit__(None, None, None)
            raise
        if isinstance(result, dict):
            slot.__exit__(None, None, None)
            return JSONResponse(result)
        return StreamingResponse(_sse(result, slot), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _sse(chunks: AsyncGenerator[dict, None], slot) -> AsyncIterator[str]:
    """Server-Sent Events; a failure after the headers went out is reported in-band."""
    try:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except RequestError as exc:
            yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()  # ends the sessions if the client went away
        slot.__exit__(None, None, None)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)  # registered for RequestError (below)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path} " \
                  f"(allowed: {(exc.headers or {}).get('Allow', '')})"
    else:
        message = exc.detail
    error = RequestError(exc.status_code, message, headers=dict(exc.headers or {}))
    return _error_response(error)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_response(RequestError(500, f"internal error: {exc}", kind="server_error"))


def error_handlers() -> dict:
    """OpenAI-shaped errors for refusals, unknown routes, wrong methods and crashes."""
    return {RequestError: _request_error, HTTPException: _http_error, Exception: _server_error}


def make_app(services: Sequence, *, token: str | None = None,
             cors_origins: Sequence[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
             max_concurrency: int = 16, dashboard=None) -> Starlette:
    """The ASGI app serving ``services`` (`CompletionService`/`EmbeddingService`), and
    `dashboard` (a `dashboard.Dashboard`) at ``/dashboard``; it closes them when it shuts
    down."""
    api = _Api(services, token=token, max_body_bytes=max_body_bytes,
               max_concurrency=max_concurrency)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
    ]
    if dashboard is not None:
        from pipeedge.apps import dashboard as dashboard_mod

        routes += dashboard_mod.routes(dashboard, api.authorize)
    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            for service in api.services.values():
                await service.aclose()
            if dashboard is not None:
                dashboard.close()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers=error_handlers())


@contextlib.contextmanager
def running(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a background thread; yields its base URL (port 0: a free port)."""
    import uvicorn

    sock = socket.create_server((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the HTTP server did not start (see the log)")
            thread.join(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def load_services(pipeline_files: Sequence[Path], *, tokenizer=None, timeout_s: float = 60.0):
    """One service per pipeline file: completions for decoders, embeddings for encoders."""
    from pipeedge.apps.openai_embeddings import EmbeddingService
    from pipeedge.client.generate import TextGenerator
    from pipeedge.pipeline_file import Pipeline

    services: list[CompletionService | EmbeddingService] = []
    try:
        for path in pipeline_files:
            if Pipeline.load(Path(path)).model_info().is_decoder:
                services.append(CompletionService(TextGenerator(
                    pipeline_file=path, tokenizer=tokenizer, timeout_s=timeout_s)))
            else:
                services.append(EmbeddingService(path, tokenizer=tokenizer,
                                                 timeout_s=timeout_s))
    except BaseException:
        for s in services:
            _close_now(s)
        raise
    return services


def _close_now(service) -> None:
    import asyncio

    asyncio.run(service.aclose())


def serve(pipeline_files: Sequence[Path], *, host: str = "127.0.0.1", port: int = 8000,
          tokenizer=None, timeout_s: float = 60.0, max_concurrency: int = 16,
          token: str | None = None, cors_origins: Sequence[str] = (),
          max_body_bytes: int = MAX_BODY_BYTES, announce=print) -> None:
    """Serve the pipelines of ``pipeline_files`` until interrupted."""
    import uvicorn

    from pipeedge.apps.dashboard import Dashboard

    services = load_services(pipeline_files, tokenizer=tokenizer, timeout_s=timeout_s)
    app = make_app(services, token=token, cors_origins=cors_origins,
                   max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
                   dashboard=Dashboard.of_files(pipeline_files))
    for s in services:
        announce(f"serving {s.model_name} ({s.kind}) at http://{host}:{port}/v1")
    announce(f"dashboard at http://{host}:{port}/dashboard")
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on")
