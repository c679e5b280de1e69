"""DistilBERT, named like the hub checkpoints (``distilbert.transformer.layer.0.attention.q_lin``).

BERT's post-norm blocks under other names (``q_lin``/``k_lin``/``v_lin``/``out_lin``,
``sa_layer_norm``, ``ffn.lin1``/``lin2``, ``output_layer_norm``), cut into the same 4 sub-layers.
Differences from BERT: no token types, no pooler (``DistilBertModel`` returns the last hidden
state only), LayerNorm epsilon fixed at 1e-12 by transformers' modeling code (config.json has
none), and the classifier is pre_classifier + ReLU + classifier on the [CLS] token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import bert
from .family import FamilySpec, register
from .hf_config import EncoderConfig, encoder_fields, one_of, refuse
from .layers import ACTIVATIONS, Encoder, EncoderBlock, Flow, Namespace, SelfAttention, activation
from .registry import ModelInfo

# DistilBertConfig's field names -> the BertConfig names encoder_fields reads.
_BERT_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
               "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size"}
LAYER_NORM_EPS = 1e-12  # hard-coded in modeling_distilbert.py


def read_config(model: str, c: Mapping[str, Any]) -> EncoderConfig:
    """DistilBertConfig's config.json; defaults are its own (6 layers, 768 wide, gelu)."""
    if c.get("sinusoidal_pos_embds"):
        raise refuse(model, "sinusoidal_pos_embds", c["sinusoidal_pos_embds"],
                     "learned position embeddings only")
    act = one_of(model, c, "activation", "gelu", ACTIVATIONS)
    # BertConfig names are DistilBertConfig aliases (attribute_map), the native names win.
    as_bert = {"num_hidden_layers": 6, **c,
               **{bert_name: c[name] for name, bert_name in _BERT_NAMES.items()
                  if c.get(name) is not None},
               "hidden_act": act, "layer_norm_eps": LAYER_NORM_EPS}
    pad = c.get("pad_token_id")
    return EncoderConfig(
        **encoder_fields(model, as_bert, ACTIVATIONS),
        vocab_size=int(c.get("vocab_size", 30522)),
        max_positions=int(c.get("max_position_embeddings", 512)),
        type_vocab_size=0,
        pad_token_id=0 if pad is None else int(pad))


class Attention(SelfAttention):
    """``attention``: q_lin/k_lin/v_lin (sub-layer 1) and ``out_lin`` (2), as on disk."""

    out_lin: nn.Linear


class AttentionOutput(Namespace):
    """``attention`` of a block without sub-layer 1: ``out_lin`` alone."""

    out_lin: nn.Linear


class FFN(Namespace):
    lin1: nn.Linear
    lin2: nn.Linear


class Block(EncoderBlock):
    """One DistilBERT block, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        h, i, eps = info.hidden_size, info.intermediate_size, info.layer_norm_eps
        self.act = activation(info.hp.hidden_act)
        self.attention: Attention | AttentionOutput = (
            Attention(info, ("q_lin", "k_lin", "v_lin")) if 1 in sublayers else AttentionOutput())
        self.ffn = FFN()
        if 2 in sublayers:
            self.attention.out_lin = nn.Linear(h, h)
            self.sa_layer_norm = nn.LayerNorm(h, eps=eps)
        if 3 in sublayers:
            self.ffn.lin1 = nn.Linear(h, i)
        if 4 in sublayers:
            self.ffn.lin2 = nn.Linear(i, h)
            self.output_layer_norm = nn.LayerNorm(h, eps=eps)

    def sublayer(self, k: int, flow: Flow, attn_bias: torch.Tensor | None) -> Flow:
        x, residual = flow
        if k == 1:
            return self.attention(x, attn_bias), x
        if k == 2:
            return self.sa_layer_norm(self.attention.out_lin(x) + residual), None
        if k == 3:
            return self.act(self.ffn.lin1(x)), x  # (B, T, I)
        return self.output_layer_norm(self.ffn.lin2(x) + residual), None


class Backbone(bert.EncoderBackbone):
    """``distilbert.*``: embeddings on the first shard, then blocks; no pooler."""

    pooler_heads: tuple[str, ...] = ()

    def __init__(
        self, info: ModelInfo, blocks: dict[int, list[int]], first: bool, last: bool
    ) -> None:
        super().__init__(info, blocks, first, last)
        if first:
            self.embeddings = bert.Embeddings(info)  # type_vocab_size 0: word + position
        # Keys are global block indices, so names read transformer.layer.<i>... as on disk.
        self.transformer = Encoder(
            layer=nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        )


class DistilBertShard(bert.BertShard):
    backbone_class = Backbone

    @property
    def blocks(self) -> nn.ModuleDict:
        backbone = self.backbone
        assert isinstance(backbone, Backbone)  # backbone_class
        return backbone.transformer.layer

    def add_classifier(self, info: ModelInfo) -> None:
        """DistilBertForSequenceClassification: pre_classifier + ReLU + classifier."""
        h = info.hidden_size
        self.pre_classifier = nn.Linear(h, h)
        self.classifier = nn.Linear(h, info.num_labels)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.pre_classifier(hidden[:, 0])))  # from [CLS]


register(FamilySpec(
    name="distilbert", kind="text-encoder", read_config=read_config,
    shard_class=DistilBertShard, prefix="distilbert.",
    hf_classes={"base": "DistilBertModel", "mean-pooling": "DistilBertModel",
                "sequence-classification": "DistilBertForSequenceClassification"},
    architectures={"DistilBertModel": "base",
                   "DistilBertForSequenceClassification": "sequence-classification"},
    model_types=("distilbert",), default_head="base"))
