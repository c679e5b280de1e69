"""GPT-2 family shards, named like the hub checkpoints (``transformer.h.0.attn.c_attn.weight``).

GPT-2 blocks are pre-norm: ``x + c_proj(attn(ln_1(x)))`` then ``x + mlp(ln_2(x))``; learned
absolute positions are added on the first shard, ``ln_f`` and the LM head (tied to ``wte`` unless
the config says otherwise) run on the last. Linear layers are transformers' ``Conv1D``: the weight
is stored (in, out), so checkpoints load without transposing.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import DecoderShard, StepContext, attend
from .layers import Flow, Namespace, activation
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


def _check_config(info: ModelInfo) -> None:
    c = info.config
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "add_cross_attention"):
        if c.get(key):
            raise ValueError(f"{info.name}: GPT-2 option {key}=true is not supported")
    if c.get("scale_attn_weights") is False:
        raise ValueError(f"{info.name}: scale_attn_weights=false is not supported")


class Block(nn.Module):
    """One GPT-2 block, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        h, i = info.hidden_size, info.intermediate_size
        eps = float(info.config.get("layer_norm_epsilon", 1e-5))
        self.num_heads = info.num_heads
        self.act = activation(info.config.get("activation_function", "gelu_new"))
        self.attn = Namespace()
        self.mlp = Namespace()
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
            self.wte = nn.Embedding(int(info.config["vocab_size"]), h)
            self.wpe = nn.Embedding(int(info.config["max_position_embeddings"]), h)
        self.h = nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        if last:
            self.ln_f = nn.LayerNorm(h, eps=float(info.config.get("layer_norm_epsilon", 1e-5)))


class GPT2Shard(DecoderShard):
    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        _check_config(info)
        self.transformer = Backbone(info, self.plan, self.is_first, self.is_last)
        self.tied = bool(info.config.get("tie_word_embeddings", True))
        # A shard holding both ends shares wte with the head instead of keeping a second copy.
        if self.is_last and not (self.tied and self.is_first):
            self.lm_head = nn.Linear(info.hidden_size, int(info.config["vocab_size"]), bias=False)

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
