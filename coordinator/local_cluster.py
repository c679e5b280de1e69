"""Start N stage servers as separate local processes on loopback ports (demo, tests, benches).

Each server binds port 0 and reports the port it got through a ready file, so parallel runs
never collide on ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class LocalStage:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalCluster:
    """Context manager owning the stage processes; everything is stopped on exit."""

    def __init__(self, count: int, *, threads: int = 0, workdir: Path | None = None,
                 extra_args: tuple[str, ...] = (), start_timeout_s: float = 60.0) -> None:
        self.count = count
        self.threads = threads
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="pipeedge-cluster-")
        self.workdir = Path(workdir or self._tmp.name)
        self.stages: list[LocalStage] = []

    def __enter__(self) -> "LocalCluster":
        try:
            for i in range(self.count):
                self.stages.append(self.start_stage(f"stage{i}"))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start_stage(self, name: str, port: int = 0) -> LocalStage:
        ready = self.workdir / f"{name}.port"
        ready.unlink(missing_ok=True)
        log_path = self.workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "pipeedge.stage_server.cli", "--host", "127.0.0.1",
               "--port", str(port), "--name", name, "--ready-file", str(ready),
               "--cache-dir", str(self.workdir / "cache" / name), "--grace", "2",
               *(["--threads", str(self.threads)] if self.threads else []), *self.extra_args]
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout_s
        while not (ready.exists() and ready.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"stage {name} exited with {proc.returncode}; log:\n"
                                   f"{log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"stage {name} did not start within {self.start_timeout_s}s")
            time.sleep(0.05)
        return LocalStage(name, int(ready.read_text()), proc, log_path)

    def hosts_file(self, model: str, *, partition: str = "", weights: str = "random:0",
                   microbatch: int = 8, path: Path | None = None, **extra) -> Path:
        """Write a hosts.yml for these stages (what a user would write by hand)."""
        data = {"model": model, "weights": weights, "microbatch": microbatch,
                "pipeline_file": str(self.workdir / "pipeline.json"),
                "hosts": [{"name": s.name, "address": s.address} for s in self.stages], **extra}
        if partition:
            data["partition"] = partition
        path = path or self.workdir / "hosts.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.stages[index].process.send_signal(sig)
        self.stages[index].process.wait(timeout=30)

    def stop(self) -> None:
        for s in self.stages:
            if s.process.poll() is None:
                s.process.terminate()
        for s in self.stages:
            try:
                s.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.process.kill()
                s.process.wait()
        if self._tmp:
            self._tmp.cleanup()
