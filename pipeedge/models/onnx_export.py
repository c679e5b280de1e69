"""Export one shard to an ONNX file that onnxruntime can run in its place.

The ShardModule takes and returns dicts of named tensors; ONNX wants positional tensors. The
export wraps the shard so that graph inputs are the shard's ``input_spec`` names, in order, and
graph outputs are its ``output_spec`` names prefixed with ``out.`` (a middle shard both takes and
gives ``hidden``, and ONNX value names must be unique). Tensors the shard hands on unchanged
(BERT's ``attention_mask``) are not graph outputs: the caller passes them through itself.

Dimensions marked dynamic in the spec (batch; sequence length for the BERT family) stay dynamic
in the graph. The TorchScript exporter (``dynamo=False``) is used: it needs no extra packages and
gives the dynamic axes from the spec directly.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeedge.errors import PipeEdgeError

from .build import example_inputs
from .onnx_weights import convert
from .shard import ShardModule
from .spec import DYNAMIC, TensorSpec

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
OUTPUT_PREFIX = "out."
# ONNX protobufs cannot exceed 2 GiB; bigger shards keep their weights in a ``.data`` file.
EXTERNAL_DATA_BYTES = 1 << 30
_AXIS_NAMES = ("batch", "sequence")
# Stateless encoder families; decoders with a KV cache need a different graph interface.
EXPORTABLE_FAMILIES = ("vit", "deit", "bert")


class OnnxExportError(PipeEdgeError, ValueError):
    """A shard could not be exported; the message names the model, layer range and a way out."""


@dataclass(frozen=True)
class GraphSignature:
    """How the shard's named tensors map onto the ONNX graph."""

    inputs: tuple[str, ...]        # graph inputs, in input_spec order (tensor names)
    outputs: tuple[str, ...]       # tensor names computed by the graph, in output_spec order
    passthrough: tuple[str, ...]   # output tensors that are inputs handed on unchanged
    order: tuple[str, ...]         # all output tensor names, in output_spec order

    @staticmethod
    def graph_output_name(tensor: str) -> str:
        return OUTPUT_PREFIX + tensor


def shard_signature(shard: ShardModule) -> GraphSignature:
    """The graph interface of ``shard``, found by one small dry run (passthrough is identity)."""
    inputs = _example(shard)
    with torch.inference_mode():
        out = shard(inputs)
    order = tuple(s.name for s in shard.output_spec())
    passthrough = tuple(n for n in order if n in inputs and out[n] is inputs[n])
    return GraphSignature(inputs=tuple(s.name for s in shard.input_spec()),
                          outputs=tuple(n for n in order if n not in passthrough),
                          passthrough=passthrough, order=order)


class _Positional(nn.Module):
    """Positional tensors in, positional tensors out: the calling convention ONNX export needs."""

    def __init__(self, shard: ShardModule, signature: GraphSignature) -> None:
        super().__init__()
        self.shard = shard
        self.signature = signature

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.shard(dict(zip(self.signature.inputs, tensors)))
        return tuple(out[n] for n in self.signature.outputs)


def export_shard(shard: ShardModule, path: Path, *, opset: int = DEFAULT_OPSET,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES,
                 weights_dtype: str = "float32") -> GraphSignature:
    """Write ``shard`` as an ONNX model at ``path`` (weights in ``path + '.data'`` when large),
    its weights converted to ``weights_dtype`` (float32, float16 or int8: ``onnx_weights``).

    Raises:
        OnnxExportError: naming the model and layer range, with the exporter's reason.
    """
    what = f"{shard.info.name} layers {shard.first_layer}-{shard.last_layer}"
    if shard.info.family not in EXPORTABLE_FAMILIES:
        raise OnnxExportError(f"cannot export {what}: ONNX export covers the "
                              f"{'/'.join(EXPORTABLE_FAMILIES)} families, not "
                              f"{shard.info.family}; use backend torch")
    if shard.dtype != torch.float32 or shard.device.type != "cpu":
        raise OnnxExportError(f"cannot export {what}: ONNX shards are float32 on the CPU, this "
                              f"one is {shard.dtype} on {shard.device}; use dtype float32")
    try:
        signature = shard_signature(shard)
        _export(shard, signature, Path(path), opset, external_data_bytes)
        convert(Path(path), weights_dtype, _kept_float(shard, weights_dtype))
    except OnnxExportError:
        raise
    except Exception as exc:  # the exporter raises many types; all mean the same to the caller
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise OnnxExportError(f"ONNX export of {what} (opset {opset}) failed: {reason}; try "
                              "another opset (PIPEEDGE_ONNX_OPSET) or backend torch") from exc
    return signature


def _kept_float(shard: ShardModule, weights_dtype: str) -> list[np.ndarray]:
    """The (in, out) weights of the Linears int8 keeps float32 (``weights_dtype.keep_float``)."""
    if weights_dtype != "int8":
        return []
    from .weights_dtype import keep_float

    names = keep_float(shard, shard.info.intermediate_size)
    return [m.weight.detach().T.contiguous().numpy() for n, m in shard.named_modules()
            if n in names]


def _export(shard: ShardModule, signature: GraphSignature, path: Path, opset: int,
            external_data_bytes: int) -> None:
    inputs = _example(shard)
    args = tuple(inputs[n] for n in signature.inputs)
    out_names = [signature.graph_output_name(n) for n in signature.outputs]
    axes = {s.name: _dynamic_axes(s) for s in shard.input_spec()}
    axes.update({signature.graph_output_name(s.name): _dynamic_axes(s)
                 for s in shard.output_spec() if s.name in signature.outputs})
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private directory: past 2 GiB the exporter drops one file per tensor beside the model.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / path.name
        _trace(shard, signature, staged, args, out_names, axes, opset)
        _resave(staged, external_data_bytes,
                f"PipeEdge shard {shard.info.name} layers {shard.first_layer}-{shard.last_layer}")
        for f in (staged, staged.with_name(staged.name + ".data")):
            if f.exists():
                os.replace(f, path.parent / f.name)
    logger.debug("exported %s layers %d-%d to %s", shard.info.name, shard.first_layer,
                 shard.last_layer, path)


def _trace(shard: ShardModule, signature: GraphSignature, path: Path,
           args: tuple[torch.Tensor, ...], out_names: list[str], axes: dict[str, dict[int, str]],
           opset: int) -> None:
    with warnings.catch_warnings():
        # The legacy exporter warns that it is legacy, and about the shard's Python-side checks
        # (validate_inputs, the position limit) being traced as constants; both are expected.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(_Positional(shard, signature).eval(), args, str(path), dynamo=False,
                          opset_version=opset, input_names=list(signature.inputs),
                          output_names=out_names, dynamic_axes=axes, do_constant_folding=True)


def _resave(path: Path, external_data_bytes: int, doc: str) -> None:
    """Rewrite the export as one file, or one file plus ``<name>.data`` when it is large.

    The exporter writes one file per tensor beside the model when it passes 2 GiB; a cache entry
    is easier to check and copy with at most one companion file.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    leftovers = sorted({e.value for t in model.graph.initializer if uses_external_data(t)
                        for e in t.external_data if e.key == "location"})
    if leftovers:
        load_external_data_for_model(model, str(path.parent))
    model.doc_string = doc
    large = bool(leftovers) or path.stat().st_size >= external_data_bytes
    for name in leftovers:
        (path.parent / name).unlink()
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _dynamic_axes(spec: TensorSpec) -> dict[int, str]:
    return {i: _AXIS_NAMES[i] for i, d in enumerate(spec.shape[:2]) if d == DYNAMIC}


def _example(shard: ShardModule) -> dict[str, torch.Tensor]:
    """Inputs with batch 2 and 7 tokens, so no dynamic dimension is traced as the constant 1."""
    info = shard.info
    if shard.is_first:
        return example_inputs(info, 2, seq_len=7)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for s in shard.input_spec(batch=2, seq_len=7):
        if s.dtype.is_floating_point:
            tensors[s.name] = torch.randn(s.shape, generator=g, dtype=s.dtype)
        else:
            tensors[s.name] = torch.ones(s.shape, dtype=s.dtype)
    return tensors
