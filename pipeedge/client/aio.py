"""asyncio clients: the same verbs as `PipelineClient` and `TextGenerator`, awaitable, with the
same failover.

They run on the sync clients (request multiplexer, retry policy, pipeline view, generation
sessions) in worker threads, so there is one implementation of failover, resends and fencing, not
two; `iterate_in_thread` is the one bridge from their blocking iterators to async ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import torch

from pipeedge.client.generate import SamplingParams, TextGenerator, TokenEvent
from pipeedge.client.retry import RetryPolicy
from pipeedge.client.sdk import PipelineClient
from pipeedge.security import Security

_END = object()
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Inputs = Iterable[Mapping[str, torch.Tensor]] | AsyncIterable[Mapping[str, torch.Tensor]]
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

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._run(self._client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs))

    async def infer(self, inputs: Mapping[str, torch.Tensor], *,
                    timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """One microbatch through the pipeline (resent after a failover like the sync client)."""
        return await self._run(self._client.infer, inputs, timeout_s=timeout_s)

    async def stream(self, batches: Inputs, *, window: int = 4,
                     timeout_s: float | None = None) -> AsyncIterator[dict[str, torch.Tensor]]:
        """Results in input order, with at most `window` requests in flight. Inputs (a plain
        or an async iterable) are pulled only when a slot is free."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        inputs = _sync_inputs(batches, loop, stop) if isinstance(batches, AsyncIterable) \
            else iter(batches)
        outputs = iterate_in_thread(
            lambda: self._client.infer_many(inputs, window=window, timeout_s=timeout_s),
            self._pool)
        try:
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    yield out
        finally:
            stop.set()  # no more inputs are pulled

    async def infer_many(self, batches: Inputs, *, window: int = 4,
                         timeout_s: float | None = None) -> list[dict[str, torch.Tensor]]:
        """`stream` collected into a list."""
        return [out async for out in self.stream(batches, window=window, timeout_s=timeout_s)]


def _sync_inputs(batches: AsyncIterable[T], loop: asyncio.AbstractEventLoop,
                 stop: threading.Event) -> Iterator[T]:
    """An async iterable read from a worker thread, one item at a time, on the caller's loop."""
    it = batches.__aiter__()
    while not stop.is_set():
        try:
            # __anext__ gives a coroutine (async def) or an async generator's asend object, which
            # is one too; collections.abc only promises an Awaitable.
            step = cast(Coroutine[Any, Any, T], it.__anext__())
            yield asyncio.run_coroutine_threadsafe(step, loop).result()
        except StopAsyncIteration:
            return


class AsyncTextGenerator:
    """Awaitable generation on a `TextGenerator` (given, or built from the same arguments):
    its token events as they come, each generation driven on a thread of its own.

    Example:
        >>> async with AsyncTextGenerator(pipeline_file="pipeline.json") as gen:  # doctest: +SKIP
        ...     async for ev in gen.generate_many([ids], SamplingParams(max_new_tokens=8)):
        ...         print(ev.text, end="")
    """

    def __init__(self, generator: TextGenerator | None = None, **kwargs: Any) -> None:
        self.generator = generator if generator is not None else TextGenerator(**kwargs)

    async def __aenter__(self) -> AsyncTextGenerator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.generator.close()

    def generate_many(self, runs: list[list[int]], params: SamplingParams, *,
                      concurrency: int = 4) -> AsyncGenerator[TokenEvent, None]:
        """`TextGenerator.generate_many`'s events; closing the iterator ends the sessions."""
        return iterate_in_thread(lambda: self.generator.generate_many(
            runs, params, concurrency=concurrency))


async def iterate_in_thread(make_iterator: Callable[[], Generator[T, None, None]],
                            executor: ThreadPoolExecutor | None = None) -> AsyncGenerator[T, None]:
    """The items of a blocking iterator, made and driven on a worker thread (of `executor`,
    else its own), as they come; its exceptions are raised here. Closing this ends the worker
    at its next item, which then closes the iterator (ending its calls or sessions)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()  # items, an exception, then _END
    stop = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is waiting
            stop.set()

    def run() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    put(item)
                    if stop.is_set():
                        break
            finally:
                iterator.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            put(exc)
        finally:
            put(_END)

    if executor is None:
        threading.Thread(target=run, name="pipeedge-aio-iter", daemon=True).start()
    else:
        loop.run_in_executor(executor, run)
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)  # neither _END nor an exception: one of the iterator's items
    finally:
        stop.set()
