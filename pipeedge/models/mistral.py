"""Mistral: the Llama layout (no biases). Its sliding-window attention is not implemented, so a
checkpoint is served only when ``sliding_window`` is null or covers the whole context
(Mistral-7B v0.2 and later); v0.1's 4096-token window is refused at deploy time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .hf_config import DecoderConfig
from .llama import read_config as read_llama
from .llama import register_llama_style


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """MistralConfig's defaults: 131072 positions, a 4096-token window when the key is absent."""
    return read_llama(model, c, max_positions=4096 * 32, sliding_default=True,
                      window_default=4096)


register_llama_style("mistral", "MistralForCausalLM", read_config)
