"""Build first-stage inputs for `infer`: image files, text, or random tensors."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from pipeedge import models


def random_inputs(model: str, batch: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    return models.example_inputs(models.model_info(model), batch, seed=seed)


def text_inputs(texts: list[str], tokenizer_dir: str | Path) -> dict[str, torch.Tensor]:
    """Tokenize with the tokenizer stored in a local model directory (never a hub)."""
    path = Path(tokenizer_dir)
    if not (path / "tokenizer_config.json").exists() and not (path / "vocab.txt").exists():
        raise FileNotFoundError(f"no tokenizer files in {path}; pass --tokenizer DIR pointing "
                                "at a local Hugging Face model directory")
    tok = _tokenizer(str(path.resolve()))
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """Loaded once per directory: `eval` tokenizes every microbatch of a dataset."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def image_inputs(paths: list[str | Path], model: str) -> dict[str, torch.Tensor]:
    """Resize to the model's input size and normalise as ViT/DeiT expect (mean 0.5, std 0.5)."""
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError("reading images needs Pillow: pip install pillow") from None
    info = models.model_info(model)
    size = int(info.config.get("image_size", 224))
    pixels = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        t = t.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        pixels.append((t - 0.5) / 0.5)
    return {"pixel_values": torch.stack(pixels)}
