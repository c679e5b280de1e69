"""One place for gRPC channel and server options: message sizes, keepalive, deadlines.

A ViT-Large microbatch of 8 cut after the MLP intermediate is ~32 MB (8x197x4096 + 8x197x1024
float32), so the message limit sits well above that; weights travel in chunks far below it.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from pipeedge.security import STAGE_SERVICE, Security, StreamDecodeGuard
from pipeedge.security import default as default_security

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
WEIGHT_CHUNK_BYTES = 2 * 1024 * 1024
# Control calls (assign may load and build a big shard) versus a status poke.
ASSIGN_DEADLINE_S = 600.0
CONTROL_DEADLINE_S = 10.0

_COMMON = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Edge links drop silently; keepalive pings find a dead peer in ~30 s instead of hours.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]

CHANNEL_OPTIONS = _COMMON + [
    # Large activations: bigger HTTP/2 windows keep a fast link full.
    ("grpc.http2.lookahead_bytes", 16 * 1024 * 1024),
    # A restarted host is used within a second or two: gRPC's default reconnect backoff grows
    # to 120 s after a long outage, and a channel waits that long before it tries again.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

SERVER_OPTIONS = _COMMON + [
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def open_channel(address: str, *, security: Security | None = None) -> grpc.Channel:
    """A channel to a PipeEdge server (stage or coordinator) with the project's options.

    `security` (see pipeedge.security): TLS with this party's certificate when it has a CA or
    certificate, and its bearer token on every call when it has one. None = the process default
    (`pipeedge.security.default`: PIPEEDGE_TLS_* variables, plaintext without them);
    `Security()` = plaintext.
    """
    if security is None:
        security = default_security()
    if security is None or not security.enabled:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = CHANNEL_OPTIONS + security.channel_options()
    channel = (grpc.secure_channel(address, security.channel_credentials(), options=options)
               if security.tls else grpc.insecure_channel(address, options=options))
    interceptors = security.client_interceptors()
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel


def open_aio_channel(address: str, *, security: Security | None = None) -> grpc.aio.Channel:
    if security is None:
        security = default_security()
    if security is None or not security.enabled:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = CHANNEL_OPTIONS + security.channel_options()
    interceptors = security.aio_client_interceptors() or None
    if security.tls:
        return grpc.aio.secure_channel(address, security.channel_credentials(), options=options,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def add_server_port(server: grpc.Server, address: str, *,
                    security: Security | None = None) -> int:
    """Bind `address` (mutual TLS when `security` has a certificate); returns the bound port."""
    port: int
    if security is not None and security.tls:
        port = server.add_secure_port(address, security.server_credentials())
    else:
        port = server.add_insecure_port(address)
    return port


def server_interceptors(security: Security | None,
                        service: str = STAGE_SERVICE) -> list[grpc.ServerInterceptor]:
    """What every server installs: the stream decode guard (pipeedge.security), then the
    authorization checks of `service` for `security` (none when it is None)."""
    return [StreamDecodeGuard()] + (security.server_interceptors(service) if security else [])


class _Health(health.HealthServicer):
    """The standard health service, with `List` (grpc.health.v1 advertises it; the library's
    servicer leaves it UNIMPLEMENTED and logs a traceback per call)."""

    def List(self, request: health_pb2.HealthListRequest,
             context: grpc.ServicerContext) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()})


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_standard_services(server: grpc.Server, service: str) -> health.HealthServicer:
    """What every PipeEdge server carries besides its own `service`: the standard
    grpc.health.v1 service (SERVING for "" and `service`; Check, Watch and List) and server
    reflection, both v1 (what current tools ask first) and v1alpha."""
    health_servicer = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (service, health.SERVICE_NAME, REFLECTION_V1, reflection.SERVICE_NAME)
    reflection_servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, server)
    # v1 has the same messages as v1alpha under another package: same wire format.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            reflection_servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))
    for name in ("", service):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health_servicer
