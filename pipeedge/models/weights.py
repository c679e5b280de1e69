"""Shard weights: each stage reads only its own tensors, so its memory grows with its shard.

Sources (``WeightsSource``):

- a local Hugging Face directory: ``config.json`` + ``model.safetensors`` (or sharded, with
  ``model.safetensors.index.json``), read key by key with ``safetensors.safe_open``; failing those,
  a ``pytorch_model.bin`` (loaded tensors-only and memory-mapped);
- a single ``.safetensors`` file;
- a seed-format ViT ``.npz`` (Google's ``ViT-B_16-224.npz`` naming), converted to torch layout;
- an ``int`` seed: every tensor is drawn from its own generator, seeded by a hash of
  (model, tensor name, seed), so every stage generates identical tensors for its own names alone;
- a mapping of tensors (e.g. a full state dict already in memory).

Checkpoints may or may not carry the backbone prefix (``bert.``/``vit.``/``deit.``); legacy
``LayerNorm.gamma``/``beta`` names are accepted too. Returned names always use the canonical prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

import numpy as np
import torch

from pipeedge.errors import PipeEdgeError

from .build import shard_tensor_shapes
from .registry import ModelInfo
from .shard import check_layer_range

logger = logging.getLogger(__name__)

WeightsSource = Union[str, "os.PathLike[str]", int, Mapping[str, torch.Tensor]]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"


class WeightsError(PipeEdgeError):
    """Base of the errors raised while finding or reading weights."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weights file or directory does not exist, or has no weights file we can read."""


class MissingTensorError(WeightsError, KeyError):
    """The source exists but lacks a tensor this shard needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMismatchError(WeightsError, ValueError):
    """The source's tensors or config do not fit the model (wrong shape, wrong model)."""


# -- name matching ---------------------------------------------------------------------------------


def candidate_keys(info: ModelInfo, name: str) -> list[str]:
    """Names under which a checkpoint may store canonical tensor ``name``, most likely first."""
    cands = [name]
    if name.startswith(info.prefix):
        cands.append(name[len(info.prefix) :])
    if _tied_head(info, name):
        # Tied LM head: checkpoints usually store only the input embedding.
        emb = info.spec.embedding
        cands += [info.prefix + emb, emb]
    legacy = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    for c in list(cands):
        for new, old in legacy.items():
            if c.endswith(new):
                cands.append(c[: -len(new)] + old)
    return cands


def _tied_head(info: ModelInfo, name: str) -> bool:
    """``name`` is a decoder's LM head that shares the input embedding (tie_word_embeddings)."""
    return info.is_decoder and name == "lm_head.weight" and info.decoder.tie_word_embeddings


def _missing(info: ModelInfo, where: str, name: str) -> MissingTensorError:
    tried = candidate_keys(info, name)[1:]
    also = f" (nor {', '.join(repr(t) for t in tried)})" if tried else ""
    return MissingTensorError(
        f"{where} has no tensor {name!r}{also}; is it a checkpoint of {info.name}?"
    )


def select_tensors(
    info: ModelInfo, names: list[str], tensors: Mapping[str, torch.Tensor], *, where: str
) -> dict[str, torch.Tensor]:
    """Pick ``names`` (canonical) out of ``tensors``, whichever naming variant it uses."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        key = next((k for k in candidate_keys(info, name) if k in tensors), None)
        if key is None:
            raise _missing(info, where, name)
        out[name] = tensors[key]
    return out


# -- readers ---------------------------------------------------------------------------------------


def _read_safetensors(
    info: ModelInfo, names: list[str], files: dict[str, Path], where: str
) -> dict[str, torch.Tensor]:
    """Read ``names`` from safetensors files; ``files`` maps every key on disk to its file."""
    from safetensors import safe_open

    wanted: dict[Path, list[tuple[str, str]]] = {}  # file -> [(canonical, key on disk)]
    for name in names:
        key = next((k for k in candidate_keys(info, name) if k in files), None)
        if key is None:
            raise _missing(info, where, name)
        wanted.setdefault(files[key], []).append((name, key))
    out: dict[str, torch.Tensor] = {}
    for path, pairs in wanted.items():
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {path} (listed in {SAFETENSORS_INDEX}) does not exist; "
                "download the missing shard"
            )
        with safe_open(str(path), framework="pt") as f:
            for name, key in pairs:
                out[name] = f.get_tensor(key)
    return {n: out[n] for n in names}


def _safetensors_keys(path: Path) -> dict[str, Path]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: path for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)


def _check_config(info: ModelInfo, directory: Path) -> None:
    """A directory's own config.json must describe the model the stage was told to build: a
    checkpoint with more layers or another rope theta would otherwise load and compute wrong."""
    from .checkpoint import CONFIG_FILE, differences, directory_info

    if not (directory / CONFIG_FILE).is_file():
        logger.warning(
            "%s has no config.json; cannot check it is a checkpoint of %s", directory, info.name
        )
        return
    diff = differences(info, directory_info(directory, info.name))
    if diff:
        raise WeightsMismatchError(
            f"{directory / CONFIG_FILE} disagrees with the config {info.name} was assigned with "
            f"on {', '.join(diff)}; deploy with the directory's own config (omit model:)"
        )


def _read_hf_directory(
    info: ModelInfo, names: list[str], directory: Path
) -> dict[str, torch.Tensor]:
    _check_config(info, directory)
    index = directory / SAFETENSORS_INDEX
    single = directory / SAFETENSORS_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = {k: directory / v for k, v in weight_map.items()}
        where = f"weights index {index}"
    elif single.is_file():
        files = _safetensors_keys(single)
        where = f"weights file {single}"
    elif (directory / TORCH_FILE).is_file():
        return _read_torch_file(info, names, directory / TORCH_FILE)
    else:
        raise WeightsNotFoundError(
            f"{directory} has no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {TORCH_FILE}; "
            "is it a Hugging Face model directory?"
        )
    return _read_safetensors(info, names, files, where)


def _read_torch_file(info: ModelInfo, names: list[str], path: Path) -> dict[str, torch.Tensor]:
    """Older hub checkpoints (e.g. textattack's) ship only pytorch_model.bin. Unpickled
    tensors-only and memory-mapped, so the pages of other shards' tensors are never read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # pre-zip (torch < 1.6) files cannot be memory-mapped
        logger.warning("%s cannot be memory-mapped; reading it whole", path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read {path} ({e}); re-save it as safetensors") from e
    picked = select_tensors(info, names, state, where=f"weights file {path}")
    return {k: v.clone() for k, v in picked.items()}  # detach from the mapping of the whole file


# Google ViT .npz naming (as read by the seed): canonical suffix -> (npz key, converter).
_Convert = Callable[[np.ndarray, ModelInfo], torch.Tensor]


def _t(a: np.ndarray, info: ModelInfo) -> torch.Tensor:  # flax Dense kernel (in, out) -> (out, in)
    return torch.from_numpy(np.ascontiguousarray(a.T))


def _qkv_kernel(a: np.ndarray, info: ModelInfo) -> torch.Tensor:  # (H, nh, hd) -> (H, H).T
    return torch.from_numpy(np.ascontiguousarray(a.reshape(info.hidden_size, -1).T))


def _flat(a: np.ndarray, info: ModelInfo) -> torch.Tensor:  # (nh, hd) -> (H,)
    return torch.from_numpy(np.ascontiguousarray(a.reshape(-1)))


def _out_kernel(a: np.ndarray, info: ModelInfo) -> torch.Tensor:  # (nh, hd, H) -> (H, H).T
    return torch.from_numpy(np.ascontiguousarray(a.reshape(-1, info.hidden_size).T))


def _conv(a: np.ndarray, info: ModelInfo) -> torch.Tensor:  # (p, p, C, H) -> (H, C, p, p)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))


def _same(a: np.ndarray, info: ModelInfo) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


_NPZ_GLOBAL: dict[str, tuple[str, _Convert]] = {
    "vit.embeddings.cls_token": ("cls", _same),
    "vit.embeddings.position_embeddings": ("Transformer/posembed_input/pos_embedding", _same),
    "vit.embeddings.patch_embeddings.projection.weight": ("embedding/kernel", _conv),
    "vit.embeddings.patch_embeddings.projection.bias": ("embedding/bias", _same),
    "vit.layernorm.weight": ("Transformer/encoder_norm/scale", _same),
    "vit.layernorm.bias": ("Transformer/encoder_norm/bias", _same),
    "classifier.weight": ("head/kernel", _t),
    "classifier.bias": ("head/bias", _same),
}
_ATT = "MultiHeadDotProductAttention_1"
_NPZ_BLOCK: dict[str, tuple[str, _Convert]] = {
    "layernorm_before.weight": ("LayerNorm_0/scale", _same),
    "layernorm_before.bias": ("LayerNorm_0/bias", _same),
    **{
        f"attention.attention.{p}.{kind}": (
            f"{_ATT}/{p}/{'kernel' if kind == 'weight' else 'bias'}",
            _qkv_kernel if kind == "weight" else _flat,
        )
        for p in ("query", "key", "value")
        for kind in ("weight", "bias")
    },
    "attention.output.dense.weight": (f"{_ATT}/out/kernel", _out_kernel),
    "attention.output.dense.bias": (f"{_ATT}/out/bias", _same),
    "layernorm_after.weight": ("LayerNorm_2/scale", _same),
    "layernorm_after.bias": ("LayerNorm_2/bias", _same),
    "intermediate.dense.weight": ("MlpBlock_3/Dense_0/kernel", _t),
    "intermediate.dense.bias": ("MlpBlock_3/Dense_0/bias", _same),
    "output.dense.weight": ("MlpBlock_3/Dense_1/kernel", _t),
    "output.dense.bias": ("MlpBlock_3/Dense_1/bias", _same),
}


def _npz_key(name: str) -> tuple[str, _Convert]:
    """npz key and converter for canonical ViT tensor ``name``."""
    if name in _NPZ_GLOBAL:
        return _NPZ_GLOBAL[name]
    parts = name.split(".")  # vit.encoder.layer.<i>.<rest>
    block, rest = parts[3], ".".join(parts[4:])
    key, conv = _NPZ_BLOCK[rest]
    return f"Transformer/encoderblock_{block}/{key}", conv


def _read_npz(info: ModelInfo, names: list[str], path: Path) -> dict[str, torch.Tensor]:
    if info.family != "vit":
        raise ValueError(
            f"{path}: .npz weights are only for ViT models, not {info.name} ({info.family})"
        )
    out: dict[str, torch.Tensor] = {}
    # NpzFile reads a member only when it is indexed, so untouched blocks are never read.
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        for name in names:
            key, conv = _npz_key(name)
            if key not in keys:
                raise MissingTensorError(
                    f"weights file {path} has no array {key!r} (for {name!r}); "
                    f"is it Google's npz of {info.name}?"
                )
            out[name] = conv(npz[key], info)
    return out


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def random_tensor(info: ModelInfo, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """Tensor ``name`` of the seeded random model: normal(0, initializer_range) for weights and
    embeddings, zeros for biases, ones for LayerNorm weights (as transformers initialises)."""
    if _tied_head(info, name):
        name = info.prefix + info.spec.embedding  # a tied head equals the embedding
    parent, _, leaf = name.rpartition(".")
    if leaf in ("bias", "beta"):
        return torch.zeros(shape)
    norm = parent.rsplit(".", 1)[-1].lower()
    if "norm" in norm or norm in ("ln_1", "ln_2", "ln_f"):  # GPT-2/Llama/Qwen3 q_norm too
        return torch.ones(shape)
    std = float(info.config.get("initializer_range", 0.02))
    g = torch.Generator().manual_seed(_stable_seed(info.name, name, seed))
    return torch.randn(shape, generator=g) * std


# -- public API ------------------------------------------------------------------------------------


def load_shard_state(
    info: ModelInfo, first_layer: int, last_layer: int, source: WeightsSource
) -> dict[str, torch.Tensor]:
    """Read the tensors of the shard [first_layer, last_layer] from ``source`` (and nothing else).

    Args:
        info: the model.
        first_layer, last_layer: the shard's global sub-layer range (1-based, inclusive).
        source: a Hugging Face directory, a ``.safetensors`` or ViT ``.npz`` file, an int seed, or a
            mapping of tensors.

    Returns:
        Canonical tensor name -> tensor (the file's dtype), in ``shard_tensor_names`` order.

    Raises:
        WeightsNotFoundError: the path does not exist or holds no readable weights.
        MissingTensorError: a tensor this shard needs is absent.
        WeightsMismatchError: a tensor's shape, or the directory's config.json, does not fit.

    Example:
        >>> state = load_shard_state(model_info("pipeedge/tiny-bert"), 1, 4, 0)  # random, seed 0
        >>> sorted(state)[0]
        'bert.embeddings.LayerNorm.bias'
    """
    check_layer_range(info, first_layer, last_layer)
    shapes = shard_tensor_shapes(info, first_layer, last_layer)
    names = list(shapes)
    if isinstance(source, bool):
        raise TypeError("weights source must be a path, an int seed or a mapping, not a bool")
    if isinstance(source, int):
        state = {n: random_tensor(info, n, shapes[n], source) for n in names}
    elif isinstance(source, Mapping):
        state = select_tensors(info, names, source, where="the given state dict")
    elif isinstance(source, (str, os.PathLike)):
        state = _read_path(info, names, Path(source))
    else:
        raise TypeError(
            f"weights source {source!r} is a {type(source).__name__}; "
            "pass a path, an int seed or a mapping"
        )
    where = "the mapping" if isinstance(source, Mapping) else source
    for name, t in state.items():
        if t.shape != shapes[name]:
            raise WeightsMismatchError(
                f"tensor {name!r} from {where} "
                f"has shape {tuple(t.shape)} but {info.name} expects {tuple(shapes[name])}"
            )
    logger.debug("loaded %d tensors of %s [%d, %d]", len(state), info.name, first_layer, last_layer)
    return state


class LazyState(Mapping[str, torch.Tensor]):
    """Tensors read one at a time when asked for (``lazy_shard_state``)."""

    def __init__(self, names: Iterable[str], read: Callable[[str], torch.Tensor]) -> None:
        self._names, self._read = list(names), read
        self._known = set(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def lazy_safetensors(path: str | os.PathLike[str]) -> LazyState:
    """The tensors of one safetensors file, each read from disk when asked for."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())

    def read(key: str) -> torch.Tensor:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)

    return LazyState(keys, read)


def lazy_shard_state(
    info: ModelInfo, first_layer: int, last_layer: int, source: int | str | os.PathLike[str]
) -> Mapping[str, torch.Tensor]:
    """``load_shard_state`` that reads each tensor only when asked for: seeded random weights
    (the same values) or a ``.safetensors`` file; other sources load whole. For builders that
    convert as they go (``build_shard_streaming``), so a float32 copy of the shard never exists
    whole."""
    if isinstance(source, int) and not isinstance(source, bool):
        shapes = shard_tensor_shapes(info, first_layer, last_layer)
        return LazyState(shapes, lambda n: random_tensor(info, n, shapes[n], source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".safetensors" and path.is_file():
            return lazy_safetensors(path)
    return load_shard_state(info, first_layer, last_layer, source)  # which refuses a bool


def _read_path(info: ModelInfo, names: list[str], path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsNotFoundError(
            f"weights path {path} does not exist; pass a Hugging Face directory, a .safetensors or "
            ".npz file, or an int seed for random weights"
        )
    if path.is_dir():
        return _read_hf_directory(info, names, path)
    if path.suffix == ".npz":
        return _read_npz(info, names, path)
    if path.suffix == ".safetensors":
        return _read_safetensors(info, names, _safetensors_keys(path), f"weights file {path}")
    raise ValueError(f"weights file {path} has an unknown type; use a .safetensors or .npz file")


def save_safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise tensors sorted by name (equal states give equal bytes), e.g. to push a shard."""
    from safetensors.torch import save

    return save({k: state[k].detach().cpu().contiguous() for k in sorted(state)})


def load_safetensors_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of ``save_safetensors_bytes``."""
    from safetensors.torch import load

    try:
        tensors = load(blob)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise WeightsError(
            f"bytes are not a safetensors blob ({e}); send save_safetensors_bytes output"
        ) from e
    return {k: tensors[k] for k in sorted(tensors)}


def write_hf_directory(
    info: ModelInfo, source: WeightsSource, out_dir: str | os.PathLike[str]
) -> Path:
    """Write the whole model as a Hugging Face directory: config.json + model.safetensors (classic
    hub key names), e.g. for the unsplit transformers reference or a directory of random weights."""
    from safetensors.torch import save_file

    state = load_shard_state(info, 1, info.num_layers, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(info.config)
    config["architectures"] = [info.spec.hf_classes[info.head]]
    (out / "config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    tensors = {k: state[k].contiguous() for k in sorted(state)}
    save_file(tensors, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
    logger.info("wrote %s (%d tensors) to %s", info.name, len(tensors), out)
    return out


def write_vit_npz(info: ModelInfo, source: WeightsSource, path: str | os.PathLike[str]) -> Path:
    """Write a ViT model in Google's npz layout (the seed's weight format)."""
    if info.family != "vit":
        raise ValueError(f".npz weights are only for ViT models, not {info.name} ({info.family})")
    state = load_shard_state(info, 1, info.num_layers, source)
    h = info.hidden_size
    arrays: dict[str, np.ndarray] = {}
    for name, t in state.items():
        a = t.detach().float().cpu().numpy()
        key, conv = _npz_key(name)
        if conv is _t:
            a = a.T
        elif conv is _qkv_kernel:
            a = a.T.reshape(h, info.num_heads, -1)
        elif conv is _flat:
            a = a.reshape(info.num_heads, -1)
        elif conv is _out_kernel:
            a = a.T.reshape(info.num_heads, -1, h)
        elif conv is _conv:
            a = a.transpose(2, 3, 1, 0)
        arrays[key] = np.ascontiguousarray(a)
    out = Path(path)
    with out.open("wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, allow_pickle=False, **arrays)  # numeric arrays: pickle is never used
    return out
