"""Weight quantization over real stage servers: a pipeline mixing float32 and int8 stages (torch
and ONNX, MiniLM real weights), and a model too large in float32 planned, deployed and answered
in int8."""

from __future__ import annotations

import shutil

import grpc
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.coordinator.hosts import load_deployment

# Max |got - float32 reference| / max |reference| allowed per weights dtype (tiny random models:
# measured worst 0.0012 / 0.010 / 0.033; onnx int4, blocks of 32: 0.149).


# Max |got - float32 reference| / max |reference| allowed per weights dtype (tiny random models:
# measured worst 0.0012 / 0.010 / 0.033; onnx int4, blocks of 32: 0.149).
TOLERANCE = {"float16": 5e-3, "bfloat16": 3e-2, "int8": 8e-2, "int4": 0.2}


def relative_error(got, expected) -> float:
    key = next(k for k in expected if k in got)
    return ((got[key] - expected[key]).abs().max() / expected[key].abs().max()).item()


MEM_MB = 0.3


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
             "The stock market fell sharply today.", "Cats sleep a lot."]


def test_minilm_mixed_float32_int8_stages_over_real_servers(cluster_factory, minilm_path,
                                                            tmp_path):
    """torch float32 -> torch int8 -> onnx int8 (prebuilt by export-onnx --weights-dtype int8):
    real MiniLM weights, cosine >= 0.98 to the unsplit float32 model for every sentence."""
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    from pipeedge.client import PipelineClient
    from pipeedge.coordinator import deploy as deploy_mod
    from pipeedge.coordinator import planning
    from pipeedge.coordinator.cli import main as coord

    info = models.model_info(MINILM)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected = models.build_reference(info, minilm_path)(inputs)["embeddings"]
    cluster = cluster_factory(3)
    path = cluster.hosts_file(MINILM, partition="1,8,9,18,19,24", weights=f"push:{minilm_path}")
    data = yaml.safe_load(path.read_text())
    data["hosts"][1]["weights_dtype"] = "int8"
    data["hosts"][2].update(weights_dtype="int8", backend="onnx")
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    out = tmp_path / "prebuilt"
    result = CliRunner().invoke(coord, ["export-onnx", str(path), "--out", str(out)])
    assert result.exit_code == 0 and ".int8v2.onnx" in result.output, result.output
    shutil.copytree(out, cluster.workdir / "cache" / cluster.stages[2].name / "onnx")

    dep = load_deployment(path)
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    log = cluster.stages[2].log_path.read_text()
    assert "from cache" in log and "exported" not in log
    float32_bytes = models.parameter_bytes(models.build_shard(info, 9, 18, None))
    assert pipeline.parameter_bytes[1] < 0.4 * float32_bytes  # 4x on the matmuls
    # Pushed as held: the torch int8 stage got its weights pre-quantized (4x fewer bytes).
    pushed = [p.stat().st_size for p in (cluster.workdir / "cache" / cluster.stages[1].name)
              .rglob("*.safetensors")]
    assert len(pushed) == 1 and pushed[0] < 0.4 * float32_bytes, pushed
    with PipelineClient(pipeline.entry) as client:
        got = client.infer(inputs)["embeddings"]
    assert got.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min().item() >= 0.98, cosine  # measured 0.989; torch int8 costs most
    assert (got - expected).abs().max().item() > 1e-5  # quantized for real, not float32

    # A stage asked for weights its backend cannot hold refuses the Assign and keeps serving.
    from pipeedge.coordinator.stage_control import StageControl

    control = StageControl("c", cluster.stages[2].address)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            control.assign(pb.AssignRequest(model_name=MINILM, first_layer=19, last_layer=24,
                                            backend=pb.ONNX, weights_dtype=pb.BFLOAT16,
                                            epoch=pipeline.version + 1))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "use float16 or int8" in refused.value.details()
        assert control.status().assigned
    finally:
        control.close()


def test_model_too_large_in_float32_is_planned_in_int8(cluster_factory):
    """Two small-memory hosts: the float32 profile cannot fit tiny-vit, the int8 profile (each
    layer timed and sized at int8 on the stages) can; the int8 plan deploys and answers."""
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator.cli import main as coord

    cluster = cluster_factory(2)
    path = cluster.hosts_file("pipeedge/tiny-vit", microbatch=2)
    doc = yaml.safe_load(path.read_text())
    for h in doc["hosts"]:
        h.update(device_type="edge", mem_mb=MEM_MB)
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(coord, ["deploy", str(path), "--no-progress"])
    assert result.exit_code != 0 and "weights_dtype: int8" in result.output, result.output

    doc["weights_dtype"] = "int8"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(coord, ["deploy", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    types = yaml.safe_load((path.parent / "device_types.yml").read_text())
    run8 = types["edge@int8"]["model_profiles"]["pipeedge/tiny-vit"][-1]
    run32 = types["edge"]["model_profiles"]["pipeedge/tiny-vit"][-1]
    assert sum(run32["layer_mem_MB"]) > 2 * MEM_MB > sum(run8["layer_mem_MB"])
    assert all(t > 0 for t in run8["time_s"])
    pipeline = yaml.safe_load((cluster.workdir / "pipeline.json").read_text())
    assert [s["name"] for s in pipeline["stages"]] == ["stage0", "stage1"]
    held = pipeline["extra"]["parameter_bytes"]
    assert all(b < MEM_MB * 2**20 for b in held)
    assert sum(held) / 2**20 == pytest.approx(sum(run8["layer_mem_MB"]))

    info = models.model_info("pipeedge/tiny-vit")
    x = models.example_inputs(info, 2)
    full = models.build_shard(info, 1, info.num_layers, None)
    with PipelineClient(pipeline["entry"]) as client, torch.inference_mode():
        expected = full(x)
        assert relative_error(client.infer(x), expected) <= TOLERANCE["int8"]
