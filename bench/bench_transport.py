"""One hop of Forward versus a plain TCP socket moving the same bytes, measured in one run.

The stage runs the ECHO backend (the whole Forward path: decode, validation, bounded queues,
encode, routing; no model), and each request carries one ViT-Base microbatch-8 activation
(8x197x768 float32 = 4.8 MB) down and back. The socket baseline moves exactly those byte counts
between two processes. Goal: Forward
reaches >= 0.7 of the socket's throughput. Prints MB/s, the ratio and CPU seconds per GB.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import torch

from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import PipelineClient
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl

REQUESTS = 60
WINDOW = 4

# The ceiling gRPC itself sets: a generic bidi method moving raw bytes, no protobuf, no stage.
_GRPC_ECHO_SERVER = r"""
import os, sys
from concurrent import futures
import grpc
from pipeedge import channels
up = int(sys.argv[1]); reply = os.urandom(up)
def echo(requests, context):
    for _ in requests:
        yield reply
srv = grpc.server(futures.ThreadPoolExecutor(8), options=channels.SERVER_OPTIONS)
srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
    "bench.Echo", {"Bytes": grpc.stream_stream_rpc_method_handler(echo)})])
print(srv.add_insecure_port("127.0.0.1:0"), flush=True); srv.start(); srv.wait_for_termination()
"""

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


def bench_raw_grpc(down: int, up: int) -> tuple[float, float]:
    import threading

    from pipeedge import channels

    proc = subprocess.Popen([sys.executable, "-c", _GRPC_ECHO_SERVER, str(up)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    channel = channels.open_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream("/bench.Echo/Bytes")
    payload = os.urandom(down)

    def run(n: int) -> None:
        slots = threading.Semaphore(WINDOW)

        def requests():
            for _ in range(n):
                slots.acquire()
                yield payload

        for _ in call(requests()):
            slots.release()

    run(4)
    cpu0, srv0, t0 = self_cpu(), cpu_seconds(proc.pid), time.perf_counter()
    run(REQUESTS)
    elapsed = time.perf_counter() - t0
    cpu = self_cpu() - cpu0 + cpu_seconds(proc.pid) - srv0
    channel.close()
    proc.kill()
    gb = REQUESTS * (down + up) / 1e9
    return gb * 1e3 / elapsed, cpu / gb


def bench_forward(cluster: LocalCluster, inputs: dict[str, torch.Tensor],
                  down: int, up: int) -> tuple[float, float]:
    stage = cluster.stages[0]
    ctl = StageControl(stage.name, stage.address)
    ctl.assign(pb.AssignRequest(model_name="echo", backend=pb.ECHO))
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
    inputs = {"hidden": torch.randn(8, 197, 768)}
    down = up = inputs["hidden"].numel() * 4
    print(f"payload per request: {down / 1e6:.1f} MB down, {up / 1e6:.1f} MB back; "
          f"{REQUESTS} requests, window {WINDOW}")
    sock_mbps, sock_cpu = bench_socket(down, up)
    raw_mbps, raw_cpu = bench_raw_grpc(down, up)
    with LocalCluster(1) as cluster:
        fwd_mbps, fwd_cpu = bench_forward(cluster, inputs, down, up)
    ratio = fwd_mbps / sock_mbps
    print(f"{'path':28s} {'MB/s':>10s} {'CPU s/GB':>10s}")
    print(f"{'plain TCP socket':28s} {sock_mbps:10.1f} {sock_cpu:10.2f}")
    print(f"{'raw gRPC bytes (ceiling)':28s} {raw_mbps:10.1f} {raw_cpu:10.2f}")
    print(f"{'gRPC Forward (1 hop)':28s} {fwd_mbps:10.1f} {fwd_cpu:10.2f}")
    print(f"ratio raw gRPC/socket: {raw_mbps / sock_mbps:.2f}; "
          f"Forward/raw gRPC: {fwd_mbps / raw_mbps:.2f}")
    print(f"ratio Forward/socket: {ratio:.2f} (goal >= 0.70) -> {'PASS' if ratio >= 0.7 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
