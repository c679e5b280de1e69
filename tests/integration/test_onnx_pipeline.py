"""ONNX stages end to end: real stage processes on loopback, all-onnx and mixed with torch."""

from __future__ import annotations

import shutil

import grpc
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from pipeedge import models  # noqa: E402
from pipeedge.client import InvalidInputError, PipelineClient  # noqa: E402
from pipeedge.coordinator import deploy as deploy_mod  # noqa: E402
from pipeedge.coordinator import planning  # noqa: E402
from pipeedge.coordinator.cli import main as coord  # noqa: E402
from pipeedge.coordinator.hosts import load_deployment  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
             "The stock market fell sharply today.", "Cats sleep a lot."]


def hosts_file(cluster, partition: str, backends: list[str], weights: str):
    path = cluster.hosts_file(MINILM, partition=partition, weights=weights)
    data = yaml.safe_load(path.read_text())
    for host, backend in zip(data["hosts"], backends):
        host["backend"] = backend
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def deploy(path):
    dep = load_deployment(path)
    return deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)


def from_cache(stage) -> bool:
    """Whether the stage's last onnx load came from its cache (it logs how it got the file)."""
    lines = [ln for ln in stage.log_path.read_text().splitlines() if "onnx " in ln
             and ("from cache" in ln or "exported" in ln)]
    return bool(lines) and "from cache" in lines[-1]


def test_minilm_golden_all_onnx_mixed_prebuilt_and_restart(cluster_factory, minilm_path,
                                                           tmp_path):
    from transformers import AutoTokenizer

    info = models.model_info(MINILM)
    reference = models.build_reference(info, minilm_path)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected = reference(inputs)["embeddings"]
    weights = f"push:{minilm_path}"
    cluster = cluster_factory(3)

    # All onnx, cuts after sub-layers 1 and 3, files built ahead of time by export-onnx and
    # copied into each device's cache: no stage exports.
    path = hosts_file(cluster, "1,5,6,15,16,24", ["onnx"] * 3, weights)
    out = tmp_path / "prebuilt"
    result = CliRunner().invoke(coord, ["export-onnx", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "L6-15.push-" in result.output and "rsync" in result.output
    for stage in cluster.stages:
        shutil.copytree(out, cluster.workdir / "cache" / stage.name / "onnx", dirs_exist_ok=True)
    pipeline = deploy(path)
    assert [s.backend for s in pipeline.stages] == ["onnx"] * 3
    assert all(from_cache(s) for s in cluster.stages)
    with PipelineClient(pipeline.entry) as client:
        got = client.infer(inputs)["embeddings"]
        assert (got - expected).abs().max().item() <= 1e-5
        # Each sentence alone (no padding) gives its embedding from the padded batch.
        for i, s in enumerate(SENTENCES):
            one = tok([s], return_tensors="pt")
            alone = client.infer({k: one[k] for k in inputs})["embeddings"][0]
            assert (alone - got[i]).abs().max().item() <= 1e-5
        # An onnx first stage rejects a bad frame before computing, like a torch one.
        bad = {**inputs, "attention_mask": inputs["attention_mask"][:, :3]}
        with pytest.raises(InvalidInputError, match="attention_mask.*T=3") as err:
            client.infer(bad)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.stage == "stage0"

    # Mixed pipelines, every kind of cut between a torch and an onnx stage; stages export.
    for partition, backends in (("1,1,2,3,4,24", ["torch", "onnx", "torch"]),
                                ("1,22,23,23,24,24", ["onnx", "torch", "onnx"])):
        pipeline = deploy(hosts_file(cluster, partition, backends, weights))
        with PipelineClient(pipeline.entry) as client:
            got = client.infer(inputs)["embeddings"]
        assert (got - expected).abs().max().item() <= 1e-5, partition

    # A restarted stage finds its export on disk instead of exporting again.
    cluster.kill(2)
    cluster.stages[2] = cluster.start_stage("stage2")
    pipeline = deploy(hosts_file(cluster, "1,22,23,23,24,24", ["onnx", "torch", "onnx"],
                                 weights))
    assert from_cache(cluster.stages[2])
    with PipelineClient(pipeline.entry) as client:
        got = client.infer(inputs)["embeddings"]
    assert (got - expected).abs().max().item() <= 1e-5


def test_export_onnx_command_errors(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("model: pipeedge/tiny-vit\npartition: 1,12\n"
                    "hosts: [{name: a, address: 127.0.0.1:1}]\n")
    result = CliRunner().invoke(coord, ["export-onnx", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no stage uses backend onnx" in result.output
    result = CliRunner().invoke(coord, ["export-onnx", str(path), "--all", "--out",
                                        str(tmp_path / "x"), "--opset", "9"])
    assert result.exit_code == 2
    assert "pipeedge/tiny-vit layers 1-12 (opset 9) failed" in result.output
    result = CliRunner().invoke(coord, ["export-onnx", str(path), "--all", "--out",
                                        str(tmp_path / "y")])
    assert result.exit_code == 0 and "pipeedge--tiny-vit.L1-12.seed0.op17" in result.output
    again = CliRunner().invoke(coord, ["export-onnx", str(path), "--all", "--out",
                                       str(tmp_path / "y")])
    assert "cached" in again.output
