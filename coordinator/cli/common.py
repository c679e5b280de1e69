"""What every `pipeedge-coord` command shares: the one-line error, credentials, plan options."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from pipeedge.errors import PipeEdgeError

PIPELINE_OPT = click.option("--pipeline", "pipeline_path", default="pipeline.json",
                            show_default=True, type=click.Path(path_type=Path),
                            help="Pipeline file written by deploy.")

# Errors that are the user's to fix. PipeEdgeError is ours; OSError covers missing or unreadable
# files and refused connections; ValueError/RuntimeError are what YAML, torch and the config
# parsers raise for a bad file or argument, with messages that already name the thing.
USER_ERRORS = (PipeEdgeError, OSError, ValueError, RuntimeError)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def user_errors(command):
    """Print any of USER_ERRORS as one line (`error: ...`, exit code 2) instead of a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return run


def pipeline_credentials(pipeline):
    """The coordinator credentials deploy recorded in the pipeline file (docs/security.md), for
    every channel a command opens; None when none were recorded (a deployment without tls:/
    token:): channels then use the process default (PIPEEDGE_TLS_* variables, else plaintext)."""
    from pipeedge.security import for_pipeline

    return for_pipeline(pipeline, "coordinator")


def plan_for(hosts_file, partition, model, microbatch, progress):
    """Load hosts.yml and plan: partition, or profile-if-missing + scheduler."""
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.hosts import load_deployment

    dep = load_deployment(hosts_file, partition=partition, model=model, microbatch=microbatch)
    planning.ensure_profiles(dep, progress=progress)
    return dep, planning.plan(dep)


_PLAN_OPTIONS = [
    click.argument("hosts_file", type=click.Path(path_type=Path)),
    click.option("--partition", "-pt", default=None,
                 help="Manual partition, e.g. 1,24,25,48 (skips the scheduler)."),
    click.option("--model", "-m", default=None, help="Override the model in hosts.yml."),
    click.option("--microbatch", "-b", type=int, default=None,
                 help="Override the microbatch size."),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
]


def plan_options(fn):
    for option in reversed(_PLAN_OPTIONS):
        fn = option(fn)
    return fn
