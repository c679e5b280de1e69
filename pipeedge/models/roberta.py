"""RoBERTa and XLM-RoBERTa (multilingual sentence-embedding models): BERT blocks under the
``roberta.`` prefix, with two differences. Positions are offset by padding, as transformers'
``create_position_ids_from_input_ids``: real tokens count from ``pad_token_id + 1`` and padding
sits at ``pad_token_id``, so a padded row embeds its real tokens exactly like the unpadded one.
The classification head reads the ``<s>`` token through dense + tanh + out_proj (no pooler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import bert
from .family import FamilySpec, register
from .hf_config import EncoderConfig
from .layers import Namespace
from .registry import ModelInfo


def read_config(model: str, c: Mapping[str, Any]) -> EncoderConfig:
    """RobertaConfig's defaults: BertConfig's, except pad_token_id 1."""
    return bert.read_config(model, c, pad_token_id=1)


class Embeddings(bert.Embeddings):
    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = input_ids.ne(self.pad_token_id).long()  # (B, T)
        return torch.cumsum(real, dim=1) * real + self.pad_token_id

    def max_tokens(self) -> int:
        # Positions 0..pad are reserved, so e.g. 514 embeddings hold 512 tokens.
        return self.position_embeddings.num_embeddings - self.pad_token_id - 1


class Backbone(bert.Backbone):
    embeddings_class = Embeddings
    pooler_heads = ("base",)  # RobertaForSequenceClassification has no pooler


class ClassificationHead(Namespace):
    """``classifier``: RobertaClassificationHead's two projections."""

    dense: nn.Linear
    out_proj: nn.Linear


class RobertaShard(bert.BertShard):
    backbone_class = Backbone

    def add_classifier(self, info: ModelInfo) -> None:
        """RobertaClassificationHead: dense + tanh + out_proj on the <s> token."""
        h = info.hidden_size
        self.classifier = ClassificationHead(dense=nn.Linear(h, h),
                                             out_proj=nn.Linear(h, info.num_labels))

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.classifier
        assert isinstance(head, ClassificationHead)  # add_classifier above
        return head.out_proj(torch.tanh(head.dense(hidden[:, 0])))


_HEADS = {"base": "{}Model", "mean-pooling": "{}Model",
          "sequence-classification": "{}ForSequenceClassification"}

for _name, _cls, _type in (("roberta", "Roberta", "roberta"),
                           ("xlm-roberta", "XLMRoberta", "xlm-roberta")):
    register(FamilySpec(
        name=_name, kind="text-encoder", read_config=read_config, shard_class=RobertaShard,
        prefix="roberta.", hf_classes={h: c.format(_cls) for h, c in _HEADS.items()},
        architectures={f"{_cls}Model": "base",
                       f"{_cls}ForSequenceClassification": "sequence-classification"},
        model_types=(_type,), default_head="base"))
