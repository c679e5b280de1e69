"""Request/result frames for the SDKs (sync and asyncio share these)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc
import torch

from pipeedge import codec, wire
from pipeedge.errors import PipelineError, error_for, status_from_int


def request_frame(request_id: str, inputs: Mapping[str, torch.Tensor],
                  timeout_s: float | None) -> wire.Frame:
    frame = codec.encode_tensors(wire.Frame(request_id=request_id), inputs)
    if timeout_s:
        frame.deadline_unix_ms = int((time.time() + timeout_s) * 1000)
    return frame


def result_tensors(frame: wire.Frame) -> dict[str, torch.Tensor]:
    """Decode a result frame or raise the typed error it carries."""
    if frame.error.code:
        raise error_for(status_from_int(frame.error.code), frame.error.message,
                        stage=frame.error.stage, request_id=frame.request_id)
    return codec.decode_tensors(frame.tensors)


def rpc_error(exc: grpc.RpcError, request_id: str = "") -> PipelineError:
    """Turn a grpc.RpcError from the entry stage into the SDK's typed error."""
    details = exc.details() or str(exc)
    stage = ""
    if details.startswith("[") and "] " in details:
        stage, details = details[1:].split("] ", 1)
    return error_for(exc.code(), details, stage=stage, request_id=request_id)
