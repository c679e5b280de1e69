"""Llama family shards, named like the hub checkpoints (``model.layers.0.self_attn.q_proj.weight``).

Llama blocks are pre-norm with RMSNorm: ``x + o_proj(attn(rope(q, k), v))`` then
``x + down(silu(gate(x)) * up(x))``. Positions enter only through rotary embeddings in every
attention sub-layer, computed from the session's cache length, so nothing positional crosses a
cut. Grouped-query attention (``num_key_value_heads`` < heads) keeps the cache small.
Rotary types: ``default``, ``linear`` and ``llama3`` (as transformers' modeling_rope_utils).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .decoder import DecoderBlock, DecoderShard, StepContext, attend
from .family import FamilySpec, register
from .hf_config import ConfigError, DecoderConfig, RopeConfig, need, one_of, refuse
from .kv_cache import kv_heads_and_dim
from .layers import Flow, Namespace
from .registry import ModelInfo

ROPE_TYPES = ("default", "linear", "llama3")
DECODER_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")


def read_rope(model: str, c: Mapping[str, Any]) -> RopeConfig:
    """transformers 5 writes ``rope_parameters`` (theta inside); older files ``rope_theta`` and
    ``rope_scaling`` (``type`` or ``rope_type``). Types other than ROPE_TYPES are refused."""
    params = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    key = "rope_parameters" if c.get("rope_parameters") else "rope_scaling"
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise refuse(model, f"{key}.rope_type", kind, "supported: " + ", ".join(ROPE_TYPES))
    partial = params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    if float(partial) != 1.0:
        raise refuse(model, "partial_rotary_factor", partial, "full rotary embeddings only")
    if kind == "default":
        return RopeConfig(theta=theta)
    factor = float(need(model, params, "factor"))
    if kind == "linear":
        return RopeConfig(theta=theta, kind=kind, factor=factor)
    return RopeConfig(theta=theta, kind=kind, factor=factor,
                      low_freq_factor=float(need(model, params, "low_freq_factor")),
                      high_freq_factor=float(need(model, params, "high_freq_factor")),
                      original_max_positions=int(need(model, params,
                                                      "original_max_position_embeddings")))


def check_full_attention(model: str, c: Mapping[str, Any], max_positions: int,
                         sliding_default: bool, window_default: int | None) -> None:
    """Sliding-window attention is not implemented: refuse it unless the window covers the
    whole context (then it changes nothing). Qwen2/3 switch it with ``use_sliding_window``;
    Mistral uses ``sliding_window`` whenever it is set; ``layer_types`` names it per layer."""
    window = c.get("sliding_window", window_default)
    active = c.get("use_sliding_window", sliding_default) and window is not None
    layer_types = [t for t in (c.get("layer_types") or []) if t != "full_attention"]
    if (active or layer_types) and (window is None or int(window) < max_positions):
        what = ("layer_types", sorted(set(layer_types))) if layer_types and not active else \
            ("sliding_window", window)
        raise refuse(model, what[0], what[1], "full attention only: sliding_window must be null "
                     f"or at least max_position_embeddings {max_positions}")


def read_config(model: str, c: Mapping[str, Any], *, max_positions: int = 2048,
                qkv_bias: bool | None = None, qk_norm: bool = False,
                sliding_default: bool = False, window_default: int | None = None,
                tie: bool = False) -> DecoderConfig:
    """Llama-style config.json (Llama, Qwen2, Qwen3, Mistral); defaults are LlamaConfig's, the
    keyword arguments hold what the other families change."""
    if int(c.get("pretraining_tp") or 1) != 1:
        raise refuse(model, "pretraining_tp", c["pretraining_tp"], "1 only")
    hidden = int(need(model, c, "hidden_size"))
    heads = int(need(model, c, "num_attention_heads"))
    head_dim = int(c.get("head_dim") or 0) or hidden // heads
    if not c.get("head_dim") and hidden % heads:
        raise ConfigError(f"{model}: config.json hidden_size {hidden} is not a multiple of "
                          f"{heads} heads and no head_dim is given")
    kv = int(c.get("num_key_value_heads") or heads)
    if heads % kv:
        raise ConfigError(f"{model}: config.json num_attention_heads {heads} is not a multiple "
                          f"of num_key_value_heads {kv}")
    max_pos = int(c.get("max_position_embeddings") or max_positions)
    check_full_attention(model, c, max_pos, sliding_default, window_default)
    attention_bias = bool(c.get("attention_bias", False))
    return DecoderConfig(
        vocab_size=int(need(model, c, "vocab_size")), hidden_size=hidden,
        num_layers=int(need(model, c, "num_hidden_layers")), num_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, intermediate_size=int(need(model, c, "intermediate_size")),
        max_positions=max_pos, norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        hidden_act=one_of(model, c, "hidden_act", "silu", DECODER_ACTIVATIONS),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", tie)), rope=read_rope(model, c),
        qkv_bias=attention_bias if qkv_bias is None else qkv_bias, o_bias=attention_bias,
        mlp_bias=bool(c.get("mlp_bias", False)), qk_norm=qk_norm,
        bos_token_id=c.get("bos_token_id"))


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


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    acts: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "silu": nn.functional.silu, "gelu": nn.functional.gelu,
        "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh")}
    return acts[name]


def rope_inv_freq(info: ModelInfo) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) of the config's rotary embedding."""
    rope = info.decoder.rope
    assert rope is not None  # read_config always reads one for the Llama families
    _, dim = kv_heads_and_dim(info)
    steps = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float()
    inv = 1.0 / (rope.theta ** (steps / dim))
    if rope.kind == "default":
        return inv
    if rope.kind == "linear":
        return inv / rope.factor
    # llama3
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old = rope.original_max_positions
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(Namespace):
    """``self_attn``: q/k/v projections and Qwen3's q/k norms (sub-layer 1), ``o_proj`` (2)."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    q_norm: RMSNorm
    k_norm: RMSNorm
    o_proj: nn.Linear


class MLP(Namespace):
    """``mlp``: gate and up projections (sub-layer 3), ``down_proj`` (4)."""

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear


class Block(DecoderBlock):
    """One Llama decoder layer, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        hp = info.decoder
        h, i, eps = info.hidden_size, info.intermediate_size, hp.norm_eps
        n_kv, hd = kv_heads_and_dim(info)
        self.num_heads, self.num_kv, self.head_dim = info.num_heads, n_kv, hd
        qkv_bias, mlp_bias = hp.qkv_bias, hp.mlp_bias
        self.act = _activation(hp.hidden_act)
        self.self_attn = Attention()
        self.mlp = MLP()
        if 1 in sublayers:
            self.input_layernorm = RMSNorm(h, eps)
            self.self_attn.q_proj = nn.Linear(h, self.num_heads * hd, bias=qkv_bias)
            self.self_attn.k_proj = nn.Linear(h, n_kv * hd, bias=qkv_bias)
            self.self_attn.v_proj = nn.Linear(h, n_kv * hd, bias=qkv_bias)
            if hp.qk_norm:  # Qwen3: RMSNorm over each head's dim, before rope
                self.self_attn.q_norm = RMSNorm(hd, eps)
                self.self_attn.k_norm = RMSNorm(hd, eps)
        if 2 in sublayers:
            self.self_attn.o_proj = nn.Linear(self.num_heads * hd, h, bias=hp.o_bias)
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
            if hasattr(a, "q_norm"):
                q, key = a.q_norm(q), a.k_norm(key)
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
            self.embed_tokens = nn.Embedding(info.vocab_size, info.hidden_size)
        self.layers = nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        if last:
            self.norm = RMSNorm(info.hidden_size, info.decoder.norm_eps)


class LlamaShard(DecoderShard):
    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        self.model = Backbone(info, self.plan, self.is_first, self.is_last)
        self.tied = info.decoder.tie_word_embeddings
        if self.is_last and not (self.tied and self.is_first):
            self.lm_head = nn.Linear(info.hidden_size, info.vocab_size, bias=False)
        # Not a parameter or buffer: derived from the config (on first use), never in a checkpoint.
        self._inv_freq: torch.Tensor | None = None

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


def register_llama_style(name: str, architecture: str,
                         reader: Callable[[str, Mapping[str, Any]], DecoderConfig]) -> FamilySpec:
    """Register a family with the Llama layout (``model.layers.<i>...``, LlamaShard) whose
    differences are all in its config reader."""
    return register(FamilySpec(
        name=name, kind="decoder", read_config=reader, shard_class=LlamaShard, prefix="model.",
        hf_classes={"causal-lm": architecture}, architectures={architecture: "causal-lm"},
        model_types=(name,), default_head="causal-lm", embedding="embed_tokens.weight"))


register_llama_style("llama", "LlamaForCausalLM", read_config)
