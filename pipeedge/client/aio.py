"""asyncio client: the same verbs as `PipelineClient`, awaitable, with the same failover.

It runs on a `PipelineClient` (its request multiplexer, retry policy and pipeline view) in
worker threads, so there is one implementation of failover, resends and fencing, not two.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pipeedge.client.retry import RetryPolicy
from pipeedge.client.sdk import PipelineClient
from pipeedge.security import Security

_END = object()
# Blocking calls (infer, streams) in flight at once per client.
MAX_CONCURRENT_CALLS = 64


class AsyncPipelineClient:
    """Arguments as `PipelineClient` (address / pipeline_file / coordinator, timeout_s, retry,
    security, token).

    Example:
        >>> async with AsyncPipelineClient(coordinator="10.0.0.1:50050") as client:  # doctest: +SKIP
        ...     out = await client.infer(inputs)
        ...     async for out in client.stream(batches, window=8):
        ...         ...
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 coordinator: str | None = None, timeout_s: float = 60.0,
                 retry: RetryPolicy | None = None, security: Security | None = None,
                 token: str | None = None) -> None:
        self._client = PipelineClient(address, pipeline_file=pipeline_file,
                                      coordinator=coordinator, timeout_s=timeout_s, retry=retry,
                                      security=security, token=token)
        self.timeout_s = timeout_s
        # Blocking calls run here (asyncio's default pool has only cores + 4 threads, which
        # would cap concurrent requests far below what one pipeline carries).
        self._pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS,
                                        thread_name_prefix="pipeedge-aio")

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def version(self) -> int:
        return self._client.version

    @property
    def recoveries(self) -> list[float]:
        return self._client.recoveries

    async def __aenter__(self) -> AsyncPipelineClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._run(self._client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs))

    async def infer(self, inputs: Mapping[str, torch.Tensor], *,
                    timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """One microbatch through the pipeline (resent after a failover like the sync client)."""
        return await self._run(self._client.infer, inputs, timeout_s=timeout_s)

    async def stream(self, batches: Iterable | AsyncIterable, *, window: int = 4,
                     timeout_s: float | None = None) -> AsyncIterator[dict[str, torch.Tensor]]:
        """Results in input order, with at most `window` requests in flight. Inputs (a plain
        or an async iterable) are pulled only when a slot is free."""
        loop = asyncio.get_running_loop()
        results: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        inputs = _sync_inputs(batches, loop, stop) if isinstance(batches, AsyncIterable) \
            else iter(batches)

        def run() -> None:
            outputs = self._client.infer_many(inputs, window=window, timeout_s=timeout_s)
            try:
                for out in outputs:
                    loop.call_soon_threadsafe(results.put_nowait, out)
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                loop.call_soon_threadsafe(results.put_nowait, exc)
            finally:
                outputs.close()
                loop.call_soon_threadsafe(results.put_nowait, _END)

        loop.run_in_executor(self._pool, run)
        try:
            while True:
                item = await results.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the worker ends at its next result

    async def infer_many(self, batches: Iterable | AsyncIterable, *, window: int = 4,
                         timeout_s: float | None = None) -> list[dict[str, torch.Tensor]]:
        """`stream` collected into a list."""
        return [out async for out in self.stream(batches, window=window, timeout_s=timeout_s)]


def _sync_inputs(batches: AsyncIterable, loop: asyncio.AbstractEventLoop,
                 stop: threading.Event):
    """An async iterable read from a worker thread, one item at a time, on the caller's loop."""
    it = batches.__aiter__()
    while not stop.is_set():
        try:
            yield asyncio.run_coroutine_threadsafe(it.__anext__(), loop).result()
        except StopAsyncIteration:
            return
