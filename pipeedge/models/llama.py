"""Llama family shards, named like the hub checkpoints (``model.layers.0.self_attn.q_proj.weight``).

Llama blocks are pre-norm with RMSNorm: ``x + o_proj(attn(rope(q, k), v))`` then
``x + down(silu(gate(x)) * up(x))``. Positions enter only through rotary embeddings in every
attention sub-layer, computed from the session's cache length, so nothing positional crosses a
cut. Grouped-query attention (``num_key_value_heads`` < heads) keeps the cache small.
Rotary types: ``default``, ``linear`` and ``llama3`` (as transformers' modeling_rope_utils).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .decoder import DecoderShard, StepContext, attend
from .kv_cache import kv_heads_and_dim
from .layers import Flow, Namespace
from .registry import ModelInfo


class RMSNorm(nn.Module):
    """As LlamaRMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _activation(name: str):
    acts = {"silu": nn.functional.silu, "gelu": nn.functional.gelu,
            "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh")}
    if name not in acts:
        raise ValueError(f"hidden_act {name!r} is not supported for Llama; use one of {sorted(acts)}")
    return acts[name]


def rope_inv_freq(info: ModelInfo) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) of the config's rotary embedding."""
    c = info.config
    params = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    base = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    _, head_dim = kv_heads_and_dim(info)
    dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
    if dim != head_dim:
        raise ValueError(f"{info.name}: partial rotary embeddings are not supported")
    steps = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float()
    inv = 1.0 / (base ** (steps / dim))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(params["factor"])
    if kind == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old = float(params.get("original_max_position_embeddings",
                               c.get("max_position_embeddings", 8192)))
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"{info.name}: rope type {kind!r} is not supported; "
                     "use default, linear or llama3")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    """One Llama decoder layer, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        c = info.config
        h, i = info.hidden_size, info.intermediate_size
        eps = float(c.get("rms_norm_eps", 1e-6))
        n_kv, hd = kv_heads_and_dim(info)
        self.num_heads, self.num_kv, self.head_dim = info.num_heads, n_kv, hd
        attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
        self.act = _activation(c.get("hidden_act", "silu"))
        self.self_attn = Namespace()
        self.mlp = Namespace()
        if 1 in sublayers:
            self.input_layernorm = RMSNorm(h, eps)
            self.self_attn.q_proj = nn.Linear(h, self.num_heads * hd, bias=attn_bias)
            self.self_attn.k_proj = nn.Linear(h, n_kv * hd, bias=attn_bias)
            self.self_attn.v_proj = nn.Linear(h, n_kv * hd, bias=attn_bias)
        if 2 in sublayers:
            self.self_attn.o_proj = nn.Linear(self.num_heads * hd, h, bias=attn_bias)
        if 3 in sublayers:
            self.post_attention_layernorm = RMSNorm(h, eps)
            self.mlp.gate_proj = nn.Linear(h, i, bias=mlp_bias)
            self.mlp.up_proj = nn.Linear(h, i, bias=mlp_bias)
        if 4 in sublayers:
            self.mlp.down_proj = nn.Linear(i, h, bias=mlp_bias)

    def sublayer(self, k: int, flow: Flow, ctx: StepContext, block: int) -> Flow:
        x, residual = flow
        if k == 1:
            B, T, _ = x.shape
            a = self.self_attn
            y = self.input_layernorm(x)
            q = a.q_proj(y).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
            key = a.k_proj(y).view(B, T, self.num_kv, self.head_dim).transpose(1, 2)
            v = a.v_proj(y).view(B, T, self.num_kv, self.head_dim).transpose(1, 2)
            cos, sin = ctx.extra["rope"]  # (T, hd), broadcast over batch and heads
            q = q * cos + _rotate_half(q) * sin
            key = key * cos + _rotate_half(key) * sin
            return attend(q, key, v, ctx, block), x
        if k == 2:
            return self.self_attn.o_proj(x) + residual, None
        if k == 3:
            y = self.post_attention_layernorm(x)
            return self.act(self.mlp.gate_proj(y)) * self.mlp.up_proj(y), x  # (B, T, I)
        return self.mlp.down_proj(x) + residual, None


class Backbone(nn.Module):
    """``model.*``: embed_tokens on the first shard, ``layers.<i>``, ``norm`` on the last."""

    def __init__(self, info: ModelInfo, blocks: dict[int, list[int]], first: bool,
                 last: bool) -> None:
        super().__init__()
        if first:
            self.embed_tokens = nn.Embedding(int(info.config["vocab_size"]), info.hidden_size)
        self.layers = nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        if last:
            self.norm = RMSNorm(info.hidden_size, float(info.config.get("rms_norm_eps", 1e-6)))


class LlamaShard(DecoderShard):
    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        if int(info.config.get("pretraining_tp") or 1) != 1:
            raise ValueError(f"{info.name}: pretraining_tp > 1 is not supported")
        self.model = Backbone(info, self.plan, self.is_first, self.is_last)
        self.tied = bool(info.config.get("tie_word_embeddings", False))
        if self.is_last and not (self.tied and self.is_first):
            self.lm_head = nn.Linear(info.hidden_size, int(info.config["vocab_size"]), bias=False)
        # Not a parameter or buffer: derived from the config (on first use), never in a checkpoint.
        self._inv_freq: torch.Tensor | None = None
        if self.attention_blocks:
            rope_inv_freq(info)  # reject an unsupported rope config at build time, not mid-session

    @property
    def blocks(self) -> nn.ModuleDict:
        return self.model.layers

    def prepare(self, ctx: StepContext, dtype: torch.dtype) -> None:
        # As LlamaRotaryEmbedding: angles in float32, cos/sin cast to the compute dtype.
        if self._inv_freq is None or self._inv_freq.device != ctx.positions.device:
            self._inv_freq = rope_inv_freq(self.info).to(ctx.positions.device)
        inv = self._inv_freq
        freqs = ctx.positions[:, None].float() * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        ctx.extra["rope"] = (emb.cos().to(dtype), emb.sin().to(dtype))

    def embed_ids(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.norm(hidden)

    def lm_head_weight(self) -> torch.Tensor:
        if hasattr(self, "lm_head"):
            return self.lm_head.weight
        return self.model.embed_tokens.weight
