"""`pipeedge-coord`: deploy, inspect, use and benchmark a pipeline. Commands stay thin.

One module per command group; each command is a click command decorated with `user_errors`
(common.py), which turns any PipeEdgeError into a one-line `error: ...` and exit code 2.
"""

from __future__ import annotations

import click

from pipeedge.coordinator.cli import deploying, serving, testbed, using
from pipeedge.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
def main(log_level: str, log_format: str) -> None:
    """PipeEdge coordinator: splits a model across stage servers and drives the pipeline."""
    setup_logging(log_level, log_format)


for _command in (deploying.deploy, deploying.plan, deploying.profile, deploying.measure_links_cmd,
                 serving.serve, using.status, using.infer, using.bench, deploying.release,
                 deploying.export_onnx, using.eval_cmd, using.dataset, deploying.certs,
                 using.list_models, serving.serve_http, testbed.testbed):
    main.add_command(_command)
