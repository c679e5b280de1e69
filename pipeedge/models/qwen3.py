"""Qwen3: the Llama layout plus an RMSNorm of each head's query and key (``q_norm``/``k_norm``)
before the rotary embedding; ``attention_bias`` puts biases on q/k/v/o as in Llama."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .hf_config import DecoderConfig
from .llama import read_config as read_llama
from .llama import register_llama_style


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """Qwen3Config's defaults: 32768 positions, q/k norms always on."""
    return read_llama(model, c, max_positions=32768, qk_norm=True)


register_llama_style("qwen3", "Qwen3ForCausalLM", read_config)
