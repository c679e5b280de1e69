"""What moving frames costs this device: the fixed and per-MiB parts of a stage's wire work.

A stage spends CPU, under the same limit as its layers, receiving each input frame and sending
each output (gRPC, pipeedge/wire.py, the codec's checks and torch conversion, the runtime's
threads and queues). The layer profile does not see it, and on a 0.04-core device it is tens to
hundreds of ms per microbatch, so the scheduler charges it per stage (issue 18).

Measured in this process (so under this device's CPU limit) over a loopback: a throwaway gRPC
server on 127.0.0.1 port 0 runs the real Forward path (StageServicer + StageRuntime) and a
client in this process streams frames to it with a window, built and read by the SDK's own
functions. The shard returns one element, so each frame's bytes are sent once and received once
in this process: what a stage does with its input (received) and its output (sent). The steady
wall time per frame (under a CPU limit: CPU time / limit) at two sizes gives time(S) = a + b*S; a stage then pays
``frame_time_s + wire_time_s_per_mb * (MiB in + MiB out)`` with frame_time_s = a and
wire_time_s_per_mb = b/2 per MiB. The fixed part includes the client's frame handling, which
stands for the result frames a stage relays back upstream.

Profiling runs on an unassigned stage (the coordinator profiles before it deploys); this uses
its own server, servicer and runtime and tears all down, so the stage's own state is untouched.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from pipeedge import channels, wire
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client.frames import request_frame, result_tensors
from pipeedge.security import Security
from pipeedge.stage_server.backends.echo_backend import EchoBackend

SIZES = (8 * 1024, 2 * 2**20)  # a decode-sized frame, and a ViT-Base cut at batch 1-2
WINDOW = 4                      # frames in flight, like a client's window
WARMUP = 4                      # frames per size before timing
FRAMES = 8                      # frames per timed repeat
REPEATS = 5                     # repeats per size; the median is kept
# ~ 0.1 s of CPU at a full core: under 10 s at 0.04 core (bench: 8 KB ~0.7 ms, 2 MiB ~3 ms).


@dataclass(frozen=True)
class WireCost:
    frame_time_s: float        # seconds per microbatch (one frame in, one out), fixed part
    wire_time_s_per_mb: float  # seconds per MiB received or sent
    seconds: dict[int, float]  # measured wall seconds per loopback frame, by frame bytes


class _OneElement(EchoBackend):
    """The loopback's shard: checks like ECHO, returns one element (a tiny result frame)."""

    def run(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: t.reshape(-1)[:1] for name, t in tensors.items()}


def measure_wire_cost(sizes: tuple[int, int] = SIZES, *, frames: int = FRAMES,
                      repeats: int = REPEATS) -> WireCost:
    """Median steady wall time per frame at two sizes over a real Forward loopback, fitted."""
    from pipeedge.stage_server.runtime import StageRuntime
    from pipeedge.stage_server.servicer import StageServicer
    from pipeedge.stage_server.weight_cache import WeightCache

    with tempfile.TemporaryDirectory(prefix="pipeedge-wire-") as tmp:
        servicer = StageServicer("wire-profile", WeightCache(Path(tmp)))
        servicer.runtime = StageRuntime(
            pb.AssignRequest(model_name="wire-profile", backend=pb.ECHO, first_layer=1,
                             last_layer=1, stage_name="wire-profile"),
            _OneElement(), "wire-profile")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=channels.SERVER_OPTIONS)
        channel = None
        try:
            # Forward alone: nothing else of a stage is reachable on this port, even locally.
            forward = grpc.stream_stream_rpc_method_handler(
                servicer.Forward, request_deserializer=wire.parse,
                response_serializer=wire.serialize)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(wire.SERVICE, {"Forward": forward}),))
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            channel = channels.open_channel(f"127.0.0.1:{port}", security=Security())
            stub = wire.stage_stub(channel)
            seconds = {s: _per_frame(stub, s, frames, repeats) for s in sizes}
        finally:
            if channel is not None:
                channel.close()
            server.stop(grace=None)
            servicer.shutdown()
    (s1, t1), (s2, t2) = sorted(seconds.items())
    per_byte = max(t2 - t1, 0.0) / (s2 - s1)
    return WireCost(frame_time_s=max(t1 - per_byte * s1, 1e-6),
                    wire_time_s_per_mb=max(per_byte * 2**20 / 2, 1e-6), seconds=seconds)


def _per_frame(stub: object, nbytes: int, frames: int, repeats: int) -> float:
    """Median over repeats of the wall seconds per frame, `frames` frames at a time, on one
    stream with WINDOW in flight, after WARMUP frames."""
    inputs = {"hidden": torch.rand(nbytes // 4)}
    total = WARMUP + frames * repeats
    slots = threading.Semaphore(WINDOW)

    def requests() -> Iterator[wire.Frame]:
        for i in range(total):
            slots.acquire()
            yield request_frame(f"w{i}", inputs, None)

    done = []  # when each result came back
    for result in stub.Forward(requests(), timeout=120):  # type: ignore[attr-defined]
        result_tensors(result)  # raises the error a failed frame carries
        done.append(time.perf_counter())
        slots.release()
    if len(done) != total:
        raise RuntimeError(f"wire loopback answered {len(done)} of {total} frames")
    marks = done[WARMUP - 1::frames]
    return statistics.median((b - a) / frames for a, b in zip(marks, marks[1:], strict=False))
