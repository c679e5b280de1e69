"""`pipeedge-coord serve` watching a pipeline the report deployed: the control plane's own CPU
while a client streams (health checks of every stage, re-plan checks), for the cost growth.

The report deploys in-process (timed), then hands the deployment to `serve` through its state
file, which `serve` adopts when every stage still holds it (what a restarted coordinator does),
so measuring the control plane costs no second deployment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipeedge.coordinator.epochs import EpochStore, state_path_for
from pipeedge.pipeline_file import Pipeline

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0


@contextlib.contextmanager
def served(hosts_file: Path, pipeline: Pipeline, pipeline_file: Path) -> Iterator[dict]:
    """Run `pipeedge-coord serve hosts_file` adopting `pipeline` (deployed from hosts_file).
    Yields {"pid": ..., "epoch": ...}; on exit stops it and adds "replans" (deployments it made
    while watching: 0 unless a stage failed its health checks)."""
    pipeline.save(pipeline_file)
    saved = json.loads(pipeline_file.read_text())
    saved.pop("entry", None)
    epoch = int(saved["extra"]["version"])
    EpochStore(state_path_for(pipeline_file)).record(epoch=epoch, pipeline=saved)
    exe = Path(sys.executable).with_name("pipeedge-coord")
    cmd = [str(exe), "--log-level", "WARNING", "serve", str(hosts_file), "--host", "127.0.0.1",
           "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("serving pipeline epoch"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    info = {"pid": proc.pid, "epoch": epoch}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pipeedge-coord serve did not start: {' | '.join(lines[-5:])}")
        served_epoch = int(next(ln for ln in lines if ln.startswith("serving")).split()[3])
        if served_epoch != epoch:
            raise RuntimeError(f"pipeedge-coord serve redeployed (epoch {served_epoch}) instead "
                               f"of adopting epoch {epoch}: {' | '.join(lines[-5:])}")
        yield info
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
        now = json.loads(pipeline_file.read_text())["extra"]["version"]
        info["replans"] = int(now != epoch)
        if now != epoch:
            log.warning("serve re-planned while watching: %s", " | ".join(lines[-5:]))
