"""The unsplit transformers model, as a callable with the inputs and outputs of a whole pipeline.

Used to check that chaining shards gives the monolithic model's answer. transformers is imported
inside the functions, so importing this package stays fast for the control plane.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch

from .registry import ModelInfo

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

Reference = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _model_class(info: ModelInfo) -> type[PreTrainedModel]:
    import transformers

    cls = getattr(transformers, info.spec.hf_classes[info.head])
    assert issubclass(cls, transformers.PreTrainedModel)  # hf_classes name model classes
    return cls


def build_reference(
    info: ModelInfo, hf_dir: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> Reference:
    """Load ``hf_dir`` with transformers (eager attention, eval mode) and wrap it.

    Raises:
        ValueError: if transformers had to initialise any weight (the directory is incomplete),
            since a half-random reference would make any comparison meaningless.

    Example:
        >>> ref = build_reference(info, write_hf_directory(info, 0, tmp))
        >>> ref(example_inputs(info, 2))["logits"]
    """
    cls = _model_class(info)
    # transformers annotates from_pretrained as returning the model even with output_loading_info.
    model, loading = cast("tuple[PreTrainedModel, dict[str, list[str]]]", cls.from_pretrained(
        str(hf_dir), attn_implementation="eager", dtype=dtype, output_loading_info=True
    ))
    if loading.get("missing_keys"):
        raise ValueError(
            f"{hf_dir} lacks weights for {sorted(loading['missing_keys'])[:5]}...; "
            f"is it a complete checkpoint of {info.name}?"
        )
    model.eval()

    @torch.no_grad()
    def run(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if info.is_vision:
            out = model(pixel_values=tensors["pixel_values"].to(dtype))
            return {"logits": out.logits}
        if info.is_decoder:  # as the last decoder shard: logits of the last position only
            out = model(input_ids=tensors["input_ids"], use_cache=False)
            return {"logits": out.logits[:, -1]}
        kwargs = {
            k: tensors[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in tensors
        }
        out = model(**kwargs)
        if info.pooling is not None:  # sentence-transformers' Pooling (+ Normalize)
            from .bert import pool

            return {"embeddings": pool(out.last_hidden_state, tensors["attention_mask"],
                                       info.pooling)}
        if info.head == "sequence-classification":
            return {"logits": out.logits}
        pooled = getattr(out, "pooler_output", None)  # DistilBertModel has no pooler
        hidden = {"hidden": out.last_hidden_state}
        return hidden if pooled is None else {**hidden, "pooled": pooled}

    return run
