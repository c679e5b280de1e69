"""One hop of Forward versus a plain TCP socket and raw gRPC bytes, measured in one run.

The stage runs the ECHO backend (the whole Forward path: decode, validation, bounded queues,
encode, routing; no model), and each request carries one ViT-Base microbatch-8 activation
(8x197x768 float32 = 4.8 MB) down and back. The baselines move exactly those byte counts between
two processes. Every path runs ROUNDS times, interleaved (the host is shared: the spread shows
the noise). Goals (issue 18): Forward >= 0.9 of raw gRPC bytes and <= 3.0 CPU s/GB. Then the
round-trip latency of a decode-sized frame (8 KB) through one stage versus raw gRPC bytes.
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
ROUNDS = 3
SMALL = 8 * 1024      # a decode step's frame: 8 KB
PINGS = 300           # round trips per latency measurement

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


def latency_raw_grpc() -> list[float]:
    """Round trips (ms) of SMALL bytes each way over one raw gRPC stream, one at a time."""
    import queue

    from pipeedge import channels

    proc = subprocess.Popen([sys.executable, "-c", _GRPC_ECHO_SERVER, str(SMALL)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    channel = channels.open_channel(f"127.0.0.1:{port}")
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    replies = channel.stream_stream("/bench.Echo/Bytes")(iter(outbox.get, None))
    payload = os.urandom(SMALL)
    times = []
    for i in range(PINGS + 20):
        t0 = time.perf_counter()
        outbox.put(payload)
        next(replies)
        if i >= 20:  # warm-up
            times.append((time.perf_counter() - t0) * 1e3)
    outbox.put(None)
    channel.close()
    proc.kill()
    return times


def assign_echo(cluster: LocalCluster) -> str:
    stage = cluster.stages[0]
    ctl = StageControl(stage.name, stage.address)
    ctl.assign(pb.AssignRequest(model_name="echo", backend=pb.ECHO))
    ctl.close()
    return stage.address


def bench_forward(cluster: LocalCluster, inputs: dict[str, torch.Tensor],
                  down: int, up: int) -> tuple[float, float]:
    stage = cluster.stages[0]
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


def latency_forward(address: str) -> list[float]:
    """Round trips (ms) of one SMALL frame through the stage, one at a time (window 1)."""
    inputs = {"hidden": torch.randn(SMALL // 4)}
    times = []
    with PipelineClient(address) as client:
        stream = client.infer_many(_timed(inputs, times), window=1)
        for i, _ in enumerate(stream):
            times[i] = (time.perf_counter() - times[i]) * 1e3
    return times[20:]  # warm-up


def _timed(inputs: dict, times: list[float]):
    for _ in range(PINGS + 20):
        times.append(time.perf_counter())
        yield inputs


def _span(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min-max]"""
    v = sorted(values)
    return f"{fmt.format(v[len(v) // 2])} [{fmt.format(v[0])}-{fmt.format(v[-1])}]"


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main() -> int:
    inputs = {"hidden": torch.randn(8, 197, 768)}
    down = up = inputs["hidden"].numel() * 4
    print(f"payload per request: {down / 1e6:.1f} MB down, {down / 1e6:.1f} MB back; "
          f"{REQUESTS} requests, window {WINDOW}, {ROUNDS} rounds; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs: dict[str, list[tuple[float, float]]] = {"socket": [], "raw": [], "forward": []}
    with LocalCluster(1) as cluster:
        address = assign_echo(cluster)
        for r in range(ROUNDS):
            runs["socket"].append(bench_socket(down, up))
            runs["raw"].append(bench_raw_grpc(down, up))
            runs["forward"].append(bench_forward(cluster, inputs, down, up))
            print(f"round {r + 1}/{ROUNDS}: " + ", ".join(
                f"{k} {v[-1][0]:.0f} MB/s {v[-1][1]:.2f} CPU s/GB" for k, v in runs.items()),
                flush=True)
        raw_ms = latency_raw_grpc()
        fwd_ms = latency_forward(address)
    mbps = {k: [m for m, _ in v] for k, v in runs.items()}
    cpu = {k: [c for _, c in v] for k, v in runs.items()}
    print(f"\n{'path (median [min-max])':28s} {'MB/s':>22s} {'CPU s/GB':>20s}")
    for key, label in (("socket", "plain TCP socket"), ("raw", "raw gRPC bytes (ceiling)"),
                       ("forward", "gRPC Forward (1 hop)")):
        print(f"{label:28s} {_span(mbps[key]):>22s} {_span(cpu[key], '{:.2f}'):>20s}")
    # Ratios within a round (the same minute of a shared host), then their spread.
    vs_raw = [f / r for f, r in zip(mbps["forward"], mbps["raw"], strict=True)]
    vs_sock = [f / s for f, s in zip(mbps["forward"], mbps["socket"], strict=True)]
    fwd_cpu = sorted(cpu["forward"])[len(cpu["forward"]) // 2]
    ratio = sorted(vs_raw)[len(vs_raw) // 2]
    print(f"Forward/raw gRPC: {_span(vs_raw, '{:.2f}')} (goal >= 0.90) -> "
          f"{'PASS' if ratio >= 0.9 else 'BELOW GOAL'}")
    print(f"Forward CPU: {fwd_cpu:.2f} s/GB (goal <= 3.0) -> "
          f"{'PASS' if fwd_cpu <= 3.0 else 'BELOW GOAL'}")
    print(f"Forward/socket: {_span(vs_sock, '{:.2f}')}")
    print(f"\n8 KB round trip, one at a time ({PINGS}): raw gRPC p50 {_pct(raw_ms, 0.5):.2f} ms "
          f"p90 {_pct(raw_ms, 0.9):.2f} ms; Forward through 1 stage p50 {_pct(fwd_ms, 0.5):.2f}"
          f" ms p90 {_pct(fwd_ms, 0.9):.2f} ms (+{_pct(fwd_ms, 0.5) - _pct(raw_ms, 0.5):.2f} ms"
          " for the stage: decode, checks, queues, encode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
