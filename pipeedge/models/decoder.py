"""Decoder-only (autoregressive) shards: the parts GPT-2 and Llama share.

Sub-layers keep the 4-per-block numbering of the encoders, so the same partition syntax works and
any sub-layer cut is allowed (both families are pre-norm, like ViT):

1. norm + q/k/v projections + attention (uses and extends the KV cache)  -> context, residual
2. attention output projection + residual                                 -> hidden
3. norm + MLP up-projection(s) + activation                               -> (B, T, I), residual
4. MLP down-projection + residual                                         -> hidden

Interface: the first shard takes ``input_ids`` (B, T) int64; tensors across a cut are ``hidden``
(+ ``residual`` after sub-layers 1 and 3), as for the encoders but without a mask; the last shard
returns ``logits`` (B, vocab) of the *last* position only, so result frames stay small.

``forward(tensors)`` runs the T tokens as a fresh causal sequence (prefill cost, no state kept: what
the profiler times). ``forward(tensors, cache=KVCache)`` continues a session: positions start at
``cache.length``, keys/values are appended, and the cache advances by T.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache, kv_heads_and_dim
from .layers import Flow
from .registry import ModelInfo
from .shard import ShardModule
from .spec import DYNAMIC, TensorSpec, validate_inputs


@dataclass
class StepContext:
    """What every attention sub-layer of one forward needs, computed once per forward."""

    positions: torch.Tensor               # (T,) absolute positions of the new tokens
    past: int                             # tokens already in the cache
    cache: KVCache | None
    mask: torch.Tensor | None             # (T, past + T) bool, True = may attend; None = see below
    causal: bool                          # use SDPA's is_causal (past == 0 and T > 1)
    # family-specific (Llama's cos/sin)
    extra: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: StepContext,
           block: int) -> torch.Tensor:
    """Causal attention of the new queries (B, nh, T, hd) over the cached + new keys/values
    (B, n_kv, T, hd); returns the context (B, T, nh * hd)."""
    if ctx.cache is not None:
        k, v = ctx.cache.update(block, k, v)
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:  # grouped-query attention: share each key/value head among n_rep query heads
        B, nkv, S, hd = k.shape
        k = k[:, :, None].expand(B, nkv, n_rep, S, hd).reshape(B, nkv * n_rep, S, hd)
        v = v[:, :, None].expand(B, nkv, n_rep, S, v.shape[3]).reshape(B, nkv * n_rep, S, -1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.causal)
    B, nh, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, nh * hd)


def decoder_boundary_spec(info: ModelInfo, cut_after: int, dtype: torch.dtype,
                          batch: int = DYNAMIC, seq_len: int = DYNAMIC) -> list[TensorSpec]:
    """Tensors crossing a cut after global sub-layer ``cut_after`` of a decoder."""
    sub = (cut_after - 1) % 4 + 1
    h = info.hidden_size
    if sub == 1:
        _, head_dim = kv_heads_and_dim(info)
        width = info.num_heads * head_dim  # the attention context (== H unless head_dim is set)
    elif sub == 3:
        width = info.intermediate_size
    else:
        width = h
    specs = [TensorSpec("hidden", dtype, (batch, seq_len, width))]
    if sub in (1, 3):
        specs.append(TensorSpec("residual", dtype, (batch, seq_len, h)))
    return specs


def decoder_example_inputs(info: ModelInfo, batch_size: int, seq_len: int,
                           g: torch.Generator) -> dict[str, torch.Tensor]:
    max_pos = info.max_positions
    if not 1 <= seq_len <= max_pos:
        raise ValueError(f"seq_len {seq_len} is out of range for {info.name}: use 1..{max_pos}")
    return {"input_ids": torch.randint(3, info.vocab_size, (batch_size, seq_len), generator=g)}


class DecoderBlock(nn.Module):
    """Base of the decoder families' blocks: what ``DecoderShard.forward`` calls per sub-layer."""

    def sublayer(self, k: int, flow: Flow, ctx: StepContext, block: int) -> Flow:
        raise NotImplementedError


class DecoderShard(ShardModule):
    """Base of ``GPT2Shard`` and ``LlamaShard``. Families provide ``blocks`` (ModuleDict keyed by
    global block index, each with ``sublayer(k, flow, ctx, block)``), ``embed_ids``, ``final_norm``
    and ``lm_head_weight``."""

    def max_positions(self) -> int:
        return self.info.max_positions

    @property
    def blocks(self) -> nn.ModuleDict:
        raise NotImplementedError

    @property
    def attention_blocks(self) -> list[int]:
        """Global block indices whose attention (sub-layer 1) this shard runs: its cache layers."""
        return [b for b, subs in self.plan.items() if 1 in subs]

    def new_cache(self) -> KVCache:
        return KVCache(self.attention_blocks, max_length=self.max_positions())

    def embed_ids(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lm_head_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, ctx: StepContext, dtype: torch.dtype) -> None:
        """Family hook: per-forward precomputation (Llama: rotary cos/sin)."""

    # -- ShardModule interface ----------------------------------------------------------------
    def first_input_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        return [TensorSpec("input_ids", torch.int64, (batch, seq_len))]

    def last_output_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        return [TensorSpec("logits", self.dtype, (batch, self.info.vocab_size))]

    def forward(self, tensors: dict[str, torch.Tensor],
                cache: KVCache | None = None) -> dict[str, torch.Tensor]:
        validate_inputs(self.input_spec(), tensors)
        dtype, device = self.dtype, self.device
        tensors = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                   for k, v in tensors.items()}
        lead = tensors["input_ids"] if self.is_first else tensors["hidden"]
        B, T = int(lead.shape[0]), int(lead.shape[1])
        if T < 1:
            raise ValueError("a step needs at least one token (T >= 1)")
        past = 0
        if cache is not None:
            cache.check_step(B, T)
            past = cache.length
        elif T > self.max_positions():
            raise ValueError(f"{T} tokens exceed the {self.max_positions()} positions of "
                             f"{self.info.name}; shorten the input")
        mask = None
        if past and T > 1:  # new tokens see the whole past and the new tokens up to themselves
            mask = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)
        ctx = StepContext(positions=torch.arange(past, past + T, device=device), past=past,
                          cache=cache, mask=mask, causal=(past == 0 and T > 1))
        if self.attention_blocks:
            self.prepare(ctx, dtype)

        flow: Flow
        if self.is_first:
            flow = (self.embed_ids(tensors["input_ids"], ctx.positions), None)
        else:
            flow = (tensors["hidden"], tensors.get("residual"))
        blocks = self.blocks
        for block, subs in self.plan.items():
            for k in subs:
                layer = blocks[str(block)]
                assert isinstance(layer, DecoderBlock)  # the decoder families' blocks
                flow = layer.sublayer(k, flow, ctx, block)
        if cache is not None:
            cache.advance(T)

        if self.is_last:
            last = self.final_norm(flow[0][:, -1])  # (B, H): only the last position is sampled
            return {"logits": F.linear(last, self.lm_head_weight())}
        out = {"hidden": flow[0]}
        if flow[1] is not None:
            out["residual"] = flow[1]
        return out
