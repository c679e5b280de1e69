"""Request/result frames for the SDKs (sync and asyncio share these)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import torch

from pipeedge import codec
from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipelineError, error_for, status_from_int
from pipeedge.pipeline_file import Pipeline


# Failures that a new pipeline can cure: a dead or reassigned stage, or one not yet redeployed.
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                   grpc.StatusCode.CANCELLED)
# A hung entry stage (alive connection, no answers) never breaks a call: after this long without
# a result a client asks whether the coordinator has re-planned, and if so moves.
STALL_CHECK_S = 1.0


def resolve_address(address: str | None, pipeline_file: str | Path | None) -> str:
    if address:
        return address
    return Pipeline.load(Path(pipeline_file) if pipeline_file else Path("pipeline.json")).entry


def request_frame(request_id: str, inputs: Mapping[str, torch.Tensor],
                  timeout_s: float | None) -> pb.Frame:
    frame = codec.encode_tensors(pb.Frame(request_id=request_id), inputs)
    if timeout_s:
        frame.deadline_unix_ms = int((time.time() + timeout_s) * 1000)
    return frame


def result_tensors(frame: pb.Frame) -> dict[str, torch.Tensor]:
    """Decode a result frame or raise the typed error it carries."""
    if frame.error.code:
        raise error_for(status_from_int(frame.error.code), frame.error.message,
                        stage=frame.error.stage, request_id=frame.request_id)
    return codec.decode_tensors(frame.tensors)


def rpc_error(exc, request_id: str = "") -> PipelineError:
    """Turn a grpc.RpcError from the entry stage into the SDK's typed error."""
    details = exc.details() or str(exc)
    stage = ""
    if details.startswith("[") and "] " in details:
        stage, details = details[1:].split("] ", 1)
    return error_for(exc.code(), details, stage=stage, request_id=request_id)
