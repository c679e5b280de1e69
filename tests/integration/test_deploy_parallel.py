"""`deploy` assigns every stage at once (real stage processes): a refusal names its host and
the others still load; the deployed pipeline answers like transformers' own model."""

from __future__ import annotations

import pytest
import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.stage_control import StageControl

MODEL = "pipeedge/tiny-vit"
PARTITION = "1,4,5,8,9,12"


def _epochs(cluster) -> list[int]:
    out = []
    for s in cluster.stages:
        c = StageControl(s.name, s.address)
        try:
            st = c.status()
            out.append(st.assignment.epoch if st.assigned else 0)
        finally:
            c.close()
    return out


def test_parallel_assign_refusal_names_the_host_and_the_rest_load(cluster_factory):
    cluster = cluster_factory(3)
    dep = load_deployment(cluster.hosts_file(MODEL, partition=PARTITION, microbatch=2))
    stages = planning.plan(dep).stages
    pipeline = deploy_mod.deploy(dep, stages, epoch=1000, progress=False)

    info = models.model_info(MODEL)
    x = models.example_inputs(info, 2)
    whole = models.build_shard(info, 1, info.num_layers, models.load_shard_state(info, 1, 12, 0))
    with torch.inference_mode():
        expected = whole(x)["logits"]
    with PipelineClient(pipeline.entry) as client:
        got = client.infer(x)["logits"]
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

    # The middle stage is taken by a newer deployment: the next one is refused there alone.
    mid = cluster.stages[1]
    c = StageControl(mid.name, mid.address)
    c.assign(pb.AssignRequest(model_name=MODEL, first_layer=5, last_layer=8, epoch=5000,
                              weights=pb.WeightSource(random_seed=0)))
    c.close()
    with pytest.raises(deploy_mod.DeployError, match=f"host {mid.name} refused layers"):
        deploy_mod.deploy(dep, stages, epoch=2000, progress=False)
    assert _epochs(cluster) == [2000, 5000, 2000]  # both others loaded, not left undone
