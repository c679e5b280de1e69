"""Qwen2 / Qwen2.5: the Llama layout with biases on the q/k/v projections (not on o_proj).

Sliding-window attention (``use_sliding_window: true`` with a window shorter than the context)
is refused; released Qwen2/2.5 checkpoints leave it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .family import FamilySpec, register
from .hf_config import DecoderConfig
from .llama import LlamaShard
from .llama import read_config as read_llama


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """Qwen2Config's defaults: 32768 positions, q/k/v bias always on."""
    return read_llama(model, c, max_positions=32768, qkv_bias=True)


register(FamilySpec(
    name="qwen2", kind="decoder", read_config=read_config, shard_class=LlamaShard,
    prefix="model.", hf_classes={"causal-lm": "Qwen2ForCausalLM"},
    architectures={"Qwen2ForCausalLM": "causal-lm"}, model_types=("qwen2",),
    default_head="causal-lm", embedding="embed_tokens.weight"))
