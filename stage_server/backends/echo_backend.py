"""Echo backend: no model, outputs = inputs. Measures links and the transport path alone."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeedge.stage_server.backends.base import ShardBackend


class EchoBackend(ShardBackend):
    def validate(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if not tensors:
            raise ValueError("an echo frame needs at least one tensor")

    def run(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(tensors)
