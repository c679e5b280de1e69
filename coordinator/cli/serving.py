"""Long-running servers: `serve` (the control plane) and `serve-http` (the OpenAI-compatible API)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeedge.coordinator.cli.common import (
    user_errors,
)


@click.command()
@click.argument("hosts_file", type=click.Path(path_type=Path))
@click.option("--host", default="0.0.0.0", show_default=True, help="Control-plane address.")
@click.option("--port", default=50050, show_default=True, help="Control-plane port.")
@click.option("--check-interval", default=0.5, show_default=True,
              help="Seconds between health checks of every stage.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics of the control plane and its stages at "
                   "http://HOST:PORT/metrics (off by default).")
@click.option("--state-file", type=click.Path(path_type=Path), default=None,
              help="Where the last epoch and plan are kept across restarts [default: beside "
                   "the pipeline file, PIPELINE.state].")
@click.option("--dashboard-port", type=int, default=None,
              help="Serve the live dashboard at http://HOST:PORT/dashboard (off by default; "
                   "with a token in hosts.yml, the page asks for it).")
@user_errors
def serve(hosts_file, host, port, check_interval, metrics_port, state_file, dashboard_port):
    """Deploy, then keep the pipeline alive: re-plan around failed stages (SDK: coordinator=).

    A restart adopts the deployment the state file records when every stage still holds it.
    SIGHUP redeploys under a new epoch.
    """
    import contextlib
    import signal
    import threading

    from pipeedge.coordinator.control_plane import ControlPlane, start_server
    from pipeedge.coordinator.hosts import load_deployment

    dep = load_deployment(hosts_file)
    plane = ControlPlane(dep, pipeline_path=Path(dep.pipeline_file),
                         check_interval_s=check_interval, state_path=state_file)
    pipeline = plane.start()
    server, bound = start_server(plane, f"{host}:{port}")
    metrics = None
    if metrics_port is not None:  # monitoring: coordinator/metrics.py
        from pipeedge.coordinator.metrics import serve_control_plane_metrics
        metrics = serve_control_plane_metrics(plane, host=host, port=metrics_port)
    pages = contextlib.ExitStack()
    if dashboard_port is not None:  # apps/dashboard.py
        from pipeedge.apps import dashboard
        from pipeedge.apps.openai_http import running

        app = dashboard.make_app(dashboard.Dashboard([dashboard.PlaneSource(plane)]),
                                 token=dep.security.token if dep.security else None)
        url = pages.enter_context(running(app, host, dashboard_port))
        click.echo(f"dashboard at {url}/dashboard")
    plane.start_watching()
    click.echo(f"serving pipeline epoch {plane.version} ({pipeline.model}, entry "
               f"{pipeline.entry}) on {host}:{bound}; pipeline file {dep.pipeline_file}",
               nl=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: plane.request_redeploy("SIGHUP"))
    stop.wait()
    pages.close()
    plane.stop()
    server.stop(2).wait()
    if metrics:
        metrics.stop()


@click.command("serve-http")
@click.option("--pipeline", "pipeline_paths", multiple=True, type=click.Path(path_type=Path),
              help="Pipeline file written by deploy; repeat to serve several models (decoders "
                   "get completions and chat, encoders embeddings)  [default: pipeline.json]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Local model directory holding the tokenizer [default: the weights path, "
                   "else byte-level].")
@click.option("--timeout", default=60.0, show_default=True, help="Deadline per step in seconds.")
@click.option("--max-concurrency", default=16, show_default=True,
              help="Requests running at once; more get 429 with Retry-After.")
@click.option("--token", "token_spec", default=None,
              help="Require 'Authorization: Bearer <token>' (file:PATH, env:VAR or the token; "
                   "the gRPC token file works).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser calls from this origin (repeatable; '*' for any) "
                   "[default: CORS off].")
@click.option("--max-body", default=4 << 20, show_default=True,
              help="Largest request body in bytes (413 beyond).")
@user_errors
def serve_http(pipeline_paths, host, port, tokenizer, timeout, max_concurrency, token_spec,
               cors_origins, max_body):
    """Serve deployed models over an OpenAI-compatible HTTP API (SSE streaming)."""
    from pipeedge.apps.openai_http import serve as serve_openai
    from pipeedge.security import read_token

    token = read_token(token_spec) if token_spec else None
    serve_openai(pipeline_paths or [Path("pipeline.json")], host=host, port=port,
                 tokenizer=tokenizer, timeout_s=timeout, max_concurrency=max_concurrency,
                 token=token, cors_origins=cors_origins, max_body_bytes=max_body,
                 announce=click.echo)
