"""One hop of Forward versus a plain TCP socket moving the same bytes, measured in one run.

The stage holds ViT-Base layer 2 (attention output + residual: one add), so each request carries
a microbatch-8 `hidden` and `residual` (2 x 4.8 MB) down and a 4.8 MB `hidden` back. The socket
baseline sends exactly those byte counts down and back between two processes. Goal: Forward
reaches >= 0.7 of the socket's throughput. Prints MB/s, the ratio and CPU seconds per GB.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import torch

from pipeedge.client import PipelineClient
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl
from pipeedge._proto import stage_pb2 as pb

MODEL = "google/vit-base-patch16-224"
REQUESTS = 60
WINDOW = 4

_ECHO_SERVER = r"""
import socket, sys
down, up = int(sys.argv[1]), int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", 0)); print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray(down); view = memoryview(buf); reply = bytes(up)
while True:
    got = 0
    while got < down:
        n = conn.recv_into(view[got:])
        if n == 0: sys.exit(0)
        got += n
    conn.sendall(reply)
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def bench_socket(down: int, up: int) -> tuple[float, float]:
    """Returns (MB/s of payload both ways, CPU seconds per GB, both processes)."""
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, str(down), str(up)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload, reply = os.urandom(down), bytearray(up)
    view = memoryview(reply)
    cpu0, srv0, t0 = self_cpu(), cpu_seconds(proc.pid), time.perf_counter()
    for _ in range(REQUESTS):
        sock.sendall(payload)
        got = 0
        while got < up:
            got += sock.recv_into(view[got:])
    elapsed = time.perf_counter() - t0
    cpu = self_cpu() - cpu0 + cpu_seconds(proc.pid) - srv0
    sock.close()
    proc.wait(timeout=10)
    gb = REQUESTS * (down + up) / 1e9
    return gb * 1e3 / elapsed, cpu / gb


def bench_forward(cluster: LocalCluster, inputs: dict[str, torch.Tensor],
                  down: int, up: int) -> tuple[float, float]:
    stage = cluster.stages[0]
    ctl = StageControl(stage.name, stage.address)
    ctl.assign(pb.AssignRequest(model_name=MODEL, first_layer=2, last_layer=2,
                                weights=pb.WeightSource(random_seed=0)))
    ctl.close()
    with PipelineClient(stage.address) as client:
        for _ in client.infer_many([inputs] * 4, window=WINDOW):
            pass  # warm-up
        cpu0, srv0, t0 = self_cpu(), cpu_seconds(stage.process.pid), time.perf_counter()
        for _ in client.infer_many([inputs] * REQUESTS, window=WINDOW):
            pass
        elapsed = time.perf_counter() - t0
        cpu = self_cpu() - cpu0 + cpu_seconds(stage.process.pid) - srv0
    gb = REQUESTS * (down + up) / 1e9
    return gb * 1e3 / elapsed, cpu / gb


def main() -> int:
    hidden = torch.randn(8, 197, 768)
    inputs = {"hidden": hidden, "residual": torch.randn_like(hidden)}
    down = sum(t.numel() * t.element_size() for t in inputs.values())
    up = hidden.numel() * 4
    print(f"payload per request: {down / 1e6:.1f} MB down, {up / 1e6:.1f} MB back; "
          f"{REQUESTS} requests, window {WINDOW}")
    sock_mbps, sock_cpu = bench_socket(down, up)
    with LocalCluster(1) as cluster:
        fwd_mbps, fwd_cpu = bench_forward(cluster, inputs, down, up)
    ratio = fwd_mbps / sock_mbps
    print(f"{'path':28s} {'MB/s':>10s} {'CPU s/GB':>10s}")
    print(f"{'plain TCP socket':28s} {sock_mbps:10.1f} {sock_cpu:10.2f}")
    print(f"{'gRPC Forward (1 hop)':28s} {fwd_mbps:10.1f} {fwd_cpu:10.2f}")
    print(f"ratio Forward/socket: {ratio:.2f} (goal >= 0.70) -> {'PASS' if ratio >= 0.7 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
