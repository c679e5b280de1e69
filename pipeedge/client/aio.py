"""asyncio client: the same verbs as `PipelineClient`, awaitable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
import torch

from pipeedge import channels
from pipeedge._proto import stage_pb2_grpc as pb_grpc
from pipeedge.client.frames import request_frame, resolve_address, result_tensors, rpc_error
from pipeedge.security import Security, client_security


class AsyncPipelineClient:
    """Example:
        >>> async with AsyncPipelineClient("127.0.0.1:50051") as client:  # doctest: +SKIP
        ...     out = await client.infer(inputs)
    """

    def __init__(self, address: str | None = None, *, pipeline_file: str | Path | None = None,
                 timeout_s: float = 60.0, security: Security | None = None,
                 token: str | None = None) -> None:
        self.address = resolve_address(address, pipeline_file)
        self.timeout_s = timeout_s
        # Credentials as in PipelineClient: explicit, else the pipeline file's, else the default.
        self._security = client_security(security, token=token, address=address,
                                         pipeline_file=pipeline_file)
        self._channel = channels.open_aio_channel(self.address, security=self._security)
        self._stub = pb_grpc.StageStub(self._channel)
        self._prefix = uuid.uuid4().hex[:8]
        self._count = 0

    async def __aenter__(self) -> "AsyncPipelineClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def infer(self, inputs: Mapping[str, torch.Tensor], *,
                    timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        timeout = timeout_s or self.timeout_s
        self._count += 1
        request_id = f"{self._prefix}-{self._count}"
        try:
            result = await self._stub.Infer(request_frame(request_id, inputs, timeout),
                                            timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, request_id) from None
        return result_tensors(result)

    async def infer_many(self, batches: Iterable[Mapping[str, torch.Tensor]], *,
                         window: int = 4) -> list[dict[str, torch.Tensor]]:
        """Run microbatches with up to `window` in flight; results in input order."""
        slots = asyncio.Semaphore(window)

        async def one(inputs):
            async with slots:
                return await self.infer(inputs)

        return list(await asyncio.gather(*(one(b) for b in batches)))
