"""Qwen2 / Qwen2.5: the Llama layout with biases on the q/k/v projections (not on o_proj).

Sliding-window attention (``use_sliding_window: true`` with a window shorter than the context)
is refused; released Qwen2/2.5 checkpoints leave it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .hf_config import DecoderConfig
from .llama import read_config as read_llama
from .llama import register_llama_style


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """Qwen2Config's defaults: 32768 positions, q/k/v bias always on."""
    return read_llama(model, c, max_positions=32768, qkv_bias=True)


register_llama_style("qwen2", "Qwen2ForCausalLM", read_config)
