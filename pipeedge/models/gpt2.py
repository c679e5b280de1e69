"""GPT-2 family shards, named like the hub checkpoints (``transformer.h.0.attn.c_attn.weight``).

GPT-2 blocks are pre-norm: ``x + c_proj(attn(ln_1(x)))`` then ``x + mlp(ln_2(x))``; learned
absolute positions are added on the first shard, ``ln_f`` and the LM head (tied to ``wte`` unless
the config says otherwise) run on the last. Linear layers are transformers' ``Conv1D``: the weight
is stored (in, out), so checkpoints load without transposing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .decoder import DecoderBlock, DecoderShard, StepContext, attend
from .family import FamilySpec, register
from .hf_config import DecoderConfig, check_heads, one_of, refuse
from .layers import ACTIVATIONS, Flow, Namespace, activation
from .registry import ModelInfo


class Conv1D(nn.Module):
    """``y = x @ weight + bias`` with weight (in, out), as transformers.pytorch_utils.Conv1D."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)

    def as_linear(self) -> nn.Linear:
        """The same map as an ``nn.Linear`` (weight transposed), for int8 quantization."""
        n_in, n_out = self.weight.shape
        with torch.device(self.weight.device):
            linear = nn.Linear(n_in, n_out, dtype=self.weight.dtype)
        linear.weight.data, linear.bias.data = self.weight.data.t().contiguous(), self.bias.data
        return linear.requires_grad_(False)


def read_config(model: str, c: Mapping[str, Any]) -> DecoderConfig:
    """GPT-2 config.json: fields are spelled n_embd/n_layer/n_head/n_inner/n_positions (the
    common names are accepted too, as GPT2Config.attribute_map does); defaults are GPT2Config's."""
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "add_cross_attention"):
        if c.get(key):
            raise refuse(model, key, c[key], "GPT-2 without it")
    one_of(model, c, "scale_attn_weights", True, (True,))

    def get(key: str, alias: str, default: Any) -> Any:
        value = c.get(key, c.get(alias))
        return default if value is None else value

    hidden, heads = int(get("n_embd", "hidden_size", 768)), int(get("n_head",
                                                                   "num_attention_heads", 12))
    check_heads(model, hidden, heads)
    return DecoderConfig(
        vocab_size=int(c.get("vocab_size", 50257)), hidden_size=hidden,
        num_layers=int(get("n_layer", "num_hidden_layers", 12)), num_heads=heads,
        num_kv_heads=heads, head_dim=hidden // heads,
        intermediate_size=int(get("n_inner", "intermediate_size", 4 * hidden)),
        max_positions=int(get("n_positions", "max_position_embeddings", 1024)),
        norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
        hidden_act=one_of(model, c, "activation_function", "gelu_new", ACTIVATIONS),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        bos_token_id=c.get("bos_token_id"))


class Attention(Namespace):
    """``attn``: ``c_attn`` (sub-layer 1) and ``c_proj`` (2)."""

    c_attn: Conv1D
    c_proj: Conv1D


class MLP(Namespace):
    """``mlp``: ``c_fc`` (sub-layer 3) and ``c_proj`` (4)."""

    c_fc: Conv1D
    c_proj: Conv1D


class Block(DecoderBlock):
    """One GPT-2 block, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        h, i = info.hidden_size, info.intermediate_size
        eps = info.decoder.norm_eps
        self.num_heads = info.num_heads
        self.act = activation(info.hp.hidden_act)
        self.attn = Attention()
        self.mlp = MLP()
        if 1 in sublayers:
            self.ln_1 = nn.LayerNorm(h, eps=eps)
            self.attn.c_attn = Conv1D(h, 3 * h)
        if 2 in sublayers:
            self.attn.c_proj = Conv1D(h, h)
        if 3 in sublayers:
            self.ln_2 = nn.LayerNorm(h, eps=eps)
            self.mlp.c_fc = Conv1D(h, i)
        if 4 in sublayers:
            self.mlp.c_proj = Conv1D(i, h)

    def sublayer(self, k: int, flow: Flow, ctx: StepContext, block: int) -> Flow:
        x, residual = flow
        if k == 1:
            B, T, H = x.shape
            q, key, v = self.attn.c_attn(self.ln_1(x)).split(H, dim=2)
            q, key, v = (t.view(B, T, self.num_heads, -1).transpose(1, 2) for t in (q, key, v))
            return attend(q, key, v, ctx, block), x
        if k == 2:
            return self.attn.c_proj(x) + residual, None
        if k == 3:
            return self.act(self.mlp.c_fc(self.ln_2(x))), x  # (B, T, I)
        return self.mlp.c_proj(x) + residual, None


class Backbone(nn.Module):
    """``transformer.*``: wte/wpe on the first shard, blocks ``h.<i>``, ``ln_f`` on the last."""

    def __init__(self, info: ModelInfo, blocks: dict[int, list[int]], first: bool,
                 last: bool) -> None:
        super().__init__()
        h = info.hidden_size
        if first:
            self.wte = nn.Embedding(info.vocab_size, h)
            self.wpe = nn.Embedding(info.max_positions, h)
        self.h = nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        if last:
            self.ln_f = nn.LayerNorm(h, eps=info.decoder.norm_eps)


class GPT2Shard(DecoderShard):
    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        self.transformer = Backbone(info, self.plan, self.is_first, self.is_last)
        self.tied = info.decoder.tie_word_embeddings
        # A shard holding both ends shares wte with the head instead of keeping a second copy.
        if self.is_last and not (self.tied and self.is_first):
            self.lm_head = nn.Linear(info.hidden_size, info.vocab_size, bias=False)

    @property
    def blocks(self) -> nn.ModuleDict:
        return self.transformer.h

    def embed_ids(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(input_ids) + self.transformer.wpe(positions)[None]

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.ln_f(hidden)

    def lm_head_weight(self) -> torch.Tensor:
        if hasattr(self, "lm_head"):
            return self.lm_head.weight
        return self.transformer.wte.weight


register(FamilySpec(
    name="gpt2", kind="decoder", read_config=read_config, shard_class=GPT2Shard,
    prefix="transformer.", hf_classes={"causal-lm": "GPT2LMHeadModel"},
    architectures={"GPT2LMHeadModel": "causal-lm"}, model_types=("gpt2",),
    default_head="causal-lm", embedding="wte.weight"))
