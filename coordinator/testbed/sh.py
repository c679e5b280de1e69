"""Run `ip`, `tc` and friends; a failure becomes a TestbedError naming the command."""

from __future__ import annotations

import logging
import subprocess

from pipeedge.coordinator.testbed.errors import TestbedError

log = logging.getLogger(__name__)


def run(*argv: str, check: bool = True, timeout_s: float = 30.0) -> str:
    """Run argv (no shell) and return stdout; raise TestbedError with stderr when it fails."""
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except FileNotFoundError:
        raise TestbedError(f"'{argv[0]}' is not installed; install iproute2 "
                           "(apt-get install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"'{' '.join(argv)}' hung for {timeout_s:g}s; check the host's "
                           "network set-up") from None
    if check and proc.returncode != 0:
        err = " ".join((proc.stderr or proc.stdout).split())
        raise TestbedError(f"'{' '.join(argv)}' failed: {err}")
    return proc.stdout


def succeeds(*argv: str) -> bool:
    """Whether argv exits 0 (for probes and best-effort clean-up)."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=30,
                              check=False).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
