"""``ShardModule``: a contiguous range of sub-layers [first_layer, last_layer] of one model.

Tensors cross shard boundaries as an ordered ``dict[str, Tensor]``:

- ``hidden``   (B, S, H) always; (B, S, I) when the cut is after sub-layer 3 (MLP intermediate);
- ``residual`` (B, S, H) when the cut is after sub-layer 1 or 3 (the skip connection);
- ``attention_mask`` (B, T) int64, BERT family only, carried unchanged to every later shard.

The first shard takes the model inputs, the last shard returns the head's outputs; the family
subclasses (``vit.VisionShard``, ``bert.BertShard``) say what those are.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .layers import EncoderBlock, Flow, block_sublayers, padding_bias
from .registry import ModelInfo
from .spec import DYNAMIC, TensorSpec, validate_inputs

logger = logging.getLogger(__name__)


def check_layer_range(info: ModelInfo, first_layer: int, last_layer: int) -> None:
    """Raise ValueError unless 1 <= first_layer <= last_layer <= info.num_layers."""
    for v in (first_layer, last_layer):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"layer bounds must be ints, got {first_layer!r}..{last_layer!r}")
    if not 1 <= first_layer <= last_layer <= info.num_layers:
        raise ValueError(
            f"layer range [{first_layer}, {last_layer}] is invalid for {info.name}: need "
            f"1 <= first <= last <= {info.num_layers} ({info.num_blocks} blocks x 4 sub-layers)"
        )


def boundary_spec(
    info: ModelInfo,
    cut_after: int,
    dtype: torch.dtype,
    batch: int = DYNAMIC,
    seq_len: int = DYNAMIC,
) -> list[TensorSpec]:
    """The tensors that cross a cut after global sub-layer ``cut_after`` (1 <= cut_after < L)."""
    if isinstance(cut_after, bool) or not isinstance(cut_after, int):
        raise TypeError(f"cut_after must be an int, got {cut_after!r}")
    if not 1 <= cut_after < info.num_layers:
        raise ValueError(
            f"cut after layer {cut_after} is invalid for {info.name}: "
            f"need 1 <= cut < {info.num_layers}"
        )
    if info.is_decoder:  # no attention mask; the context width may differ (decoder.py)
        from .decoder import decoder_boundary_spec

        return decoder_boundary_spec(info, cut_after, dtype, batch, seq_len)
    vision_len = info.seq_len  # None for text
    S = seq_len if vision_len is None else vision_len
    sub = (cut_after - 1) % 4 + 1
    width = info.intermediate_size if sub == 3 else info.hidden_size
    specs = [TensorSpec("hidden", dtype, (batch, S, width))]
    if sub in (1, 3):
        specs.append(TensorSpec("residual", dtype, (batch, S, info.hidden_size)))
    if not info.is_vision:
        specs.append(TensorSpec("attention_mask", torch.int64, (batch, seq_len)))
    return specs


class ShardModule(nn.Module):
    """Base of the family shards: runs the sub-layer loop and handles specs, dtype and device."""

    def __init__(self, info: ModelInfo, first_layer: int, last_layer: int) -> None:
        super().__init__()
        check_layer_range(info, first_layer, last_layer)
        self.info = info
        self.first_layer = first_layer
        self.last_layer = last_layer
        self.plan = block_sublayers(info, first_layer, last_layer)  # block -> its sub-layers here

    # -- family hooks -------------------------------------------------------------------------
    def embed(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """First shard: model inputs -> hidden (B, S, H)."""
        raise NotImplementedError

    def finish(
        self, hidden: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Last shard: final hidden (B, S, H) -> the head's outputs."""
        raise NotImplementedError

    def first_input_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        raise NotImplementedError

    def last_output_spec(self, batch: int, seq_len: int) -> list[TensorSpec]:
        raise NotImplementedError

    # -- common -------------------------------------------------------------------------------
    @property
    def is_first(self) -> bool:
        return self.first_layer == 1

    @property
    def is_last(self) -> bool:
        return self.last_layer == self.info.num_layers

    @property
    def backbone(self) -> nn.Module:
        backbone = getattr(self, self.info.spec.backbone_attr)
        assert isinstance(backbone, nn.Module)  # each family's __init__ sets it
        return backbone

    @property
    def blocks(self) -> nn.ModuleDict:
        """Global block index (as a string) -> block; ``encoder.layer`` in ViT/BERT checkpoints."""
        layer = self.backbone.get_submodule("encoder.layer")
        assert isinstance(layer, nn.ModuleDict)  # layers.Encoder
        return layer

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: that of the parameters (float32 when an int8 shard has none left)."""
        p = next(self.parameters(), None)
        return torch.float32 if p is None else p.dtype

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return torch.device("cpu") if p is None else p.device

    def input_spec(self, batch: int | None = None, seq_len: int | None = None) -> list[TensorSpec]:
        """What ``forward`` takes; ``batch``/``seq_len`` fix those dims, else they are -1."""
        B, T = _dims(batch, seq_len)
        if self.is_first:
            return self.first_input_spec(B, T)
        return boundary_spec(self.info, self.first_layer - 1, self.dtype, B, T)

    def output_spec(self, batch: int | None = None, seq_len: int | None = None) -> list[TensorSpec]:
        """What ``forward`` returns, in order."""
        B, T = _dims(batch, seq_len)
        if self.is_last:
            return self.last_output_spec(B, T)
        return boundary_spec(self.info, self.last_layer, self.dtype, B, T)

    def forward(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run this shard's sub-layers. Validates ``tensors`` first (ValueError on a bad frame)."""
        validate_inputs(self.input_spec(), tensors)
        dtype, device = self.dtype, self.device
        # Floats are cast to the compute dtype; ids and masks stay int64.
        tensors = {
            k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in tensors.items()
        }
        mask = tensors.get("attention_mask")
        attn_bias = None if mask is None else padding_bias(mask, dtype)  # (B, 1, 1, T)

        flow: Flow
        if self.is_first:
            flow = (self.embed(tensors), None)
        else:
            flow = (tensors["hidden"], tensors.get("residual"))
        layers = self.blocks
        for block, subs in self.plan.items():
            for k in subs:
                layer = layers[str(block)]
                assert isinstance(layer, EncoderBlock)  # the encoder families' blocks
                flow = layer.sublayer(k, flow, attn_bias)

        if self.is_last:
            return self.finish(flow[0], tensors)
        out = {"hidden": flow[0]}
        if flow[1] is not None:
            out["residual"] = flow[1]
        if mask is not None:
            out["attention_mask"] = mask
        return out

    def extra_repr(self) -> str:
        return f"{self.info.name}, layers [{self.first_layer}, {self.last_layer}]"


def _dims(batch: int | None, seq_len: int | None) -> tuple[int, int]:
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    return (DYNAMIC if batch is None else batch), (DYNAMIC if seq_len is None else seq_len)
