"""Building shards: from a layer range and a state dict to a ready-to-run ``ShardModule``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .registry import ModelInfo
from .shard import ShardModule, check_layer_range

logger = logging.getLogger(__name__)


class _SkipInit(TorchFunctionMode):
    """Skips `torch.nn.init` on the meta tensors of `_meta_shard` (they hold no values).

    nn.Embedding's init is `normal_`, whose meta kernel is a Python decomposition that imports
    torch._dynamo on first use: 1.2 CPU s and +71 MB in every stage process that built a text
    model's first shard (12 s of an Assign on a 0.1-core device). A mode is thread-local, so a
    module built in another thread meanwhile keeps its init."""

    def __torch_function__(self, func: Callable[..., Any], types: object,
                           args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _meta_shard(info: ModelInfo, first_layer: int, last_layer: int) -> ShardModule:
    """The shard's structure without storage: names and shapes for free."""
    with torch.device("meta"), _SkipInit():
        return info.spec.shard_class(info, first_layer, last_layer)


def shard_structure(info: ModelInfo, first_layer: int, last_layer: int) -> ShardModule:
    """The shard without weights (meta tensors): its specs and sizes, nothing read or held."""
    check_layer_range(info, first_layer, last_layer)
    return _meta_shard(info, first_layer, last_layer)


def shard_tensor_shapes(
    info: ModelInfo, first_layer: int, last_layer: int
) -> dict[str, torch.Size]:
    """Checkpoint tensor name (canonical prefix) -> shape, for the shard [first, last]."""
    return {k: v.shape for k, v in _meta_shard(info, first_layer, last_layer).state_dict().items()}


def shard_tensor_names(info: ModelInfo, first_layer: int, last_layer: int) -> list[str]:
    """The checkpoint tensors the shard [first_layer, last_layer] needs, with canonical prefix.

    Example:
        >>> shard_tensor_names(model_info("pipeedge/tiny-vit"), 12, 12)
        ['vit.encoder.layer.2.output.dense.weight', 'vit.encoder.layer.2.output.dense.bias', ...]
    """
    return list(shard_tensor_shapes(info, first_layer, last_layer))


def build_shard(
    info: ModelInfo,
    first_layer: int,
    last_layer: int,
    state: Mapping[str, torch.Tensor] | None,
    *,
    dtype: torch.dtype = torch.float32,
) -> ShardModule:
    """Build the shard [first_layer, last_layer] (1-based, inclusive) in eval mode.

    Args:
        info: the model, from ``model_info``.
        first_layer, last_layer: global sub-layer range, 1 <= first <= last <= info.num_layers.
        state: this shard's tensors (from ``load_shard_state``), named with or without the backbone
            prefix; extra tensors are ignored. ``None`` means seeded random weights (seed 0).
        dtype: weight and compute dtype (float32, float16 or bfloat16).

    Returns:
        The shard. Its parameters share memory with ``state`` where the dtype already matches.

    Example:
        >>> info = model_info("pipeedge/tiny-vit")
        >>> shard = build_shard(info, 1, info.num_layers, None)
        >>> shard(example_inputs(info, 2))["logits"].shape
        torch.Size([2, 10])
    """
    from .weights import load_shard_state, select_tensors

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not supported; use float32, float16 or bfloat16")
    check_layer_range(info, first_layer, last_layer)
    module = _meta_shard(info, first_layer, last_layer)
    if state is None:
        state = load_shard_state(info, first_layer, last_layer, 0)
    expected = module.state_dict()
    tensors = select_tensors(info, list(expected), state, where="the given state dict")
    _check_tensors(info, tensors, expected)
    module.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    module.requires_grad_(False)
    logger.debug("built %r: %d tensors, %d bytes", module, len(tensors), parameter_bytes(module))
    return module.eval()


def build_shard_streaming(
    info: ModelInfo,
    first_layer: int,
    last_layer: int,
    state: Mapping[str, torch.Tensor],
    convert: Callable[[str, nn.Module], nn.Module | None],
    *,
    int_weights: Collection[str] = (),
) -> ShardModule:
    """Build the shard (float32) one module at a time: each module takes its tensors from
    ``state`` and goes through ``convert(name, module)`` (a replacement, or None to keep it)
    before the next is read, so with a lazy ``state`` (``weights.lazy_shard_state``) the float
    shard never exists whole (int8: ``weights_dtype.build_int8``). A tensor that is not floating
    point is refused (read as a float it would be garbage) unless its key is in ``int_weights``
    (the int8 values of a pre-quantized matmul, which ``convert`` quantizes back)."""
    from .weights import select_tensors

    check_layer_range(info, first_layer, last_layer)
    module = _meta_shard(info, first_layer, last_layer)
    expected = module.state_dict()
    owners: dict[str, list[str]] = {}
    for name in expected:
        owners.setdefault(name.rpartition(".")[0], []).append(name)
    for owner in [n for n, _ in module.named_modules()]:  # names only: no float module kept
        names = owners.pop(owner, None)
        if not names:
            continue
        sub = module.get_submodule(owner)
        tensors = select_tensors(info, names, state, where="the given state dict")
        _check_tensors(info, tensors, expected, int_weights)
        # Its own tensors only (pre-order: none of its children is converted yet).
        cut = len(owner) + 1 if owner else 0
        sub.load_state_dict({k[cut:]: v.float() for k, v in tensors.items()}, strict=False,
                            assign=True)
        del tensors
        replacement = convert(owner, sub)
        del sub
        if replacement is not None:
            parent, _, leaf = owner.rpartition(".")
            setattr(module.get_submodule(parent), leaf, replacement)
    module.requires_grad_(False)
    return module.eval()


def _check_tensors(info: ModelInfo, tensors: Mapping[str, torch.Tensor],
                   expected: Mapping[str, torch.Tensor], int_weights: Collection[str] = ()) -> None:
    """Refuse a tensor of the wrong shape, or an integer one where a float is expected (int8
    values read as floats would be garbage) unless its key is in ``int_weights``."""
    from .weights import WeightsMismatchError, candidate_keys

    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise WeightsMismatchError(
                f"tensor {name!r} has shape {tuple(t.shape)} but {info.name} expects "
                f"{tuple(expected[name].shape)}; is the state from a checkpoint of {info.name}?")
        if not t.is_floating_point() and expected[name].is_floating_point() and \
                not any(k in int_weights for k in candidate_keys(info, name)):
            raise WeightsMismatchError(
                f"tensor {name!r} is {t.dtype} but {info.name} expects floating point; "
                "pre-quantized (int8) weights load on torch int8 stages only (weights_dtype: "
                "int8); deploy again to push this stage's weights")


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def example_inputs(
    info: ModelInfo, batch_size: int, *, seq_len: int = 128, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random first-shard inputs: pixels for vision models; for text, token ids whose later rows are
    padded (row 0 is full length), with the matching attention mask and two token-type segments
    (no token types for DistilBERT)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    if info.is_vision:
        s = info.image_size
        return {"pixel_values": torch.randn(batch_size, info.num_channels, s, s, generator=g)}
    if info.is_decoder:  # decoders take token ids only (no padding, no mask)
        from .decoder import decoder_example_inputs

        return decoder_example_inputs(info, batch_size, seq_len, g)

    max_pos = info.max_positions
    if not 1 <= seq_len <= max_pos:
        raise ValueError(f"seq_len {seq_len} is out of range for {info.name}: use 1..{max_pos}")
    hp = info.encoder
    vocab, pad = info.vocab_size, hp.pad_token_id
    ids = torch.randint(1, vocab, (batch_size, seq_len), generator=g)
    lengths = torch.randint(1, seq_len + 1, (batch_size,), generator=g)
    lengths[0] = seq_len
    if batch_size > 1:
        lengths[-1] = max(1, seq_len // 2)  # at least one row is surely padded
    positions = torch.arange(seq_len)
    mask = (positions[None, :] < lengths[:, None]).long()  # (B, T), 1 = real token
    token_types = ((positions[None, :] >= (lengths[:, None] // 2)) & mask.bool()).long()
    if hp.type_vocab_size < 2:  # RoBERTa: one segment only
        token_types = torch.zeros_like(token_types)
    out = {"input_ids": ids.masked_fill(mask == 0, pad), "attention_mask": mask}
    if hp.type_vocab_size:  # DistilBERT takes no token types
        out["token_type_ids"] = token_types
    return out
