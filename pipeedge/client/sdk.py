"""Synchronous client: one request (`infer`) or a pipelined stream of them (`infer_many`)."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import grpc
import torch

from pipeedge import channels
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client.frames import request_frame, resolve_address, result_tensors, rpc_error
from pipeedge.errors import DeadlineExceededError, StageUnavailableError

_DONE = object()


class PipelineClient:
    """Talks to a pipeline's first stage.

    Args:
        address: "host:port" of the first stage; if omitted, read from `pipeline_file`.
        pipeline_file: the file `pipeedge-coord deploy` wrote (default ./pipeline.json).
        timeout_s: deadline for each request.

    Example:
        >>> with PipelineClient("127.0.0.1:50051") as client:       # doctest: +SKIP
        ...     out = client.infer({"pixel_values": torch.rand(8, 3, 224, 224)})
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 timeout_s: float = 60.0) -> None:
        self.address = resolve_address(address, pipeline_file)
        self.timeout_s = timeout_s
        self._channel = channels.open_channel(self.address)
        self._stub = pb_grpc.StageStub(self._channel)
        self._prefix = uuid.uuid4().hex[:8]
        self._count = 0

    def __enter__(self) -> "PipelineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def infer(self, inputs: Mapping[str, torch.Tensor], *,
              timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """Run one microbatch through the pipeline and return the last stage's outputs."""
        timeout = timeout_s or self.timeout_s
        request_id = self._next_id()
        try:
            result = self._stub.Infer(request_frame(request_id, inputs, timeout),
                                      timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, request_id) from None
        return result_tensors(result)

    def infer_many(self, batches: Iterable[Mapping[str, torch.Tensor]], *, window: int = 4,
                   timeout_s: float | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Stream microbatches with up to `window` in flight; results come in input order.

        A request that fails raises its typed error at its position in the output.
        """
        timeout = timeout_s or self.timeout_s
        slots = threading.Semaphore(window)
        ids: list[str] = []
        stop = threading.Event()

        def requests():
            source = iter(batches)
            while True:
                # Take a slot before pulling the next input, so inputs are produced just in time.
                while not slots.acquire(timeout=0.2):
                    if stop.is_set():
                        return
                inputs = next(source, None)
                if inputs is None or stop.is_set():
                    return
                ids.append(self._next_id())
                yield request_frame(ids[-1], inputs, timeout)

        call = self._stub.Forward(requests())
        results: queue.Queue = queue.Queue()

        def receive():
            try:
                for frame in call:
                    results.put(frame)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    results.put(exc)
            results.put(_DONE)

        threading.Thread(target=receive, name="sdk-receive", daemon=True).start()
        arrived: dict[str, object] = {}
        position = 0
        try:
            while True:
                while position < len(ids) and ids[position] in arrived:
                    frame = arrived.pop(ids[position])
                    position += 1
                    yield result_tensors(frame)
                try:
                    item = results.get(timeout=timeout)
                except queue.Empty:
                    raise DeadlineExceededError(
                        f"no result from {self.address} within {timeout:.0f}s; a stage may be "
                        "stalled (check `pipeedge-coord status`)") from None
                if item is _DONE:
                    break
                if isinstance(item, grpc.RpcError):
                    raise rpc_error(item)
                arrived[item.request_id] = item
                slots.release()
            if position < len(ids):
                raise StageUnavailableError(f"stream to {self.address} ended with "
                                            f"{len(ids) - position} results missing")
        finally:
            stop.set()
            call.cancel()
