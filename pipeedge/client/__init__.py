"""Client SDK: send inference requests to a deployed pipeline (its first stage)."""

from pipeedge.client.aio import AsyncPipelineClient, AsyncTextGenerator
from pipeedge.client.generate import (
                                      Completion,
                                      SamplingParams,
                                      TextGenerator,
                                      TokenEvent,
                                      sample_token,
)
from pipeedge.client.retry import RetryPolicy
from pipeedge.client.sdk import PipelineClient
from pipeedge.errors import (
                                      DeadlineExceededError,
                                      InvalidInputError,
                                      NotDeployedError,
                                      OverloadedError,
                                      PipelineError,
                                      PipelineMovedError,
                                      StageUnavailableError,
)

__all__ = ["PipelineClient", "AsyncPipelineClient", "RetryPolicy", "PipelineError",
           "InvalidInputError", "StageUnavailableError", "NotDeployedError",
           "DeadlineExceededError", "OverloadedError", "PipelineMovedError",
           # text generation (decoder models)
           "TextGenerator", "AsyncTextGenerator", "SamplingParams", "TokenEvent", "Completion", "sample_token"]
