"""Weight quantization (hosts.yml weights_dtype), in process: each dtype per family against the
unsplit transformers model at float32 (torch and ONNX backends) and the refusals. Real-server
pipelines are tests/integration/test_weights_dtype_pipeline.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import HostsFileError, load_deployment
from pipeedge.stage_server.backends import load_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

# Max |got - float32 reference| / max |reference| allowed per weights dtype (tiny random models:
# measured worst 0.0012 / 0.010 / 0.033; onnx int4, blocks of 32: 0.149).


# Max |got - float32 reference| / max |reference| allowed per weights dtype (tiny random models:
# measured worst 0.0012 / 0.010 / 0.033; onnx int4, blocks of 32: 0.149).
TOLERANCE = {"float16": 5e-3, "bfloat16": 3e-2, "int8": 8e-2, "int4": 0.2}


WIRE = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16, "int8": pb.INT8,
        "int4": pb.INT4}


def split_run(info, inputs, dtype, backend, cache_dir):
    """The model over two stages (cut after an attention output: hidden and residual cross),
    each built by the stage's own backend factory at weights dtype `dtype`."""
    cut = 4 * (info.num_blocks // 2) + 2
    tensors, held = dict(inputs), []
    for first, last in ((1, cut), (cut + 1, info.num_layers)):
        req = pb.AssignRequest(model_name=info.name, first_layer=first, last_layer=last,
                               backend=backend, weights_dtype=WIRE[dtype],
                               weights=pb.WeightSource(random_seed=0))
        stage = load_backend(req, models.load_shard_state(info, first, last, 0),
                             cache_dir=cache_dir)
        out = stage.run_session(tensors, "s", 0) if info.is_decoder else stage.run(tensors)
        assert all(v.dtype == torch.float32 for v in out.values() if v.is_floating_point())
        held.append(stage.parameter_bytes)
        tensors = {**{k: v for k, v in inputs.items() if k == "attention_mask"}, **out}
    return tensors, held


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            info = models.model_info(name)
            directory = models.write_hf_directory(info, 0, tmp_path_factory.mktemp("hf"))
            inputs = models.example_inputs(info, 2, seq_len=16)
            cache[name] = info, inputs, models.build_reference(info, directory)(inputs)
        return cache[name]

    return get


def relative_error(got, expected) -> float:
    key = next(k for k in expected if k in got)
    return ((got[key] - expected[key]).abs().max() / expected[key].abs().max()).item()


@pytest.mark.parametrize("name", ["pipeedge/tiny-vit", "pipeedge/tiny-bert",
                                  "pipeedge/tiny-gpt2", "pipeedge/tiny-llama"])
def test_torch_weights_dtypes_match_float32_transformers(name, references, tmp_path):
    info, inputs, expected = references(name)
    _, float32_bytes = split_run(info, inputs, "float32", pb.TORCH, tmp_path)
    for dtype in ("float16", "bfloat16", "int8"):
        tolerance = TOLERANCE[dtype]
        got, held = split_run(info, inputs, dtype, pb.TORCH, tmp_path)
        assert relative_error(got, expected) <= tolerance, dtype
        if dtype != "int8":
            assert [2 * b for b in held] == float32_bytes
        else:  # norms, embeddings, biases and block 0's FFN down-projection stay float32
            assert sum(held) < 0.7 * sum(float32_bytes)  # (half of tiny models' FFNs: 0.64)


@pytest.mark.parametrize("name", ["pipeedge/tiny-vit", "pipeedge/tiny-bert"])
def test_onnx_weights_dtypes_match_float32_transformers(name, references, tmp_path):
    info, inputs, expected = references(name)
    sizes = {}
    for dtype in ("float16", "int8", "int4"):
        got, held = split_run(info, inputs, dtype, pb.ONNX, tmp_path)
        assert relative_error(got, expected) <= TOLERANCE[dtype], dtype
        sizes[dtype] = sum(held)
    assert sizes["int4"] < sizes["int8"]  # (tiny-bert's float32 embeddings outweigh float16's)
    # One cache entry per weights dtype (float32 entries keep their old names).
    stems = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(stems) == 6 and sum(s.endswith(".int4.onnx") for s in stems) == 2


@pytest.mark.parametrize("backend", [pb.TORCH, pb.ONNX], ids=["torch", "onnx"])
def test_minilm_int8_keeps_cosine_and_retrieval_of_float32_transformers(backend, minilm_path,
                                                                         tmp_path):
    """The issue's accuracy goal on real weights: int8 pooled embeddings of the bench's
    retrieval set (8 queries, 8 passages, padded as one batch) within cosine 0.99 of unsplit
    float32 transformers, each query keeping its top-1 passage. Measured min: torch 0.9937,
    onnx 0.9918 (7-bit activations and block 0's FFN down-projection in int8: 0.969)."""
    if backend == pb.ONNX:
        pytest.importorskip("onnxruntime")
    from bench_weights import MINILM, PASSAGES, QUERIES
    from transformers import AutoTokenizer

    info = models.model_info(MINILM)
    enc = AutoTokenizer.from_pretrained(str(minilm_path))(QUERIES + PASSAGES, padding=True,
                                                           return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected = models.build_reference(info, minilm_path)(inputs)["embeddings"]
    req = pb.AssignRequest(model_name=MINILM, first_layer=1, last_layer=info.num_layers,
                           backend=backend, weights_dtype=pb.INT8)
    stage = load_backend(req, models.load_shard_state(info, 1, info.num_layers, minilm_path),
                         cache_dir=tmp_path)
    got = stage.run(inputs)["embeddings"]
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min().item() >= 0.99, cosine
    assert (got - expected).abs().max().item() > 1e-4  # quantized for real

    def top1(e):
        return (e[:len(QUERIES)] @ e[len(QUERIES):].T).argmax(dim=1)

    assert torch.equal(top1(got), top1(expected))


def write_hosts(tmp_path, hosts, **top):
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"model": "pipeedge/tiny-vit", "hosts": hosts, **top}))
    return path


def test_refusals_are_one_line_with_the_fix(tmp_path):
    host = {"name": "a", "address": "127.0.0.1:1"}
    with pytest.raises(HostsFileError, match=r"weights_dtype int4 for host a: backend torch "
                                             r"cannot run it; .*use int8, or backend: onnx"):
        load_deployment(write_hosts(tmp_path, [host], weights_dtype="int4"))
    with pytest.raises(HostsFileError, match=r"weights_dtype 'int3' for host a is unknown; use "
                                             r"one of float32, float16, bfloat16, int8, "
                                             r"int4"):
        load_deployment(write_hosts(tmp_path, [{**host, "weights_dtype": "int3"}]))
    with pytest.raises(HostsFileError, match=r"bfloat16 for host a: backend onnx cannot run it; "
                                             r".*use float16 or int8, or backend: torch"):
        load_deployment(write_hosts(tmp_path, [{**host, "backend": "onnx",
                                                "weights_dtype": "bfloat16"}]))
    dep = load_deployment(write_hosts(tmp_path, [{**host, "weights_dtype": "INT8"},
                                                 {"name": "b", "address": "127.0.0.1:2"}],
                                      weights_dtype="float16"))
    assert [dep.host_weights_dtype(h) for h in dep.hosts] == ["int8", "float16"]
    # A stage asked directly (an older or foreign coordinator) refuses as clearly.
    info = models.model_info("pipeedge/tiny-vit")
    state = models.load_shard_state(info, 1, 4, 0)
    req = pb.AssignRequest(model_name=info.name, first_layer=1, last_layer=4,
                           weights_dtype=pb.INT8, device="cuda")
    with pytest.raises(ValueError, match="int8 weights run on the CPU only"):
        load_backend(req, state)
    req.device, req.weights_dtype = "cpu", pb.INT4
    with pytest.raises(ValueError, match="int4 for pipeedge/tiny-vit layers 1-4: backend torch"):
        load_backend(req, state)
    req = pb.AssignRequest(model_name=info.name, first_layer=1, last_layer=4, backend=pb.ONNX,
                           weights_dtype=pb.BFLOAT16)
    with pytest.raises(ValueError, match="backend onnx cannot run it"):
        load_backend(req, state, cache_dir=tmp_path)


def test_lazy_state_refuses_a_bool_source_by_name():
    # A bool is an int to isinstance: the lazy reader used to hand True to Path() (an unrelated
    # TypeError); it now gets load_shard_state's message, as the eager reader does.
    from pipeedge.models.weights import lazy_shard_state

    info = models.model_info("pipeedge/tiny-bert")
    with pytest.raises(TypeError, match="not a bool"):
        lazy_shard_state(info, 1, 4, True)


@pytest.mark.parametrize("name", ["pipeedge/tiny-bert", "pipeedge/tiny-gpt2"])
def test_prequantized_int8_weights_build_the_same_shard_from_a_quarter_of_the_bytes(name):
    """What deploy pushes to a torch int8 stage (quantized_state, through safetensors) builds the
    very module the stage builds from the float32 weights (GPT-2's Conv1D included), from about
    a quarter of the bytes on the matmuls; any other stage refuses those bytes."""
    from torch.ao.nn.quantized import dynamic

    from pipeedge.models import weights_dtype
    from pipeedge.models.weights import WeightsMismatchError

    info = models.model_info(name)
    first, last = 5, info.num_layers - 1  # blocks 1..: no embeddings, head or block 0
    state = models.load_shard_state(info, first, last, 0)
    float_blob = models.save_safetensors_bytes(state)
    blob = models.save_safetensors_bytes(weights_dtype.quantized_state(info, first, last, state))
    assert len(blob) < 0.4 * len(float_blob)
    pushed = models.load_safetensors_bytes(blob)

    def parts(module):
        out = {}
        for n, m in module.named_modules():
            if isinstance(m, dynamic.Linear):
                w = m.weight()
                out[n] = (w.int_repr(), w.q_per_channel_scales(), w.q_per_channel_zero_points(),
                          m.bias())
        return out, module.state_dict()

    (q_own, f_own), (q_got, f_got) = (
        parts(weights_dtype.build_int8(info, first, last, s)) for s in (state, pushed))
    assert q_own and q_own.keys() == q_got.keys()
    for n in q_own:
        assert all(torch.equal(a, b) for a, b in zip(q_own[n], q_got[n]) if a is not None), n
    float_own = {k: v for k, v in f_own.items() if isinstance(v, torch.Tensor)}
    assert all(torch.equal(v, f_got[k]) for k, v in float_own.items())
    with pytest.raises(WeightsMismatchError, match="torch int8 stages only"):
        models.build_shard(info, first, last, pushed)
