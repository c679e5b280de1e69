"""Typed errors shared by the SDK and the servers, and the int <-> grpc.StatusCode mapping."""

from __future__ import annotations

import grpc

_BY_INT = {code.value[0]: code for code in grpc.StatusCode}


def status_from_int(value: int) -> grpc.StatusCode:
    return _BY_INT.get(value, grpc.StatusCode.UNKNOWN)


class PipeEdgeError(Exception):
    """Base of every error a user can act on: str(error) is a one-line message that names the
    thing and the fix. The CLIs print it as `error: ...` (exit 2) instead of a traceback."""


class PipelineError(PipeEdgeError):
    """A request failed somewhere in the pipeline; `stage` names where, `code` says how."""

    def __init__(self, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
                 stage: str = "", request_id: str = "") -> None:
        super().__init__(f"[{stage}] {message}" if stage else message)
        self.code = code
        self.stage = stage
        self.request_id = request_id


class InvalidInputError(PipelineError):
    """The request's tensors do not match what the stage expects (INVALID_ARGUMENT)."""


class StageUnavailableError(PipelineError):
    """A stage or the link to it is down (UNAVAILABLE); retrying on a new pipeline may work."""


class NotDeployedError(PipelineError):
    """A stage has no assignment (FAILED_PRECONDITION): deploy the pipeline first."""


class DeadlineExceededError(PipelineError):
    """The request did not complete before its deadline."""


class OverloadedError(PipelineError):
    """A stage is full (RESOURCE_EXHAUSTED: too many requests or streams); send fewer at once."""


class PipelineMovedError(PipelineError):
    """The request reached a stage of another deployment (ABORTED: the epochs differ) and no
    newer pipeline came in time; fetch the current pipeline and resend."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.UNAVAILABLE: StageUnavailableError,
    grpc.StatusCode.FAILED_PRECONDITION: NotDeployedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.ABORTED: PipelineMovedError,
}


def error_for(code: grpc.StatusCode, message: str, *, stage: str = "",
              request_id: str = "") -> PipelineError:
    """The typed exception for a failed request."""
    return _BY_CODE.get(code, PipelineError)(message, code=code, stage=stage,
                                             request_id=request_id)
