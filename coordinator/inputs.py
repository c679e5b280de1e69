"""Build first-stage inputs for `infer`: image files, text, or random tensors.

`model` is a registry name or the `ModelInfo` the pipeline runs (`Pipeline.model_info()`);
`directory` is the model's local directory, whose preprocessing files are used when present
(`pipeedge.models.preprocessing`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from pipeedge import models
from pipeedge.models import preprocessing


def _info(model: str | models.ModelInfo) -> models.ModelInfo:
    return model if isinstance(model, models.ModelInfo) else models.model_info(model)


def weights_directory(pipeline) -> Path | None:
    """The pipeline's local/push weights directory, when this machine has it."""
    directory = pipeline.weights_directory
    return directory if directory is not None and directory.is_dir() else None


def random_inputs(model: str | models.ModelInfo, batch: int, *,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    return models.example_inputs(_info(model), batch, seed=seed)


def text_inputs(texts: list[str], tokenizer_dir: str | Path,
                model: str | models.ModelInfo | None = None) -> dict[str, torch.Tensor]:
    """Tokenize with the tokenizer stored in a local model directory (never a hub), truncated
    where the model's own files say (sentence_bert_config.json, model_max_length)."""
    path = Path(tokenizer_dir)
    if not (path / "tokenizer_config.json").exists() and not (path / "vocab.txt").exists():
        raise FileNotFoundError(f"no tokenizer files in {path}; pass --tokenizer DIR pointing "
                                "at a local Hugging Face model directory")
    tok = _tokenizer(str(path.resolve()))
    kwargs = {}
    if model is not None:
        kwargs["max_length"] = preprocessing.text_max_length(_info(model), path,
                                                             tok.model_max_length)
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt", **kwargs)
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """Loaded once per directory: `eval` tokenizes every microbatch of a dataset."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def image_inputs(paths: list[str | Path], model: str | models.ModelInfo,
                 directory: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Resize, crop and normalise as the model's preprocessor_config.json says (the family's
    hub defaults without one: ViT mean/std 0.5; DeiT 256 bicubic, crop 224, ImageNet)."""
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError("reading images needs Pillow: pip install pillow") from None
    prep = preprocessing.image_preprocessing(_info(model), directory)
    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(img.convert("RGB"))
    return {"pixel_values": preprocessing.batch_images(images, prep)}
