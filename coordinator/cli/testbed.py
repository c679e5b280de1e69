"""`testbed up|down|status`: emulated edge devices on this host (namespaces, tc, cgroups)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeedge.coordinator.cli.common import (
    fail,
    user_errors,
)

_STATE_DIR_OPT = click.option("--state-dir", default="/run/pipeedge-testbed", show_default=True,
                              type=click.Path(path_type=Path), help="Testbed state and logs.")


@click.group()
def testbed() -> None:
    """Emulated edge devices on this host (namespaces, tc, cgroups); needs root."""


@testbed.command("up")
@click.argument("testbed_file", type=click.Path(path_type=Path))
@click.option("--hosts-out", type=click.Path(path_type=Path), default=None,
              help="Where to write hosts.yml [default: hosts_file in the testbed file].")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Override state_dir of the testbed file.")
@user_errors
def testbed_up(testbed_file, hosts_out, state_dir):
    """Create the devices in TESTBED_FILE, start their stage servers, write hosts.yml."""
    from pipeedge.coordinator.tables import render
    from pipeedge.coordinator.testbed import load_spec, up

    spec = load_spec(testbed_file, hosts_file=str(hosts_out.resolve()) if hosts_out else None,
                     state_dir=str(state_dir) if state_dir else None)
    state = up(spec)
    click.echo(render(["device", "type", "address", "cpu", "mem_mb", "link Mbps"],
                      [[d.name, d.type, d.endpoint, f"{d.cpu:g}", f"{d.mem_mb:g}",
                        f"{d.bw_mbps:g}"] for d in state.devices]))
    click.echo(f"\ntestbed {state.prefix} up; coordinator at {state.host_address}; hosts file "
               f"{state.hosts_file}\ndeploy with: pipeedge-coord deploy {state.hosts_file}")


@testbed.command("down")
@click.argument("testbed_file", required=False, type=click.Path(path_type=Path))
@click.option("--name", "names", multiple=True, help="Testbed name (prefix); repeatable "
              "[default: the testbed file's, else every testbed in --state-dir and 'petb'].")
@_STATE_DIR_OPT
@user_errors
def testbed_down(testbed_file, names, state_dir):
    """Remove every namespace, link, qdisc, cgroup and stage process of a testbed."""
    from pipeedge.coordinator.testbed import down, load_spec
    from pipeedge.coordinator.testbed.naming import DEFAULT_PREFIX
    from pipeedge.coordinator.testbed.state import known_prefixes

    if testbed_file:
        spec = load_spec(testbed_file)
        names, state_dir = (*names, spec.name), Path(spec.state_dir)
    names = names or tuple(sorted({*known_prefixes(state_dir), DEFAULT_PREFIX}))
    remaining = {n: down(n, state_dir) for n in dict.fromkeys(names)}
    for name, left in remaining.items():
        click.echo(f"testbed {name}: " + ("down" if left.empty() else
                                          f"still present: {left.describe()}"))
    if any(not left.empty() for left in remaining.values()):
        sys.exit(1)


@testbed.command("status")
@click.option("--name", default=None, help="Testbed name [default: every testbed that is up].")
@_STATE_DIR_OPT
@user_errors
def testbed_status(name, state_dir):
    """Show each emulated device: process, health, CPU and link caps, throttling."""
    from pipeedge.coordinator.tables import render
    from pipeedge.coordinator.testbed.state import known_prefixes
    from pipeedge.coordinator.testbed.status import HEADERS, status_rows

    prefixes = [name] if name else known_prefixes(state_dir)
    if not prefixes:
        fail(f"no testbed is up (nothing in {state_dir}); run `pipeedge-coord testbed up "
              "testbed.yml`")
    for prefix in prefixes:
        click.echo(f"testbed {prefix}\n" + render(HEADERS, status_rows(prefix, state_dir)))
