"""Start N stage servers as separate local processes on loopback ports (demo, tests, benches).

Each server binds port 0 and reports the port it got through a ready file, so parallel runs
never collide on ports. `tls=True` / `token=...` start secured stages (docs/security.md): a CA
and certificates under workdir/certs, each stage with its own certificate and the token.
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


@dataclass(frozen=True)
class _Named:  # what certs.make_certs needs of a host
    name: str
    address: str
    peer_address: str = ""


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
                 extra_args: tuple[str, ...] = (), start_timeout_s: float = 60.0,
                 tls: bool = False, token: str | bool | None = None) -> None:
        self.count = count
        self.threads = threads
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="pipeedge-cluster-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.stages: list[LocalStage] = []
        self.tls = tls
        self.certs_dir = self.workdir / "certs"
        self.token_path: Path | None = None
        if tls or token:
            self.certs_dir.mkdir(parents=True, exist_ok=True)
        if token:
            from pipeedge.coordinator.certs import write_token

            self.token_path = self.certs_dir / "token"
            if token is True:
                write_token(self.token_path, overwrite=True)
            else:
                self.token_path.write_text(str(token) + "\n")
        if tls:
            from pipeedge.coordinator.certs import make_certs

            make_certs([_Named(f"stage{i}", "127.0.0.1") for i in range(count)],
                       self.certs_dir, days=2, token=False, coordinator_hosts=("127.0.0.1",))

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
               *(["--threads", str(self.threads)] if self.threads else []),
               *self._security_args(name), *self.extra_args]
        log = open(log_path, "w")
        # Stages get credentials from the options above only, never from this process' env.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIPEEDGE_TLS_", "PIPEEDGE_TOKEN", "PIPEEDGE_COORDINATOR"))}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**env, "PYTHONUNBUFFERED": "1"})
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

    def _security_args(self, name: str) -> list[str]:
        args = ["--token-file", str(self.token_path)] if self.token_path else []
        if self.tls:
            if not (self.certs_dir / f"{name}.crt").exists():  # a stage started later
                from pipeedge.coordinator.certs import Party, issue, load_or_create_ca

                ca_cert, ca_key, _ = load_or_create_ca(self.certs_dir)
                issue(Party(name, ("127.0.0.1",)), ca_cert, ca_key, self.certs_dir, days=2)
            args += ["--tls-ca", str(self.certs_dir / "ca.crt"),
                     "--tls-cert", str(self.certs_dir / f"{name}.crt"),
                     "--tls-key", str(self.certs_dir / f"{name}.key")]
        return args

    def security(self, identity: str = "coordinator", *, token: bool = True):
        """Credentials of `identity` (coordinator, client or a stage name) in this cluster's
        deployment, with its token unless `token=False`."""
        from pipeedge.security import Security

        tls = self.tls and identity
        return Security.from_files(
            ca=self.certs_dir / "ca.crt" if self.tls else None,
            cert=self.certs_dir / f"{identity}.crt" if tls else None,
            key=self.certs_dir / f"{identity}.key" if tls else None,
            token_file=self.token_path if token and self.token_path else None)

    def hosts_file(self, model: str, *, partition: str = "", weights: str = "random:0",
                   microbatch: int = 8, path: Path | None = None, **extra) -> Path:
        """Write a hosts.yml for these stages (what a user would write by hand)."""
        data = {"model": model, "weights": weights, "microbatch": microbatch,
                "pipeline_file": str(self.workdir / "pipeline.json"),
                "hosts": [{"name": s.name, "address": s.address} for s in self.stages], **extra}
        if self.tls:
            data.setdefault("tls", str(self.certs_dir))
        if self.token_path:
            data.setdefault("token", f"file:{self.token_path}")
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
