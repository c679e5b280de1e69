"""`pipeedge-stage`: run one stateless stage server on this device."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from pipeedge.logs import setup_logging


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", "-p", default=50051, show_default=True,
              help="Port to listen on (0 = pick a free one).")
@click.option("--name", default=None, help="Stage name in status and errors [default: hostname:port].")
@click.option("--threads", "-t", default=0, type=int,
              help="Intra-op compute threads (0 = torch's default).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--cache-dir", default=Path.home() / ".cache" / "pipeedge", type=click.Path(
    path_type=Path), show_default=True, help="Pushed-weight and ONNX cache.")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None,
              help="Write the bound port here once serving (for scripts and tests).")
@click.option("--max-in-flight", default=64, show_default=True,
              help="Requests accepted but unanswered, over all clients; more get "
                   "RESOURCE_EXHAUSTED.")
@click.option("--max-streams", default=128, show_default=True,
              help="Open Forward streams and Infer calls at once; more get RESOURCE_EXHAUSTED "
                   "(16 more server threads stay free for health checks and control).")
@click.option("--grace", default=10.0, show_default=True, help="Seconds to drain on SIGTERM.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (off by default; 0 = "
                   "pick a free port, logged at start).")
@click.option("--max-push-bytes", default=16 << 30, show_default=True, type=int,
              help="Largest weight blob a push may announce.")
@click.option("--max-cache-bytes", default=64 << 30, show_default=True, type=int,
              help="Pushed-weight cache size; least recently used blobs are evicted.")
# Security (docs/security.md; files from `pipeedge-coord certs hosts.yml`).
@click.option("--tls-cert", envvar="PIPEEDGE_TLS_CERT", type=click.Path(path_type=Path),
              default=None, help="This stage's certificate (server, and client on its next hop).")
@click.option("--tls-key", envvar="PIPEEDGE_TLS_KEY", type=click.Path(path_type=Path),
              default=None, help="Private key of --tls-cert.")
@click.option("--tls-ca", envvar="PIPEEDGE_TLS_CA", type=click.Path(path_type=Path),
              default=None, help="Deployment CA: peers must present a certificate it signed.")
@click.option("--token-file", envvar="PIPEEDGE_TOKEN_FILE", type=click.Path(path_type=Path),
              default=None, help="Bearer token Forward/Infer must carry (also sent downstream).")
@click.option("--coordinator-cn", envvar="PIPEEDGE_COORDINATOR_CN", default="coordinator",
              show_default=True, help="Certificate CN/SAN that control calls (Assign, Release, "
              "PushWeights, Profile, MeasureLink) must come from.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def main(host: str, port: int, name: str | None, threads: int, device: str, cache_dir: Path,
         ready_file: Path | None, max_in_flight: int, max_streams: int, grace: float,
         metrics_port: int | None, max_push_bytes: int, max_cache_bytes: int,
         tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
         token_file: Path | None, coordinator_cn: str, log_level: str, log_format: str) -> None:
    """Serve one pipeline stage. It starts empty: `pipeedge-coord deploy` assigns its layers."""
    setup_logging(log_level, log_format)
    from pipeedge.security import Security, SecurityError
    from pipeedge.stage_server.server import serve  # after logging, so imports log properly

    try:
        security = Security.from_files(ca=tls_ca, cert=tls_cert, key=tls_key,
                                       token_file=token_file, coordinator_name=coordinator_cn)
        if security.tls:
            security.server_credentials()  # fail here, in one line, if a file is missing
    except SecurityError as exc:
        raise click.UsageError(str(exc)) from None

    serve(host=host, port=port, name=name or f"{socket.gethostname()}:{port}",
          cache_dir=cache_dir / "weights", threads=threads, device=device, grace_s=grace,
          ready_file=ready_file, max_in_flight=max_in_flight, max_streams=max_streams,
          metrics_port=metrics_port,
          security=security if security.enabled else None,
          cache_limits={"max_blob_bytes": max_push_bytes, "max_total_bytes": max_cache_bytes})


if __name__ == "__main__":
    main()
