"""Building blocks shared by the ViT/DeiT and BERT shards.

A transformer block is cut into 4 sub-layers, as in the seed; each maps (hidden, residual) to
(hidden, residual):

1. self-attention             hidden (B,S,H) -> context (B,S,H), residual := block input
2. attention output           context -> hidden (B,S,H), adds the residual
3. MLP intermediate           hidden -> activations (B,S,I), residual := hidden
4. MLP output                 activations -> hidden (B,S,H), adds the residual

A block only builds the modules of the sub-layers its shard runs, so a shard's memory is its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelInfo

# What flows between sub-layers (and, as named tensors, between shards): hidden (B, S, H), or
# (B, S, I) after sub-layer 3; and the skip connection (B, S, H), set only after sub-layers 1 and 3.
Flow = tuple[torch.Tensor, torch.Tensor | None]


_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
# The activation names a config.json may give (hidden_act / activation_function / activation).
ACTIVATIONS: tuple[str, ...] = tuple(_ACTS)


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``hidden_act`` of a config.json, as transformers' ACT2FN defines it."""
    if name not in _ACTS:
        raise ValueError(f"hidden_act {name!r} is not supported; use one of {sorted(_ACTS)}")
    return _ACTS[name]


class Namespace(nn.Module):
    """An empty container with children set by name, so parameter names match checkpoint keys."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class Dense(Namespace):
    """A checkpoint container holding ``dense`` (e.g. ViT's ``intermediate``, BERT's ``pooler``);
    the annotations type the children that ``nn.Module.__getattr__`` would type as Tensor | Module."""

    dense: nn.Linear


class DenseNorm(Dense):
    """``dense`` then ``LayerNorm`` (BERT's ``attention.output`` and ``output``)."""

    LayerNorm: nn.LayerNorm


class Encoder(Namespace):
    """``encoder`` (ViT, BERT) / ``transformer`` (DistilBERT): the blocks by global index."""

    layer: nn.ModuleDict


class EncoderBlock(nn.Module):
    """Base of the encoder families' blocks: what ``ShardModule.forward`` calls per sub-layer."""

    def sublayer(self, k: int, flow: Flow, attn_bias: torch.Tensor | None) -> Flow:
        raise NotImplementedError


class SelfAttention(nn.Module):
    """Multi-head attention up to the context (the output projection is sub-layer 2)."""

    def __init__(self, info: ModelInfo,
                 names: tuple[str, str, str] = ("query", "key", "value")) -> None:
        super().__init__()
        h = info.hidden_size
        bias = info.hp.qkv_bias
        self.num_heads = info.num_heads
        self.names = names  # the checkpoint's q/k/v names (DistilBERT: q_lin, k_lin, v_lin)
        for name in names:
            self.add_module(name, nn.Linear(h, h, bias=bias))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, S, H = x.shape
        # (B, S, H) -> (B, nh, S, hd)
        q, k, v = (
            getattr(self, name)(x).view(B, S, self.num_heads, H // self.num_heads).transpose(1, 2)
            for name in self.names
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # (B, nh, S, hd)
        return y.transpose(1, 2).reshape(B, S, H)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias; padded keys get the dtype's lowest value."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def block_sublayers(info: ModelInfo, first: int, last: int) -> dict[int, list[int]]:
    """Which sub-layers (1..4) of which blocks (0-based) the layer range [first, last] covers."""
    blocks: dict[int, list[int]] = {}
    for layer in range(first, last + 1):
        blocks.setdefault((layer - 1) // 4, []).append((layer - 1) % 4 + 1)
    return blocks
