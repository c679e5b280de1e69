"""Qwen3: the Llama layout plus an RMSNorm of each head's query and key (``q_norm``/``k_norm``)
before the rotary embedding; ``attention_bias`` puts biases on q/k/v/o as in Llama."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .family import FamilySpec, register
from .hf_config import DecoderConfig
from .llama import LlamaShard
from .llama import read_config as read_llama


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """Qwen3Config's defaults: 32768 positions, q/k norms always on."""
    return read_llama(model, c, max_positions=32768, qk_norm=True)


register(FamilySpec(
    name="qwen3", kind="decoder", read_config=read_config, shard_class=LlamaShard,
    prefix="model.", hf_classes={"causal-lm": "Qwen3ForCausalLM"},
    architectures={"Qwen3ForCausalLM": "causal-lm"}, model_types=("qwen3",),
    default_head="causal-lm", embedding="embed_tokens.weight"))
