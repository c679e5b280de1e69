"""ONNX backend in-process: parity with the torch shard at every kind of cut, the export cache
(hits, damaged entries), export failures, settings and input validation."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.models.onnx_cache import OnnxCache, shard_key, weights_id
from pipeedge.models.onnx_export import OnnxExportError, export_shard
from pipeedge.stage_server.backends import load_backend
from pipeedge.stage_server.backends.onnx_backend import OnnxShardBackend, OrtSettings

TINY = ("pipeedge/tiny-vit", "pipeedge/tiny-deit", "pipeedge/tiny-bert")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def ranges(num_layers: int) -> list[tuple[int, int]]:
    """Shards that start and end after each of the 4 sub-layers, plus first-to-last and middle."""
    return [(1, 1), (2, 2), (3, 3), (4, 4), (5, num_layers), (1, num_layers),
            (2, num_layers - 1)]


def request(model: str, first: int, last: int, backend=pb.ONNX, **weights) -> pb.AssignRequest:
    return pb.AssignRequest(model_name=model, first_layer=first, last_layer=last, backend=backend,
                            threads=1, weights=pb.WeightSource(**(weights or {"random_seed": 0})))


def with_fields(req: pb.AssignRequest, **fields) -> pb.AssignRequest:
    out = pb.AssignRequest()
    out.CopyFrom(req)
    for k, v in fields.items():
        setattr(out, k, v)
    return out


def shard_inputs(info, first: int, batch: int, seq_len: int, source) -> dict[str, torch.Tensor]:
    """What the shard starting at ``first`` receives: earlier layers run by torch."""
    x = models.example_inputs(info, batch, seq_len=seq_len, seed=batch)
    if first > 1:
        head = models.build_shard(info, 1, first - 1,
                                  models.load_shard_state(info, 1, first - 1, source))
        with torch.inference_mode():
            x = head(x)
    return x


def assert_parity(model: str, first: int, last: int, tmp_path, source=0, **weights) -> None:
    info = models.model_info(model)
    state = models.load_shard_state(info, first, last, source)
    torch_backend = load_backend(request(model, first, last, pb.TORCH, **weights), state)
    onnx_backend = load_backend(request(model, first, last, **weights), state,
                                cache_dir=tmp_path)
    # Batch and length differ from the export's example (2, 7); rows of text inputs are padded.
    for batch, seq_len in ((3, 11), (1, 5)):
        x = shard_inputs(info, first, batch, seq_len, source)
        onnx_backend.validate(x)
        with torch.inference_mode():
            expected = torch_backend.run(x)
        got = onnx_backend.run(x)
        assert list(got) == list(expected), (first, last)
        for name, t in expected.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
            diff = (got[name].double() - t.double()).abs().max().item()
            assert diff <= 1e-4, f"{model} [{first}, {last}] {name}: {diff}"


@pytest.mark.parametrize("model", TINY)
def test_tiny_models_match_torch_at_every_cut(model, tmp_path):
    for first, last in ranges(models.model_info(model).num_layers):
        assert_parity(model, first, last, tmp_path)


def test_minilm_real_weights_match_torch_at_every_cut(minilm_path, tmp_path):
    for first, last in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 24), (6, 23)]:
        assert_parity(MINILM, first, last, tmp_path, source=minilm_path,
                      local_path=str(minilm_path))


def test_missing_token_type_ids_and_passthrough_mask(tmp_path):
    info = models.model_info("pipeedge/tiny-bert")
    state = models.load_shard_state(info, 1, 3, 0)
    ref = load_backend(request(info.name, 1, 3, pb.TORCH), state)
    backend = load_backend(request(info.name, 1, 3), state, cache_dir=tmp_path)
    x = models.example_inputs(info, 2, seq_len=9)
    del x["token_type_ids"]
    got = backend.run(x)
    with torch.inference_mode():
        assert (got["hidden"] - ref.run(x)["hidden"]).abs().max() <= 1e-4
    assert got["attention_mask"] is x["attention_mask"]  # handed on, not copied
    with pytest.raises(ValueError, match="129 tokens but the model has 128 positions"):
        backend.run(models.example_inputs(info, 1, seq_len=128) | {
            "input_ids": torch.ones(1, 129, dtype=torch.int64),
            "attention_mask": torch.ones(1, 129, dtype=torch.int64),
            "token_type_ids": torch.zeros(1, 129, dtype=torch.int64)})


def test_cache_hit_after_restart_and_keys(tmp_path):
    info = models.model_info("pipeedge/tiny-vit")
    state = models.load_shard_state(info, 2, 6, 0)
    first = OnnxShardBackend(request(info.name, 2, 6), state, tmp_path)
    assert not first.cache_hit and first.export_seconds > 0
    again = OnnxShardBackend(request(info.name, 2, 6), state, tmp_path)
    assert again.cache_hit and again.key == first.key
    assert first.key.stem.startswith("pipeedge--tiny-vit.L2-6.seed0.op17.c")
    # The weights dtype and its conversion recipe's version are part of the key: an int8 file
    # converted by the older recipe (every MatMul quantized) is not this one.
    int8 = shard_key(info, 2, 6, weights="seed0", opset=17, weights_dtype="int8")
    assert int8.stem == first.key.stem + ".int8v2"
    files = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert files == [f"{first.key.stem}.json", f"{first.key.stem}.onnx"]
    # Other weights, other layers: other entries. Pushed and local weights key by content.
    assert OnnxShardBackend(request(info.name, 2, 6, random_seed=1), state, tmp_path).key != first.key
    sha = "ab" * 32
    pushed = request(info.name, 2, 6, pushed_sha256=sha)
    assert weights_id(pushed.weights, state) == "push-" + sha[:16]
    local = request(info.name, 2, 6, local_path="/x")
    assert weights_id(local.weights, state) == weights_id(local.weights,
                                                 {k: v.clone() for k, v in state.items()})
    other = {k: v + 1 for k, v in state.items()}
    assert weights_id(local.weights, state) != weights_id(local.weights, other)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "manifest", "rehashed-garbage"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, damage):
    info = models.model_info("pipeedge/tiny-bert")
    state = models.load_shard_state(info, 4, 8, 0)
    backend = OnnxShardBackend(request(info.name, 4, 8), state, tmp_path)
    model_file = backend.cache.model_path(backend.key)
    manifest = backend.cache.manifest_path(backend.key)
    if damage == "garbage":
        model_file.write_bytes(b"not an onnx model")
    elif damage == "truncate":
        model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    elif damage == "manifest":
        manifest.write_text("{")
    else:  # hash matches the garbage: onnxruntime's own load failure must catch it
        import hashlib

        model_file.write_bytes(b"\x08\x07garbage")
        data = json.loads(manifest.read_text())
        data["files"][model_file.name] = hashlib.sha256(model_file.read_bytes()).hexdigest()
        manifest.write_text(json.dumps(data))
    rebuilt = OnnxShardBackend(request(info.name, 4, 8), state, tmp_path)
    assert not rebuilt.cache_hit
    x = shard_inputs(info, 4, 2, 6, 0)
    assert torch.equal(rebuilt.run(x)["pooled"], backend.run(x)["pooled"])
    assert OnnxShardBackend(request(info.name, 4, 8), state, tmp_path).cache_hit


def test_large_shard_keeps_weights_in_one_data_file(tmp_path):
    """Shards past the threshold (1 GiB) store their weights in <key>.onnx.data; forced here."""
    info = models.model_info("pipeedge/tiny-deit")
    req = request(info.name, 1, 12)
    state = models.load_shard_state(info, 1, 12, 0)
    key = shard_key(info, 1, 12, weights=weights_id(req.weights, state), opset=17,
                    weights_dtype="float32")
    shard = models.build_shard(info, 1, 12, state)
    cache = OnnxCache(tmp_path / "onnx")
    cache.store(key, lambda p: export_shard(shard, p, external_data_bytes=1))
    names = sorted(p.name for p in cache.root.iterdir())
    assert names == [f"{key.stem}.json", f"{key.stem}.onnx", f"{key.stem}.onnx.data"]
    backend = OnnxShardBackend(req, state, tmp_path)
    assert backend.cache_hit
    x = models.example_inputs(info, 2)
    with torch.inference_mode():
        assert (backend.run(x)["logits"] - shard(x)["logits"]).abs().max() <= 1e-4
    (cache.root / f"{key.stem}.onnx.data").write_bytes(b"\0" * 16)  # damaged weights
    assert not OnnxShardBackend(req, state, tmp_path).cache_hit


def test_export_failure_names_model_and_layers(tmp_path):
    info = models.model_info("pipeedge/tiny-vit")
    state = models.load_shard_state(info, 1, 4, 0)
    with pytest.raises(OnnxExportError, match=r"pipeedge/tiny-vit layers 1-4 \(opset 9\) "
                                              r"failed: .*PIPEEDGE_ONNX_OPSET"):
        OnnxShardBackend(request(info.name, 1, 4), state, tmp_path, settings=OrtSettings(opset=9))
    assert not list((tmp_path / "onnx").glob("*.json"))  # nothing half-made left as an entry
    with pytest.raises(ValueError, match="float32 only"):
        OnnxShardBackend(with_fields(request(info.name, 1, 4), dtype=pb.FLOAT16), state, tmp_path)
    with pytest.raises(ValueError, match="CPU only"):
        OnnxShardBackend(with_fields(request(info.name, 1, 4), device="cuda"), state, tmp_path)


def test_settings_from_environment():
    s = OrtSettings.from_env(threads=3, env={"PIPEEDGE_ORT_OPT_LEVEL": "Basic",
                                             "PIPEEDGE_ORT_SPIN": "1",
                                             "PIPEEDGE_ONNX_OPSET": "18"})
    assert (s.threads, s.opt_level, s.spin, s.opset) == (3, "basic", True, 18)
    assert OrtSettings.from_env(env={}) == OrtSettings()
    assert s.session_options().intra_op_num_threads == 3
    for var, value in (("PIPEEDGE_ORT_OPT_LEVEL", "max"), ("PIPEEDGE_ORT_SPIN", "yes"),
                       ("PIPEEDGE_ONNX_OPSET", "x")):
        with pytest.raises(ValueError, match=var):
            OrtSettings.from_env(env={var: value})


@pytest.mark.parametrize("model,first", [("pipeedge/tiny-bert", 1), ("pipeedge/tiny-bert", 7),
                                         ("pipeedge/tiny-vit", 3)])
def test_validation_matches_torch_backend(model, first, tmp_path):
    info = models.model_info(model)
    state = models.load_shard_state(info, first, first, 0)
    backends = [load_backend(request(model, first, first, b), state, cache_dir=tmp_path)
                for b in (pb.TORCH, pb.ONNX)]
    good = shard_inputs(info, first, 2, 6, 0)
    bad_frames = [{}, {**good, "extra": torch.zeros(1)},
                  {k: v[..., :3] if i == 0 else v for i, (k, v) in enumerate(good.items())},
                  {k: v.to(torch.int32) for k, v in good.items()},
                  {k: v[0] if i == 0 else v for i, (k, v) in enumerate(good.items())}]
    for frame in bad_frames:
        messages = []
        for backend in backends:
            with pytest.raises((ValueError, TypeError)) as err:
                backend.validate(frame)
            messages.append(str(err.value))
        assert messages[0] == messages[1]
    for backend in backends:
        backend.validate(good)
