"""BERT-family pieces, named like the hub checkpoints (``bert.encoder.layer.0.attention.self...``).

BERT blocks are post-norm: ``LN(x + attn(x))`` then ``LN(x + mlp(x))``, so there is no final norm.
Padded keys are masked in every attention, so padding never changes the real tokens' outputs.
Heads: ``base`` (BertModel: last hidden state + tanh pooler), ``sequence-classification`` (pooler +
classifier), ``mean-pooling`` (sentence-transformers: masked mean, then L2 normalisation).
Any text encoder's last shard pools instead when ``ModelInfo.pooling`` is set (a
sentence-transformers directory's modules.json, ``pool`` below): one embedding per sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register
from .hf_config import EncoderConfig, encoder_fields, one_of, refuse
from .layers import (
    ACTIVATIONS,
    Dense,
    DenseNorm,
    Encoder,
    EncoderBlock,
    Flow,
    Namespace,
    SelfAttention,
    activation,
)
from .registry import ModelInfo
from .sentence_transformers import Pooling
from .shard import ShardModule
from .spec import TensorSpec


def read_config(model: str, c: Mapping[str, Any], *, pad_token_id: int = 0) -> EncoderConfig:
    """BERT-style config.json (BERT, RoBERTa, XLM-R); defaults are BertConfig's."""
    one_of(model, c, "position_embedding_type", "absolute", ("absolute",))
    for key in ("is_decoder", "add_cross_attention"):
        if c.get(key):
            raise refuse(model, key, c[key], "encoders only")
    pad = c.get("pad_token_id")
    return EncoderConfig(
        **encoder_fields(model, c, ACTIVATIONS),
        vocab_size=int(c.get("vocab_size", 30522)),
        max_positions=int(c.get("max_position_embeddings", 512)),
        type_vocab_size=int(c.get("type_vocab_size", 2)),
        pad_token_id=pad_token_id if pad is None else int(pad))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """sentence-transformers' Pooling (+ Normalize): token states (B, T, H) -> (B, H), over the
    tokens the mask keeps. Mean sums in float32 under float16/bfloat16, as sentence-transformers."""
    keep = attention_mask.unsqueeze(-1)  # (B, T, 1)
    if pooling.mode == "cls":  # the first kept token ([CLS] unless left-padded)
        first = attention_mask.to(torch.int32).argmax(dim=1)  # (B,)
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    elif pooling.mode == "max":
        out = hidden.masked_fill(keep == 0, float("-inf")).max(dim=1).values
    else:
        acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
        mask = keep.to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1, dtype=acc)
        out = (summed / mask.sum(dim=1, dtype=acc).clamp(min=1e-9)).to(hidden.dtype)
    return F.normalize(out, p=2, dim=1) if pooling.normalize else out


class Embeddings(nn.Module):
    """Word + absolute position + token type embeddings (none when type_vocab_size is 0, as in
    DistilBERT), then LayerNorm."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        hp, h = info.encoder, info.hidden_size
        self.word_embeddings = nn.Embedding(hp.vocab_size, h)
        self.position_embeddings = nn.Embedding(hp.max_positions, h)
        if hp.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(hp.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=info.layer_norm_eps)
        self.pad_token_id = hp.pad_token_id

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) or (B, T) positions; RoBERTa overrides this (padding-aware offsets)."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)

    def max_tokens(self) -> int:
        return self.position_embeddings.num_embeddings

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_tokens():
            raise ValueError(
                f"input_ids has {T} tokens but the model has "
                f"{self.max_tokens()} positions; truncate the input"
            )
        x = self.word_embeddings(input_ids)
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        positions = self.position_ids(input_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))  # (B, T, H)


class Attention(Namespace):
    """``attention``: ``self`` (sub-layer 1) and ``output`` (2), as in the checkpoint."""

    self: SelfAttention
    output: DenseNorm


class Block(EncoderBlock):
    """One encoder block, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        h, i, eps = info.hidden_size, info.intermediate_size, info.layer_norm_eps
        self.act = activation(info.hp.hidden_act)
        self.attention = Attention()
        if 1 in sublayers:
            self.attention.self = SelfAttention(info)
        if 2 in sublayers:
            self.attention.output = DenseNorm(
                dense=nn.Linear(h, h), LayerNorm=nn.LayerNorm(h, eps=eps)
            )
        if 3 in sublayers:
            self.intermediate = Dense(dense=nn.Linear(h, i))
        if 4 in sublayers:
            self.output = DenseNorm(dense=nn.Linear(i, h), LayerNorm=nn.LayerNorm(h, eps=eps))

    def sublayer(self, k: int, flow: Flow, attn_bias: torch.Tensor | None) -> Flow:
        x, residual = flow
        if k == 1:
            return self.attention.self(x, attn_bias), x
        if k == 2:
            out = self.attention.output
            return out.LayerNorm(out.dense(x) + residual), None
        if k == 3:
            return self.act(self.intermediate.dense(x)), x  # (B, T, I)
        return self.output.LayerNorm(self.output.dense(x) + residual), None


class EncoderBackbone(nn.Module):
    """What ``BertShard`` uses of a backbone (BERT's, RoBERTa's, DistilBERT's)."""

    pooler_heads: tuple[str, ...] = ()  # heads with a pooler
    embeddings: Embeddings  # on the first shard
    pooler: Dense  # on the last, for ``pooler_heads``

    def __init__(
        self, info: ModelInfo, blocks: dict[int, list[int]], first: bool, last: bool
    ) -> None:
        super().__init__()


class Backbone(EncoderBackbone):
    """``bert.*``: embeddings on the first shard, blocks, the pooler on the last if used."""

    embeddings_class: type[Embeddings] = Embeddings
    pooler_heads: tuple[str, ...] = ("base", "sequence-classification")  # heads with a pooler

    def __init__(
        self, info: ModelInfo, blocks: dict[int, list[int]], first: bool, last: bool
    ) -> None:
        super().__init__(info, blocks, first, last)
        if first:
            self.embeddings = self.embeddings_class(info)
        # Keys are global block indices, so names read encoder.layer.<i>... as in the checkpoint.
        self.encoder = Encoder(
            layer=nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        )
        if last and info.head in self.pooler_heads and info.pooling is None:
            h = info.hidden_size
            self.pooler = Dense(dense=nn.Linear(h, h))


class BertShard(ShardModule):
    """A BERT-family shard: ids and mask into the first shard, head outputs out of the last."""

    backbone_class: type[EncoderBackbone] = Backbone
    classifier: nn.Module  # sequence-classification: the family's head (add_classifier)

    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        setattr(self, info.spec.backbone_attr,
                self.backbone_class(info, self.plan, self.is_first, self.is_last))
        if self.is_last and info.head == "sequence-classification":
            self.add_classifier(info)

    @property
    def backbone(self) -> EncoderBackbone:
        backbone = super().backbone
        assert isinstance(backbone, EncoderBackbone)  # __init__ sets one of backbone_class
        return backbone

    def add_classifier(self, info: ModelInfo) -> None:
        """BertForSequenceClassification: one linear layer on the pooled [CLS] token."""
        self.classifier = nn.Linear(info.hidden_size, info.num_labels)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.backbone.pooler.dense(hidden[:, 0]))  # (B, H), from [CLS]
        return self.classifier(pooled)

    def embed(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone.embeddings(tensors["input_ids"], tensors.get("token_type_ids"))

    def finish(
        self, hidden: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        head = self.info.head
        if self.info.pooling is not None:  # sentence embedding, (B, H)
            return {"embeddings": pool(hidden, tensors["attention_mask"], self.info.pooling)}
        if head == "sequence-classification":
            return {"logits": self.classify(hidden)}  # (B, num_labels)
        if not self.has_pooler:
            return {"hidden": hidden}
        pooled = torch.tanh(self.backbone.pooler.dense(hidden[:, 0]))  # (B, H), from [CLS]
        return {"hidden": hidden, "pooled": pooled}

    @property
    def has_pooler(self) -> bool:
        """The base head also returns the pooler's output (BertModel, RobertaModel) unless the
        shard pools sentence-transformers' way."""
        return self.info.head in self.backbone_class.pooler_heads and self.info.pooling is None

    def first_input_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        ids = (batch, seq_len)
        specs = [
            TensorSpec("input_ids", torch.int64, ids),
            TensorSpec("attention_mask", torch.int64, ids),
        ]
        if self.info.encoder.type_vocab_size:  # DistilBERT takes no token types
            specs.append(TensorSpec("token_type_ids", torch.int64, ids, optional=True))
        return specs

    def last_output_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        h = self.info.hidden_size
        if self.info.pooling is not None:
            return [TensorSpec("embeddings", self.dtype, (batch, h))]
        if self.info.head == "sequence-classification":
            return [TensorSpec("logits", self.dtype, (batch, self.info.num_labels))]
        hidden = TensorSpec("hidden", self.dtype, (batch, seq_len, h))
        return [hidden, TensorSpec("pooled", self.dtype, (batch, h))] if self.has_pooler \
            else [hidden]


register(FamilySpec(
    name="bert", kind="text-encoder", read_config=read_config, shard_class=BertShard,
    prefix="bert.",
    hf_classes={"base": "BertModel", "mean-pooling": "BertModel",
                "sequence-classification": "BertForSequenceClassification"},
    architectures={"BertModel": "base",
                   "BertForSequenceClassification": "sequence-classification"},
    model_types=("bert",), default_head="base"))
