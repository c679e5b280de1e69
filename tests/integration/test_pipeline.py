"""End to end: real stage server processes on loopback, deployed by the coordinator."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from pipeedge import channels, models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import (
    AsyncPipelineClient,
    InvalidInputError,
    NotDeployedError,
    PipelineClient,
    StageUnavailableError,
)
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.stage_control import StageControl

VIT = "google/vit-base-patch16-224"


def deploy(cluster, model, partition, **kw):
    dep = load_deployment(cluster.hosts_file(model, partition=partition, **kw))
    return deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)


def unsplit(model, inputs, seed=0):
    info = models.model_info(model)
    full = models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, seed))
    with torch.inference_mode():
        return full(inputs)


def test_minilm_golden_over_three_processes_with_pushed_weights(cluster_factory, minilm_path):
    from transformers import AutoTokenizer

    model = "sentence-transformers/all-MiniLM-L6-v2"
    info = models.model_info(model)
    reference = models.build_reference(info, minilm_path)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    sentences = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
                 "The stock market fell sharply today.", "Cats sleep a lot."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected = reference(inputs)["embeddings"]
    cluster = cluster_factory(3)
    for partition in ("1,5,6,15,16,24", "1,1,2,3,4,24", "1,22,23,23,24,24"):
        pipeline = deploy(cluster, model, partition, weights=f"push:{minilm_path}")
        with PipelineClient(pipeline.entry) as client:
            got = client.infer(inputs)["embeddings"]
        assert (got - expected).abs().max().item() <= 1e-5, partition
    # Each sentence alone (no padding) gives the same embedding as inside the padded batch.
    with PipelineClient(pipeline.entry) as client:
        for i, s in enumerate(sentences):
            one = tok([s], return_tensors="pt")
            alone = client.infer({k: one[k] for k in inputs})["embeddings"][0]
            assert (alone - got[i]).abs().max().item() <= 1e-5
    sim = got @ got.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2


def test_vit_three_stages_equal_unsplit_and_keep_order(cluster_factory):
    cluster = cluster_factory(3)
    pipeline = deploy(cluster, VIT, "1,7,8,33,34,48")  # cuts after sub-layers 3 and 1
    info = models.model_info(VIT)
    batches = [models.example_inputs(info, 2, seed=s) for s in range(6)]
    with PipelineClient(pipeline.entry) as client:
        results = list(client.infer_many(batches, window=3))
    for b, r in zip(batches, results):
        assert (r["logits"] - unsplit(VIT, b)["logits"]).abs().max().item() <= 1e-5
    # Parameter memory follows the shard: the stages together hold exactly one model.
    full = models.parameter_bytes(models.build_shard(
        info, 1, 48, models.load_shard_state(info, 1, 48, 0)))
    assert sum(pipeline.parameter_bytes) == full
    assert max(pipeline.parameter_bytes) < 0.7 * full


def test_async_client_and_status_counters(cluster_factory):
    cluster = cluster_factory(2)
    pipeline = deploy(cluster, "pipeedge/tiny-bert", "1,5,6,8", microbatch=4)
    info = models.model_info("pipeedge/tiny-bert")
    batches = [models.example_inputs(info, 4, seq_len=16, seed=s) for s in range(5)]

    async def run():
        async with AsyncPipelineClient(pipeline.entry) as client:
            return await client.infer_many(batches, window=2)

    results = asyncio.run(run())
    for b, r in zip(batches, results):
        ref = unsplit("pipeedge/tiny-bert", b)
        for k in ref:
            assert (r[k] - ref[k]).abs().max().item() <= 1e-5
    ctl = StageControl("s1", pipeline.stages[1].address)
    st = ctl.status()
    ctl.close()
    assert st.assigned and st.frames_processed == 5 and st.items_processed == 20
    assert st.assignment.first_layer == 6 and st.bytes_received > 0


def test_stage_serves_health_and_reflection(cluster_factory, standard_services):
    cluster = cluster_factory(1)
    with channels.open_channel(cluster.stages[0].address) as channel:
        status, names = standard_services(channel, "pipeedge.v1.Stage")
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {"pipeedge.v1.Stage", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    with channels.open_channel(cluster.stages[0].address) as channel:
        # Reflection v1 (what current grpcurl/grpcui ask first), called by its own method path.
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        reply = next(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        timeout=10))
        assert "pipeedge.v1.Stage" in {sv.name for sv in reply.list_services_response.service}
        listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(),
                                                          timeout=10)
        assert listed.statuses["pipeedge.v1.Stage"].status == \
            health_pb2.HealthCheckResponse.SERVING


def test_bad_requests_fail_alone_and_server_keeps_serving(cluster_factory):
    cluster = cluster_factory(2)
    pipeline = deploy(cluster, "pipeedge/tiny-vit", "1,3,4,12", microbatch=4)
    info = models.model_info("pipeedge/tiny-vit")
    good = models.example_inputs(info, 2)
    wrong_shape = {"pixel_values": torch.randn(2, 3, 17, 17)}
    too_big = models.example_inputs(info, 5)
    with PipelineClient(pipeline.entry) as client:
        with pytest.raises(InvalidInputError, match="pixel_values.*shape") as err:
            client.infer(wrong_shape)
        assert err.value.stage == "stage0" and err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidInputError, match="exceeds .*limit of 4"):
            client.infer(too_big)
        with pytest.raises(InvalidInputError, match="unexpected tensor.*hidden.*takes \\[.pixel_values.\\]"):
            client.infer({"hidden": torch.randn(2, 3)})
        # In a stream, the bad request fails at its position; the others still succeed.
        stream = client.infer_many([good, wrong_shape, good], window=3)
        first = next(stream)
        with pytest.raises(InvalidInputError):
            next(stream)
        expected = client.infer(good)["logits"]
        assert torch.equal(first["logits"], expected)
    # A frame whose bytes do not match its shape, sent raw on the wire.
    frame = pb.Frame(request_id="raw", tensors=[pb.Tensor(name="pixel_values", dtype=pb.FLOAT32,
                                                          shape=[1, 3, 32, 32], data=b"x" * 7)])
    ctl = StageControl("s0", pipeline.entry)
    with pytest.raises(grpc.RpcError) as rpc:
        ctl.stub.Infer(frame, timeout=10)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries 7 bytes" in rpc.value.details()
    ctl.close()


def test_unassigned_stage_and_dead_next_hop(cluster_factory):
    cluster = cluster_factory(2)
    info = models.model_info("pipeedge/tiny-vit")
    x = models.example_inputs(info, 1)
    with PipelineClient(cluster.stages[0].address) as client:
        with pytest.raises(NotDeployedError, match="no assignment.*deploy"):
            client.infer(x)
    pipeline = deploy(cluster, "pipeedge/tiny-vit", "1,3,4,12")
    cluster.kill(1)
    with PipelineClient(pipeline.entry, timeout_s=20) as client:
        with pytest.raises(StageUnavailableError, match="next hop 127.0.0.1"):
            client.infer(x)


def test_large_frame_vit_large_mlp_cut(cluster_factory):
    """ViT-Large, microbatch 8, cut after the MLP intermediate: ~32 MB must pass one hop."""
    cluster = cluster_factory(1)
    ctl = StageControl("s0", cluster.stages[0].address)
    ctl.assign(pb.AssignRequest(model_name="google/vit-large-patch16-224", first_layer=4,
                                last_layer=4, weights=pb.WeightSource(random_seed=1)))
    ctl.close()
    inputs = {"hidden": torch.randn(8, 197, 4096), "residual": torch.randn(8, 197, 1024)}
    assert sum(t.numel() * 4 for t in inputs.values()) > 32e6
    with PipelineClient(cluster.stages[0].address) as client:
        out = client.infer(inputs)
    assert out["hidden"].shape == (8, 197, 1024)
