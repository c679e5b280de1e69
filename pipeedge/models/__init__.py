"""Model shards for pipeline-parallel inference: ViT, DeiT (distilled), the BERT family, and the
decoder-only GPT-2 and Llama families (``decoder.py``; per-session KV cache in ``kv_cache.py``).

A model of N transformer blocks has 4*N sub-layers; a shard is any contiguous range of them. See
``shard.py`` for the tensors that cross a cut, ``weights.py`` for where a shard's tensors come from.
"""

from .build import (
    build_shard,
    example_inputs,
    parameter_bytes,
    shard_structure,
    shard_tensor_names,
)
from .decoder import DecoderShard
from .kv_cache import KVCache, kv_cache_bytes_per_layer
from .reference import build_reference
from .registry import MODEL_NAMES, ModelInfo, model_info
from .shard import ShardModule, boundary_spec, check_layer_range
from .spec import TensorSpec, validate_inputs
from .weights import (
    MissingTensorError,
    WeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
    WeightsSource,
    load_safetensors_bytes,
    load_shard_state,
    save_safetensors_bytes,
    write_hf_directory,
    write_vit_npz,
)

__all__ = [
    "MODEL_NAMES",
    "DecoderShard",
    "KVCache",
    "MissingTensorError",
    "ModelInfo",
    "ShardModule",
    "TensorSpec",
    "WeightsError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "WeightsSource",
    "boundary_spec",
    "build_reference",
    "build_shard",
    "check_layer_range",
    "example_inputs",
    "kv_cache_bytes_per_layer",
    "load_safetensors_bytes",
    "load_shard_state",
    "model_info",
    "parameter_bytes",
    "shard_structure",
    "save_safetensors_bytes",
    "shard_tensor_names",
    "validate_inputs",
    "write_hf_directory",
    "write_vit_npz",
]
