"""Client-side input preprocessing, read from the model directory like the model itself.

Images: a directory's ``preprocessor_config.json`` (what transformers' image processors read:
resize, resample, centre crop, rescale, mean/std) is applied with PIL + numpy exactly as
``BaseImageProcessor``'s PIL backend does, so pixels equal e.g. ``DeiTImageProcessor``'s. Without
one, each family's hub default is used (``FamilySpec.preprocessor``): ViT resizes to the input
size (bilinear, mean/std 0.5); DeiT resizes to 256/224 of it (bicubic), centre-crops, and uses
the ImageNet mean/std.

Text: the longest input is ``sentence_bert_config.json``'s ``max_seq_length`` (what
sentence-transformers truncates at, 256 for all-MiniLM-L6-v2), else the tokenizer's
``model_max_length``, never more than the model's positions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .hf_config import ConfigError
from .registry import ModelInfo

if TYPE_CHECKING:  # PIL is imported where images are read
    import PIL.Image

PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL resample codes as preprocessor_config.json stores them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImagePreprocessing:
    resize: tuple[int, int] | None    # (height, width); None = keep
    shortest_edge: int | None         # resize keeping the aspect ratio instead
    resample: int                     # PIL code (2 bilinear, 3 bicubic)
    crop: tuple[int, int] | None      # centre crop (height, width) after resizing
    rescale: float | None             # 1/255 when do_rescale
    mean: tuple[float, ...] | None    # None = no normalisation
    std: tuple[float, ...] | None


def _hw(value: Any, what: str) -> tuple[int | None, int | None, int | None]:
    """(height, width, shortest_edge) of a size entry: an int, or a dict as transformers writes."""
    if isinstance(value, int):
        return value, value, None
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"]), None
        if "shortest_edge" in value and "longest_edge" not in value:
            return None, None, int(value["shortest_edge"])
    raise ConfigError(f"{PREPROCESSOR_FILE} {what}={value!r} is not supported; give "
                      "{height, width} or {shortest_edge}")


def image_preprocessing(info: ModelInfo,
                        directory: str | os.PathLike[str] | None = None) -> ImagePreprocessing:
    """The directory's preprocessor_config.json, else the family's defaults for this model."""
    path = Path(directory) / PREPROCESSOR_FILE if directory else None
    if path is not None and path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
    else:
        config = (info.spec.preprocessor or no_images)(info)
    resize = shortest = crop = None
    if config.get("do_resize", True):
        h, w, shortest = _hw(config.get("size", info.image_size), "size")
        resize = (h, w) if h is not None and w is not None else None
    if config.get("do_center_crop", False):
        h, w, _ = _hw(config.get("crop_size", info.image_size), "crop_size")
        if h is None or w is None:  # transformers' center_crop needs both as well
            raise ConfigError(f"{PREPROCESSOR_FILE} crop_size={config.get('crop_size')!r} is not "
                              "supported; give {height, width}")
        crop = (h, w)
    resample = int(config.get("resample", 2))
    if resample not in _RESAMPLE:
        raise ConfigError(f"{PREPROCESSOR_FILE} resample={resample} is not a PIL filter")
    normalize = config.get("do_normalize", True)
    return ImagePreprocessing(
        resize=resize, shortest_edge=shortest, resample=resample, crop=crop,
        rescale=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True)
        else None,
        mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))) if normalize else None,
        std=tuple(config.get("image_std", (0.5, 0.5, 0.5))) if normalize else None)


def preprocess_image(image: PIL.Image.Image, prep: ImagePreprocessing) -> torch.Tensor:
    """One PIL image -> (C, H, W) float32, as BaseImageProcessor's PIL backend computes it."""
    from PIL import Image

    image = image.convert("RGB")
    if prep.resize is not None or prep.shortest_edge is not None:
        if prep.shortest_edge is not None:  # transformers' get_resize_output_image_size
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = prep.shortest_edge, int(prep.shortest_edge * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            assert prep.resize is not None  # one of the two, tested above
            size = (prep.resize[1], prep.resize[0])  # PIL takes (width, height)
        image = image.resize(size, resample=Image.Resampling(prep.resample))
    a = np.asarray(image).transpose(2, 0, 1)  # (C, H, W) uint8
    if prep.crop is not None:
        ch, cw = prep.crop
        top, left = (a.shape[1] - ch) // 2, (a.shape[2] - cw) // 2
        if top < 0 or left < 0:
            raise ValueError(f"image of {a.shape[1]}x{a.shape[2]} is smaller than the "
                             f"{ch}x{cw} crop; check {PREPROCESSOR_FILE}")
        a = a[:, top:top + ch, left:left + cw]
    x = a.astype(np.float32)
    if prep.rescale is not None:  # in float64, then float32, as transformers' rescale
        x = (a.astype(np.float64) * prep.rescale).astype(np.float32)
    if prep.mean is not None:
        mean = np.array(prep.mean, dtype=np.float32)[:, None, None]
        std = np.array(prep.std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def text_max_length(info: ModelInfo, directory: str | os.PathLike[str] | None,
                    tokenizer_max: int | None = None) -> int:
    """Tokens to truncate text at: sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length (huge when unset), capped at the model's positions."""
    limit = info.max_positions
    st = Path(directory) / "sentence_bert_config.json" if directory else None
    if st is not None and st.is_file():
        value = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return min(int(value), limit)
    if tokenizer_max and tokenizer_max < 10**9:
        return min(int(tokenizer_max), limit)
    return limit


def vit_defaults(info: ModelInfo) -> dict[str, Any]:
    """google/vit-*'s preprocessor_config.json, at this model's input size."""
    s = info.image_size
    return {"size": {"height": s, "width": s}, "resample": 2, "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3}


def deit_defaults(info: ModelInfo) -> dict[str, Any]:
    """facebook/deit-*'s preprocessor_config.json (256 -> 224 centre crop), scaled to the size."""
    s = info.image_size
    r = s * 256 // 224
    return {"size": {"height": r, "width": r}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": s, "width": s}, "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD)}


def no_images(info: ModelInfo) -> dict[str, Any]:
    raise ConfigError(f"{info.name} ({info.family}) takes text, not images")


def batch_images(images: Sequence[PIL.Image.Image], prep: ImagePreprocessing) -> torch.Tensor:
    return torch.stack([preprocess_image(im, prep) for im in images])
