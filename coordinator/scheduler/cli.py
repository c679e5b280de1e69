"""``sched-pipeline``: the seed's scheduler command line, plus links, objective and JSON.

Thin: parse flags, call ``schedule_files``, print. Errors are one line on stderr, exit 1.
"""

from __future__ import annotations

import logging

import click

from .errors import SchedulingError
from .output import render_json, render_yaml
from .profiles import Objective
from .solver import DEFAULT_DTYPE, DEFAULT_MODEL, DEFAULT_TIME_LIMIT_S, schedule_files

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model-name", default=DEFAULT_MODEL, show_default=True, help="Model name.")
@click.option(
    "-M", "--models-file", default="models.yml", show_default=True, help="Models YAML file."
)
@click.option(
    "-T",
    "--dev-types-file",
    default="device_types.yml",
    show_default=True,
    help="Device types YAML file.",
)
@click.option(
    "-D", "--dev-file", default="devices.yml", show_default=True, help="Devices YAML file."
)
@click.option(
    "-b",
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Microbatch size (profiles must exist for it).",
)
@click.option("-d", "--dtype", default=DEFAULT_DTYPE, show_default=True, help="Data type.")
@click.option(
    "-i",
    "--buffers-in",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Inbound data buffers per stage.",
)
@click.option(
    "-o",
    "--buffers-out",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Outbound data buffers per stage.",
)
@click.option(
    "--links",
    "links_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Measured links YAML (see links.example.yml); default: slower NIC, no latency.",
)
@click.option(
    "--objective",
    type=click.Choice([o.value for o in Objective]),
    default=Objective.THROUGHPUT.value,
    show_default=True,
    help="Minimise the bottleneck (throughput) or end-to-end latency.",
)
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIME_LIMIT_S,
    show_default=True,
    help="Seconds the certified search may take beyond the exhaustive limit (it stops early "
    "once proven optimal); then the best plan, its proven bound and gap are reported.",
)
@click.option("--json", "as_json", is_flag=True, help="Print stages with predicted costs as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Log the search to stderr.")
def main(
    model_name: str,
    models_file: str,
    dev_types_file: str,
    dev_file: str,
    batch_size: int,
    dtype: str,
    buffers_in: int,
    buffers_out: int,
    links_file: str | None,
    objective: str,
    time_limit_s: float,
    as_json: bool,
    verbose: bool,
) -> None:
    """Run the pipeline partition scheduling algorithm.

    Prints a YAML list mapping each host to its [first, last] layers, in stage order.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = schedule_files(
            model_name=model_name,
            models_file=models_file,
            dev_types_file=dev_types_file,
            dev_file=dev_file,
            links_file=links_file,
            batch_size=batch_size,
            dtype=dtype,
            buffers_in=buffers_in,
            buffers_out=buffers_out,
            objective=objective,
            time_limit_s=time_limit_s,
        )
    except SchedulingError as err:
        raise click.ClickException(str(err)) from None
    click.echo(render_json(result, model=model_name) if as_json else render_yaml(result))
