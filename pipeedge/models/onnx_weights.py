"""Weights dtype of an exported ONNX shard, with onnxruntime's own tooling.

- ``int8``: ``onnxruntime.quantization.quantize_dynamic`` on the MatMul/Gemm nodes (int8
  weights with one scale per output channel, activations quantized per call to uint8:
  DynamicQuantizeLinear + MatMulInteger, run by MLAS); the rest of the graph stays float32.
  Per-channel scales lift MiniLM's pooled-embedding cosine from 0.96-0.98 to 0.991; the
  first block's FFN down-projection stays float32 as on torch stages (``weights_dtype.keep_float``
  says why), found by its weights since exported node names carry no block index: 0.995.
- ``int4``: ``MatMulNBitsQuantizer`` (blocks of 32 weights, symmetric; needs ``onnx-ir``):
  MatMul weights 4-bit, about 6x smaller than float32, less accurate than int8.
- ``float16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 graph
  inputs and outputs (``keep_io_types``), so the wire stays as it is.

The conversion rewrites the float32 export in place; the cache key (``onnx_cache.py``) names the
weights dtype and its recipe version (`recipe_tag`), so each dtype is its own entry and a file
converted by an older recipe is never taken for the current one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_LARGE = 1 << 30  # as onnx_export.EXTERNAL_DATA_BYTES: past it the weights go to a .data file


# Bump a dtype's version whenever its conversion changes what the file computes.
# int8 v2: block 0's FFN down-projection kept in float32 (v1 quantized every MatMul).
_RECIPE_VERSION = {"int8": 2}


def recipe_tag(weights_dtype: str) -> str:
    """The cache key's weights-dtype part: "" for float32, e.g. ``int8v2``, ``float16``."""
    if weights_dtype == "float32":
        return ""
    version = _RECIPE_VERSION.get(weights_dtype)
    return f"{weights_dtype}v{version}" if version else weights_dtype


def convert(path: Path, weights_dtype: str, keep_float: Sequence[np.ndarray] = ()) -> None:
    """Rewrite the float32 ONNX model at ``path`` (and its ``.data``) with ``weights_dtype``;
    int8 leaves the MatMuls whose weights equal one of ``keep_float`` ((in, out)) in float32."""
    if weights_dtype == "float32":
        return
    convert_to = {"int8": _int8, "float16": _float16, "int4": _int4}.get(weights_dtype)
    if convert_to is None:
        raise ValueError(f"weights_dtype {weights_dtype} has no ONNX conversion; use float32, "
                         "float16, int8 or int4")
    path = Path(path)
    # Written under the same file name in a scratch dir, so a .data file keeps its location.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".convert-") as tmp:
        staged = Path(tmp) / path.name
        if weights_dtype == "int8":
            _int8(path, staged, keep_float)
        else:
            convert_to(path, staged)
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        for f in (staged, staged.with_name(staged.name + ".data")):
            if f.exists():
                os.replace(f, path.parent / f.name)


def _int8(src: Path, dst: Path, keep_float: Sequence[np.ndarray] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=_nodes_using(src, keep_float),
                     use_external_data_format=_large(src))


def _nodes_using(src: Path, weights: Sequence[np.ndarray]) -> list[str]:
    """Names of the MatMul/Gemm nodes whose weight initializer equals one of ``weights``."""
    if not len(weights):
        return []
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(src)).graph
    shapes = {w.shape for w in weights}
    kept = {i.name for i in graph.initializer if tuple(i.dims) in shapes
            and any(np.array_equal(numpy_helper.to_array(i), w) for w in weights)}
    return [n.name for n in graph.node
            if n.op_type in ("MatMul", "Gemm") and kept.intersection(n.input)]


def _int4(src: Path, dst: Path) -> None:
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        from .onnx_export import OnnxExportError

        raise OnnxExportError(f"weights_dtype int4 needs onnx-ir on this device ({exc}); pip "
                              "install 'pipeedge[onnx]' or use weights_dtype int8") from None

    # accuracy_level 4: activations to int8 inside the kernel (1.5x level 0's speed on x86).
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=_large(src))


def _float16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    if _large(src):
        onnx.save_model(model, str(dst), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=dst.name + ".data",
                        size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


def _large(path: Path) -> bool:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0) >= _LARGE // 2
