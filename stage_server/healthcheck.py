"""Probe a stage server's standard gRPC health service (grpc.health.v1); exit 0 when SERVING.

For container health checks, systemd, scripts:

    python -m pipeedge.stage_server.healthcheck                    # $PIPEEDGE_HOST:$PIPEEDGE_PORT
    python -m pipeedge.stage_server.healthcheck --address 10.0.0.7:50051 --timeout 2

Without --address it probes the port in $PIPEEDGE_PORT (default 50051) on $PIPEEDGE_HOST, or on
127.0.0.1 when that is unset or a wildcard (0.0.0.0, ::). Exit codes: 0 SERVING, 1 anything
else (NOT_SERVING, unreachable, timeout), 2 bad arguments. Imports grpc only (no torch), so a
probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys

_WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def default_address() -> str:
    host = os.environ.get("PIPEEDGE_HOST", "").strip()
    port = os.environ.get("PIPEEDGE_PORT", "").strip() or "50051"
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 literal
    return f"{host}:{port}"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(serving, one-line description) for the health of `service` at `address`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s,
                wait_for_ready=True)
        except grpc.RpcError as exc:
            return False, f"{address}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeedge.stage_server.healthcheck",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None,
                        help="host:port [default: $PIPEEDGE_HOST:$PIPEEDGE_PORT, see above]")
    parser.add_argument("--service", default="",
                        help="service name; '' (default) is the server as a whole")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds [default: 3]")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    serving, line = check(args.address or default_address(), args.service, args.timeout)
    if not args.quiet:
        print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
