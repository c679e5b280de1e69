"""Per-session key/value cache of one decoder shard, and KV-cache memory arithmetic.

A stage keeps, for every live session, the keys and values of the attention layers *it* runs
(sub-layer 1 of each block in its range). Buffers grow in chunks (capacity doubles), so appending
one token per step costs amortised O(1) copies instead of a ``torch.cat`` of the whole history.
"""

from __future__ import annotations

import torch

from .registry import ModelInfo

DEFAULT_CHUNK = 64  # tokens; the first allocation and the granularity of growth


class KVCache:
    """Keys and values of one session for the attention blocks ``blocks`` of one shard.

    ``length`` counts the tokens the shard has processed for the session (also when it has no
    attention block, so every stage agrees on positions). Writes for a step go to
    ``[length, length + T)``; ``advance(T)`` commits them once the whole shard has run, so a step
    that fails half-way leaves the committed history intact.
    """

    def __init__(self, blocks: list[int], *, chunk: int = DEFAULT_CHUNK,
                 max_length: int | None = None) -> None:
        self.blocks = list(blocks)
        self.length = 0
        self.batch: int | None = None
        self.chunk = chunk
        self.max_length = max_length
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}

    # -- bookkeeping --------------------------------------------------------------------------
    def check_step(self, batch: int, new_tokens: int) -> None:
        """Raise ValueError if a step of ``batch`` x ``new_tokens`` does not fit this session."""
        if self.batch is None:
            self.batch = batch
        elif batch != self.batch:
            raise ValueError(f"session has batch {self.batch} but this step has batch {batch}; "
                             "every step of a session must keep the prefill's batch size")
        if self.max_length is not None and self.length + new_tokens > self.max_length:
            raise ValueError(f"session would reach {self.length + new_tokens} tokens but the model "
                             f"has {self.max_length} positions; shorten the prompt or "
                             "max_new_tokens")

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def truncate(self, length: int) -> None:
        """Forget tokens from ``length`` on (a retried step recomputes them)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    @property
    def nbytes(self) -> int:
        """Bytes allocated (capacity, not just the used length)."""
        return sum(t.numel() * t.element_size() for d in (self._k, self._v) for t in d.values())

    # -- data ---------------------------------------------------------------------------------
    def update(self, block: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values (B, n_kv, T, hd) of ``block``; return all of them
        (B, n_kv, length + T, hd), as views into the buffers."""
        T = k.shape[2]
        end = self.length + T
        buf_k = self._k.get(block)
        if buf_k is None or buf_k.shape[2] < end or buf_k.dtype != k.dtype:
            self._grow(block, k, v, end)
            buf_k = self._k[block]
        buf_v = self._v[block]
        buf_k[:, :, self.length:end].copy_(k)
        buf_v[:, :, self.length:end].copy_(v)
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def _grow(self, block: int, k: torch.Tensor, v: torch.Tensor, needed: int) -> None:
        old_k, old_v = self._k.get(block), self._v.get(block)
        capacity = cache_capacity(needed, self.max_length, chunk=self.chunk)
        B, nkv, _, hd = k.shape
        new_k = k.new_empty(B, nkv, capacity, hd)
        new_v = v.new_empty(B, nkv, capacity, v.shape[3])
        if old_k is not None and old_v is not None and self.length:
            new_k[:, :, :self.length].copy_(old_k[:, :, :self.length])
            new_v[:, :, :self.length].copy_(old_v[:, :, :self.length])
        self._k[block], self._v[block] = new_k, new_v

    def clear(self) -> None:
        self._k.clear()
        self._v.clear()
        self.length = 0


def cache_capacity(tokens: int, max_length: int | None = None, *,
                   chunk: int = DEFAULT_CHUNK) -> int:
    """Token slots a KVCache holds once a session reaches ``tokens`` tokens: buffers grow in
    doubling chunks (``KVCache._grow``), capped at the model's ``max_length``. Size memory with
    this, not ``tokens``: 300 tokens occupy 512 slots."""
    capacity = chunk
    while capacity < tokens:
        capacity *= 2
    return max(tokens, min(capacity, max_length)) if max_length is not None else capacity


def kv_heads_and_dim(info: ModelInfo) -> tuple[int, int]:
    """(key/value heads, head dim) of a decoder's attention."""
    hp = info.decoder
    return hp.num_kv_heads, hp.head_dim


def kv_cache_bytes_per_layer(info: ModelInfo, *, sessions: int = 1, context_len: int | None = None,
                             batch: int = 1, dtype: torch.dtype = torch.float32) -> list[int]:
    """KV-cache bytes of each of the model's ``num_layers`` sub-layers for ``sessions`` sessions
    of ``batch`` sequences, each ``context_len`` tokens long (default: the model's maximum).

    Only attention sub-layers (1, 5, 9, ...) hold a cache: 2 (K and V) x batch x n_kv_heads x
    context x head_dim x itemsize per session. Add it to a stage's weight memory to size a
    partition for a serving load.

    Example:
        >>> sum(kv_cache_bytes_per_layer(model_info("gpt2"), sessions=4, context_len=1024))
        150994944
    """
    if not info.is_decoder:
        return [0] * info.num_layers
    if context_len is None:
        context_len = info.max_positions
    n_kv, head_dim = kv_heads_and_dim(info)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_block = 2 * sessions * batch * n_kv * context_len * head_dim * itemsize
    return [per_block if (layer - 1) % 4 == 0 else 0 for layer in range(1, info.num_layers + 1)]
