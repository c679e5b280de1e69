"""ViT and DeiT (distilled) pieces, named like the hub checkpoints (``vit.encoder.layer.0...``).

ViT blocks are pre-norm: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``; the final LayerNorm and the
classifier read the cls token (DeiT: the mean of the cls and distillation heads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .family import FamilySpec, register
from .hf_config import EncoderConfig, encoder_fields
from .layers import (
    ACTIVATIONS,
    Dense,
    Encoder,
    EncoderBlock,
    Flow,
    Namespace,
    SelfAttention,
    activation,
)
from .preprocessing import deit_defaults, vit_defaults
from .registry import ModelInfo
from .shard import ShardModule
from .spec import TensorSpec


def read_config(model: str, c: Mapping[str, Any]) -> EncoderConfig:
    """ViT/DeiT config.json; defaults are ViTConfig's/DeiTConfig's."""
    return EncoderConfig(
        **encoder_fields(model, c, ACTIVATIONS),
        image_size=int(c.get("image_size", 224)), patch_size=int(c.get("patch_size", 16)),
        num_channels=int(c.get("num_channels", 3)), qkv_bias=bool(c.get("qkv_bias", True)))


class PatchEmbeddings(nn.Module):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        p = info.patch_size
        self.projection = nn.Conv2d(info.num_channels, info.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).flatten(2).transpose(1, 2)  # (B, N, H)


class Embeddings(nn.Module):
    """Patches + cls token (+ DeiT's distillation token) + learned positions."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        h = info.hidden_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, h))
        if info.family == "deit":
            self.distillation_token = nn.Parameter(torch.empty(1, 1, h))
        self.position_embeddings = nn.Parameter(torch.empty(1, info.seq_len or 0, h))
        self.patch_embeddings = PatchEmbeddings(info)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(pixel_values)  # (B, N, H)
        B = x.shape[0]
        tokens = [self.cls_token.expand(B, -1, -1)]
        if hasattr(self, "distillation_token"):
            tokens.append(self.distillation_token.expand(B, -1, -1))
        x = torch.cat([*tokens, x], dim=1)  # (B, S, H)
        return x + self.position_embeddings


class Attention(Namespace):
    """``attention``: ``attention`` (sub-layer 1) and ``output`` (2), as in the checkpoint."""

    attention: SelfAttention
    output: Dense


class Block(EncoderBlock):
    """One encoder block, holding only the sub-layers in ``sublayers`` (1..4)."""

    def __init__(self, info: ModelInfo, sublayers: list[int]) -> None:
        super().__init__()
        h, i = info.hidden_size, info.intermediate_size
        eps = info.layer_norm_eps
        self.act = activation(info.hp.hidden_act)
        self.attention = Attention()
        if 1 in sublayers:
            self.layernorm_before = nn.LayerNorm(h, eps=eps)
            self.attention.attention = SelfAttention(info)
        if 2 in sublayers:
            self.attention.output = Dense(dense=nn.Linear(h, h))
        if 3 in sublayers:
            self.layernorm_after = nn.LayerNorm(h, eps=eps)
            self.intermediate = Dense(dense=nn.Linear(h, i))
        if 4 in sublayers:
            self.output = Dense(dense=nn.Linear(i, h))

    def sublayer(self, k: int, flow: Flow, attn_bias: torch.Tensor | None) -> Flow:
        x, residual = flow
        if k == 1:
            return self.attention.attention(self.layernorm_before(x), attn_bias), x
        if k == 2:
            return self.attention.output.dense(x) + residual, None
        if k == 3:
            return self.act(self.intermediate.dense(self.layernorm_after(x))), x  # (B, S, I)
        return self.output.dense(x) + residual, None


class Backbone(nn.Module):
    """``vit.*`` / ``deit.*``: embeddings on the first shard, blocks, final norm on the last."""

    def __init__(
        self, info: ModelInfo, blocks: dict[int, list[int]], first: bool, last: bool
    ) -> None:
        super().__init__()
        if first:
            self.embeddings = Embeddings(info)
        # Keys are global block indices, so names read encoder.layer.<i>... as in the checkpoint.
        self.encoder = Encoder(
            layer=nn.ModuleDict({str(b): Block(info, s) for b, s in blocks.items()})
        )
        if last:
            self.layernorm = nn.LayerNorm(info.hidden_size, eps=info.layer_norm_eps)


class VisionShard(ShardModule):
    """A ViT / DeiT shard: ``pixel_values`` in on the first shard, ``logits`` out of the last."""

    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__(info, first_layer, last_layer)
        setattr(self, info.family, Backbone(info, self.plan, self.is_first, self.is_last))
        if self.is_last:
            h, n = info.hidden_size, info.num_labels
            if info.family == "deit":
                self.cls_classifier = nn.Linear(h, n)
                self.distillation_classifier = nn.Linear(h, n)
            else:
                self.classifier = nn.Linear(h, n)

    @property
    def backbone(self) -> Backbone:
        backbone = super().backbone
        assert isinstance(backbone, Backbone)  # set in __init__
        return backbone

    def embed(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone.embeddings(tensors["pixel_values"])

    def finish(
        self, hidden: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        x = self.backbone.layernorm(hidden)
        if self.info.family == "deit":
            # As DeiTForImageClassificationWithTeacher: the mean of the cls and distillation heads.
            logits = (self.cls_classifier(x[:, 0]) + self.distillation_classifier(x[:, 1])) / 2
        else:
            logits = self.classifier(x[:, 0])
        return {"logits": logits}  # (B, num_labels)

    def first_input_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        c, s = self.info.num_channels, self.info.image_size
        return [TensorSpec("pixel_values", self.dtype, (batch, c, s, s))]

    def last_output_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        return [TensorSpec("logits", self.dtype, (batch, self.info.num_labels))]


register(FamilySpec(
    name="vit", kind="vision", read_config=read_config, shard_class=VisionShard, prefix="vit.",
    hf_classes={"image-classification": "ViTForImageClassification"},
    architectures={"ViTForImageClassification": "image-classification"},
    model_types=("vit",), default_head="image-classification", preprocessor=vit_defaults))
register(FamilySpec(
    name="deit", kind="vision", read_config=read_config, shard_class=VisionShard, prefix="deit.",
    hf_classes={"image-classification": "DeiTForImageClassificationWithTeacher"},
    architectures={"DeiTForImageClassificationWithTeacher": "image-classification"},
    model_types=("deit",), default_head="image-classification", preprocessor=deit_defaults))
