"""Preprocessing read from the model directory: images as transformers' own image processors
compute them (DeiT: 256 bicubic, centre crop 224, ImageNet mean/std), text truncated where
sentence-transformers truncates (all-MiniLM-L6-v2: 256 tokens), labels named by id2label."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from pipeedge import models
from pipeedge.apps.eval import EvalResult
from pipeedge.coordinator import inputs as inputs_mod
from pipeedge.coordinator.report import describe_outputs
from pipeedge.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, image_preprocessing

DEIT = "facebook/deit-base-distilled-patch16-224"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Odd-sized, non-square images, so resizing and cropping both matter."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(300, 260), (640, 480), (227, 229)]):
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)  # smooth + detail
        paths.append(root / f"{i}.png")
        img.save(paths[-1])
    return paths


def hf_pixels(processor, paths):
    from PIL import Image

    return processor([Image.open(p).convert("RGB") for p in paths],
                     return_tensors="pt")["pixel_values"]


def test_deit_defaults_equal_deit_image_processor(photos):
    from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil

    # The hub's facebook/deit-*-distilled preprocessor_config.json: ImageNet mean/std.
    processor = DeiTImageProcessorPil(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    got = inputs_mod.image_inputs(photos, DEIT)["pixel_values"]
    want = hf_pixels(processor, photos)
    assert got.shape == want.shape == (3, 3, 224, 224)
    assert (got - want).abs().max() <= 1e-5


def test_preprocessor_config_json_is_read(photos, tmp_path):
    from transformers import ViTImageProcessor

    # A fine-tuned ViT whose processor resizes on the shortest edge then crops, with its own stats.
    processor = ViTImageProcessor(size={"shortest_edge": 240}, do_center_crop=True,
                                  crop_size={"height": 224, "width": 224}, resample=3,
                                  image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(str(tmp_path))
    info = models.model_info("google/vit-base-patch16-224")
    prep = image_preprocessing(info, tmp_path)
    assert (prep.shortest_edge, prep.crop, prep.resample) == (240, (224, 224), 3)
    got = inputs_mod.image_inputs(photos, info, tmp_path)["pixel_values"]
    assert (got - hf_pixels(processor, photos)).abs().max() <= 1e-5
    # Without the file: the ViT hub default (224 bilinear, mean/std 0.5).
    plain = inputs_mod.image_inputs(photos, info)["pixel_values"]
    assert (plain - hf_pixels(ViTImageProcessor(), photos)).abs().max() <= 1e-5


def test_crop_size_without_height_and_width_is_a_config_error(tmp_path):
    # A crop needs both sides (transformers' center_crop refuses anything else too); this used
    # to pass as crop=(None, None) and fail later with a TypeError inside the image arithmetic.
    import json

    from pipeedge.models.hf_config import ConfigError
    from pipeedge.models.preprocessing import PREPROCESSOR_FILE

    (tmp_path / PREPROCESSOR_FILE).write_text(json.dumps(
        {"do_center_crop": True, "crop_size": {"shortest_edge": 224}}))
    info = models.model_info("google/vit-base-patch16-224")
    with pytest.raises(ConfigError, match="crop_size"):
        image_preprocessing(info, tmp_path)


def test_minilm_truncates_where_sentence_transformers_does(minilm_path):
    info = models.model_info("sentence-transformers/all-MiniLM-L6-v2")
    long_text = " ".join(["pipeline"] * 600)
    batch = inputs_mod.text_inputs([long_text, "short"], minilm_path, info)
    assert batch["input_ids"].shape[1] == 256  # sentence_bert_config.json max_seq_length
    assert inputs_mod.text_inputs([long_text], minilm_path)["input_ids"].shape[1] == 512


def test_label_names_in_infer_and_eval_output():
    logits = torch.tensor([[0.1, 3.0, 0.2]])
    text = describe_outputs({"logits": logits}, labels=("negative", "neutral", "positive"))
    assert "top classes neutral (1):" in text
    result = EvalResult("imagenet", (1, 1, 0, 2), (1, 0, 0, 2), 1.0,
                        ("negative", "neutral", "positive"))
    assert "per label: negative 50.0% (1/2), neutral 100.0% (1/1), positive 100.0% (1/1)" in \
        result.summary()
    unnamed = EvalResult("imagenet", (1,), (1,), 1.0, ("LABEL_0", "LABEL_1"))
    assert "per label" not in unnamed.summary()
