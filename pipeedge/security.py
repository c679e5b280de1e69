"""Credentials and authorization for PipeEdge's gRPC links: mutual TLS and bearer tokens.

A `Security` holds what one party presents and checks: the deployment CA, its own certificate and
key, the inference bearer token, and (on a stage) the coordinator's name. `channels.open_channel`
turns it into channel credentials plus a token interceptor; a stage server binds with
`server_credentials()` and installs `AuthInterceptor`, which enforces, per Stage method:

    Assign, Release, PushWeights, HasWeights, Profile, MeasureLink (and any Stage method not
    listed below: default deny)  -> the peer's client certificate names the coordinator
                                    (CN or SAN == coordinator_name; mutual TLS only). Without
                                    mutual TLS but with a token, the token instead.
    Forward, Infer, Status       -> `authorization: Bearer <token>` when the server has a token
                                    (Status shows the topology: not public)
    Ping                         -> any peer that passed the TLS handshake (replies bounded)
    health, reflection           -> any peer that passed the TLS handshake

Mutual TLS itself (a certificate signed by the deployment CA) is enforced by the handshake: a
peer without one never reaches a method. A refused call gets UNAUTHENTICATED (no or wrong token)
or PERMISSION_DENIED (wrong identity) with one line naming what is missing and the fix, and never
reaches the servicer, so it changes nothing.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from pipeedge.errors import PipeEdgeError

log = logging.getLogger(__name__)

DEFAULT_COORDINATOR_NAME = "coordinator"
DEFAULT_CLIENT_NAME = "client"
STAGE_SERVICE = "pipeedge.v1.Stage"
# Methods anyone holding the token may call (the data path).
# Status too: it names the next hop and the assignment, which only the deployment may read.
DATA_METHODS = frozenset({"Forward", "Infer", "Status"})
# Methods any authenticated peer may call: the echo other stages use to measure links.
OPEN_METHODS = frozenset({"Ping"})
# Documentation only: everything else of the Stage service is coordinator-only (default deny).
CONTROL_METHODS = frozenset({"Assign", "Release", "PushWeights", "HasWeights", "Profile",
                             "MeasureLink"})
_TOKEN = re.compile(r"^[\x21-\x7e]{8,4096}$")  # printable ASCII, no spaces: a metadata value


class SecurityError(PipeEdgeError, ValueError):
    """Credentials are missing or malformed; the message names the file or flag and the fix."""


def _read(path: str | Path, what: str, *, pem: str | None = None) -> bytes:
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{what} file {p} not found; create it with `pipeedge-coord certs "
                            "hosts.yml` or fix the path") from None
    except OSError as exc:
        raise SecurityError(f"{what} file {p} cannot be read ({exc.strerror}); fix its "
                            "permissions") from None
    if pem and f"-----BEGIN {pem}".encode() not in data:
        raise SecurityError(f"{what} file {p} is not a PEM {pem.lower() or 'file'}; pass the "
                            "file written by `pipeedge-coord certs`")
    return data


def read_token(spec: str | Path, *, base_dir: Path | None = None) -> str:
    """A token from `file:PATH`, `env:VAR`, a bare path to a file, or the literal token."""
    text = str(spec).strip()
    if text.startswith("env:"):
        var = text[4:]
        value = os.environ.get(var, "")
        if not value:
            raise SecurityError(f"token variable {var} is not set; export it or use "
                                "token: file:PATH")
        return check_token(value.strip(), f"${var}")
    if text.startswith("file:") or isinstance(spec, Path):
        path = Path(text.removeprefix("file:")).expanduser()
        if base_dir and not path.is_absolute():
            path = base_dir / path
        return check_token(_read(path, "token").decode("utf-8", "replace").strip(), str(path))
    return check_token(text, "token")


def check_token(token: str, where: str) -> str:
    if not _TOKEN.match(token):
        raise SecurityError(f"{where}: a token must be 8 to 4096 printable ASCII characters "
                            "without spaces; generate one with `pipeedge-coord certs`")
    return token


@dataclass(frozen=True)
class Security:
    """What one party presents and checks. Every field is optional; empty = insecure (as before).

    ca:   PEM of the deployment CA (verifies the peer's certificate)
    cert: PEM certificate chain of this party (stage: server and stage-to-stage client cert)
    key:  PEM private key of `cert`
    token: bearer token sent on every call (clients, stages to their next hop) and, on a stage,
          required on Forward/Infer
    coordinator_name: the identity (certificate CN or SAN) stages accept control calls from
    server_name: TLS name to expect from the server instead of the address' host (NAT, tunnels)
    """

    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    coordinator_name: str = DEFAULT_COORDINATOR_NAME
    server_name: str | None = None
    # Where the credentials came from (absolute paths, token spec), for pipeline.json.
    source: tuple = field(default=(), compare=False, repr=False)

    @classmethod
    def from_files(cls, *, ca=None, cert=None, key=None, token=None, token_file=None,
                   coordinator_name: str = DEFAULT_COORDINATOR_NAME, server_name=None,
                   base_dir: Path | None = None) -> Security:
        """Load PEM files (paths relative to `base_dir`) and a token (literal or `token_file`)."""
        def resolve(p):
            if p in (None, ""):
                return None
            p = Path(p).expanduser()
            return (base_dir / p if base_dir and not p.is_absolute() else p).resolve()

        ca_p, cert_p, key_p = resolve(ca), resolve(cert), resolve(key)
        if bool(cert_p) != bool(key_p):
            raise SecurityError("a certificate needs its key and a key its certificate: pass "
                                "both (--tls-cert and --tls-key, or tls: cert/key)")
        tok = None
        token_spec = ""
        if token_file not in (None, ""):
            path = resolve(token_file)
            tok, token_spec = read_token(path), f"file:{path}"
        elif token not in (None, ""):
            tok = read_token(token, base_dir=base_dir)
            token_spec = str(token)
            if token_spec.startswith("file:"):
                token_spec = f"file:{resolve(token_spec[5:])}"
        sec = cls(ca=_read(ca_p, "CA", pem="CERTIFICATE") if ca_p else None,
                  cert=_read(cert_p, "certificate", pem="CERTIFICATE") if cert_p else None,
                  key=_read(key_p, "private key", pem="") if key_p else None,
                  token=tok, coordinator_name=coordinator_name or DEFAULT_COORDINATOR_NAME,
                  server_name=server_name or None,
                  source=tuple((k, str(v)) for k, v in
                               (("ca", ca_p), ("cert", cert_p), ("key", key_p),
                                ("token", token_spec)) if v))
        if key_p:
            _warn_if_readable(key_p)
        return sec

    # -- what it enables ------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.ca is not None and self.cert is not None and self.key is not None

    @property
    def enabled(self) -> bool:
        return self.tls or bool(self.token)

    def with_token(self, token: str | None) -> Security:
        return replace(self, token=check_token(token, "token")) if token else self

    def describe(self) -> str:
        parts = ["mutual TLS" if self.mutual_tls else "TLS" if self.tls else "no TLS",
                 "token" if self.token else "no token"]
        return ", ".join(parts)

    def paths(self) -> dict[str, str]:
        """The files (and token spec) this was loaded from; for pipeline.json."""
        return dict(self.source)

    # -- client side ------------------------------------------------------------------------------
    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def channel_options(self) -> list[tuple[str, object]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def client_interceptors(self) -> list:
        return [_TokenInterceptor(self.metadata())] if self.token else []

    def aio_client_interceptors(self) -> list:
        if not self.token:
            return []
        md = self.metadata()
        return [_AioUnaryUnary(md), _AioUnaryStream(md), _AioStreamUnary(md),
                _AioStreamStream(md)]

    # -- server side ------------------------------------------------------------------------------
    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS: the server's certificate, and client certificates required and verified."""
        if not (self.cert and self.key):
            raise SecurityError("TLS on a server needs its certificate and key (--tls-cert, "
                                "--tls-key); create them with `pipeedge-coord certs hosts.yml`")
        if not self.ca:
            raise SecurityError("a stage verifies its peers against the deployment CA: pass "
                                "--tls-ca (ca.crt from `pipeedge-coord certs`)")
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def server_interceptors(self, service: str = STAGE_SERVICE) -> list[grpc.ServerInterceptor]:
        """Checks for `service`'s calls. Only a Stage has control calls (coordinator identity);
        every Coordinator call is a client's and needs the token, like Forward."""
        if not self.enabled:
            return []
        if self.token and not self.tls:
            log.warning("bearer token without TLS: it travels in clear text; add TLS (stage: "
                        "--tls-cert, --tls-key, --tls-ca; coordinator: hosts.yml tls:)")
        coordinator = self.coordinator_name if self.mutual_tls and service == STAGE_SERVICE \
            else None
        return [AuthInterceptor(token=self.token, coordinator_name=coordinator, service=service)]


def _warn_if_readable(path: Path) -> None:
    try:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            log.warning("private key %s is readable by other users; chmod 600 it", path)
    except OSError:
        pass


# -- the process default -------------------------------------------------------------------------
# What `channels.open_channel(address)` uses when the caller passes no `security`: read once
# from the environment (PIPEEDGE_TLS_CA, PIPEEDGE_TLS_CERT, PIPEEDGE_TLS_KEY, PIPEEDGE_TOKEN_FILE),
# else None (plaintext). An explicit `Security()` forces plaintext. The coordinator never relies
# on it: hosts.yml's credentials (`Deployment.control_security`) and the pipeline file's
# (`for_pipeline`) are passed to each channel.
_UNSET = object()
_default: object = _UNSET
ENV_VARS = {"ca": "PIPEEDGE_TLS_CA", "cert": "PIPEEDGE_TLS_CERT", "key": "PIPEEDGE_TLS_KEY",
            "token_file": "PIPEEDGE_TOKEN_FILE"}


def reset_default() -> None:
    """Forget what was read; the environment is read again on next use (tests)."""
    global _default
    _default = _UNSET


def default() -> Security | None:
    global _default
    if _default is _UNSET:
        env: dict[str, Any] = {k: os.environ[v] for k, v in ENV_VARS.items()
                               if os.environ.get(v)}
        _default = Security.from_files(**env) if env else None
    return _default  # type: ignore[return-value]


def from_paths(paths: dict | None, **overrides) -> Security | None:
    """Inverse of `Security.paths()` (pipeline.json's `security` entries); None when empty."""
    if not paths:
        return None
    return Security.from_files(ca=paths.get("ca"), cert=paths.get("cert"), key=paths.get("key"),
                               token=paths.get("token"), **overrides)


def for_pipeline(pipeline, role: str = "client") -> Security | None:
    """The credentials deploy recorded in the pipeline file for `role` (client or coordinator)."""
    recorded = pipeline.credentials
    return from_paths(recorded.for_role(role)) if recorded is not None else None


def client_security(security: Security | None = None, *, token: str | None = None,
                    address: str | None = None, pipeline_file=None) -> Security | None:
    """What an SDK client uses: `security` as given, else what the pipeline file records (when
    the client found its address there); `token` overrides the token."""
    if security is None and not address:
        from pipeedge.pipeline_file import DEFAULT_PATH, Pipeline

        path = Path(pipeline_file) if pipeline_file else DEFAULT_PATH
        if path.is_file():
            security = for_pipeline(Pipeline.load(path), "client")
    if token:
        security = (security or default() or Security()).with_token(token)
    return security


# -- token on outgoing calls ----------------------------------------------------------------------
class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


def _with_metadata(details, extra):
    md = list(details.metadata or ())
    md.extend(extra)
    return _CallDetails(details.method, details.timeout, md, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a sync channel."""

    def __init__(self, metadata) -> None:
        self._md = tuple(metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_metadata(details, self._md), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_with_metadata(details, self._md), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(_with_metadata(details, self._md), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(_with_metadata(details, self._md), request_iterator)


def _aio_details(details, extra):
    md = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()), *extra)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, md, details.credentials,
                                      details.wait_for_ready)


# grpc.aio files an interceptor under the first call type it implements, so one class each.
class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, md) -> None:
        self._md = md

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_aio_details(details, self._md), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, md) -> None:
        self._md = md

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_aio_details(details, self._md), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, md) -> None:
        self._md = md

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_aio_details(details, self._md), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, md) -> None:
        self._md = md

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_aio_details(details, self._md), request_iterator)


# -- server side: who may call what ---------------------------------------------------------------
def peer_names(context: grpc.ServicerContext) -> list[str]:
    """Certificate CN and SAN entries of the peer (empty without mutual TLS)."""
    auth = context.auth_context() or {}
    names = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names += [v.decode("utf-8", "replace") for v in auth.get(key, ())]
    return names


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks every Stage call before the servicer sees it (see the module docstring).

    `token`: required on Forward/Infer (and, without mutual TLS, on control calls).
    `coordinator_name`: required identity for control calls; None = no identity check (the
    server has no mutual TLS).
    """

    def __init__(self, *, token: str | None, coordinator_name: str | None,
                 service: str = STAGE_SERVICE) -> None:
        self._token = token.encode() if token else None
        self._coordinator = coordinator_name
        self._prefix = f"/{service}/"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        name = method[len(self._prefix):]
        if name in OPEN_METHODS:
            return handler
        if name in DATA_METHODS:
            if self._token is None:
                return handler
            check = self._check_token
        elif self._coordinator is not None:
            check = self._check_coordinator
        elif self._token is not None:
            check = self._check_token  # no identity to check without mutual TLS: the token
        else:
            return handler
        return _guarded(handler, lambda context: check(name, context))

    def _check_token(self, method: str, context) -> None:
        value = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        if value is None:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"{method} needs a bearer token (metadata 'authorization: Bearer "
                         "<token>'); pass token= to the client or set token: in hosts.yml")
        scheme, _, presented = str(value).strip().partition(" ")
        expected = self._token
        if expected is None or scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), expected):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"{method} refused: the bearer token is wrong; use the deployment's "
                         "token (the file passed to the stage's --token-file)")

    def _check_coordinator(self, method: str, context) -> None:
        names = peer_names(context)
        if self._coordinator in names:
            return
        who = f"'{names[0]}'" if names else "no client certificate"
        self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                     f"{method} is accepted only from the coordinator (certificate CN "
                     f"'{self._coordinator}'), not from {who}; call it through pipeedge-coord "
                     "with coordinator.crt from `pipeedge-coord certs`")

    @staticmethod
    def _refuse(context, code: grpc.StatusCode, message: str) -> None:
        log.warning("refused %s: %s", context.peer(), message)
        context.abort(code, message)


# -- undecodable messages on request streams ------------------------------------------------------
_UNDECODABLE = object()


class StreamDecodeGuard(grpc.ServerInterceptor):
    """Decodes request-stream messages itself, so an undecodable one ends its stream with
    INVALID_ARGUMENT (after the messages before it are answered) instead of gRPC's own abort.

    Found by tests/integration/test_fuzz.py: after gRPC-Python (1.85) aborts a streaming call because a
    message does not deserialize ("Exception deserializing request!"), `server.stop()` never
    completes, so one such message from any peer kept the stage from shutting down.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler.request_streaming or not handler.request_deserializer:
            return handler
        decode = handler.request_deserializer
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def tolerant(data: bytes):
            try:
                return decode(data)
            except Exception:  # noqa: BLE001
                return _UNDECODABLE

        def checked(requests, context):
            for n, request in enumerate(requests, 1):
                if request is _UNDECODABLE:
                    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    context.set_details(f"message {n} of the {method} stream is not a valid "
                                        "protobuf message of its type; the stream was ended")
                    return
                yield request

        if handler.response_streaming:
            inner_ss = handler.stream_stream
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: inner_ss(checked(requests, context), context),
                request_deserializer=tolerant,
                response_serializer=handler.response_serializer)
        inner_su = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(
            lambda requests, context: inner_su(checked(requests, context), context),
            request_deserializer=tolerant, response_serializer=handler.response_serializer)


def _guarded(handler: grpc.RpcMethodHandler, check) -> grpc.RpcMethodHandler:
    """The same handler, running `check(context)` before the method (and before it reads any
    request of a stream)."""
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream

        def stream_stream(requests, context):
            check(context)
            yield from inner(requests, context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)
    if handler.request_streaming:
        inner = handler.stream_unary

        def stream_unary(requests, context):
            check(context)
            return inner(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    if handler.response_streaming:
        inner = handler.unary_stream

        def unary_stream(request, context):
            check(context)
            yield from inner(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
    inner = handler.unary_unary

    def unary_unary(request, context):
        check(context)
        return inner(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
