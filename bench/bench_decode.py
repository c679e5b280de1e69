"""Text-generation throughput on local stage processes: 1 stage versus N stages.

For each pipeline (the whole model on 1 stage; an even split over N stages) it measures

- one session: generated tokens per second of a single generation (prefill included);
- S concurrent sessions: aggregate tokens per second with S generations in flight, so that
  while one stage decodes session A, another works on session B.

The N-stage split balances per-token decode cost (matmul weights per sub-layer, LM head on the
last), since the slowest stage bounds the pipeline; for GPT-2 the LM head alone is ~1/3 of a
token's work, which caps 4 stages at ~3.2x even on 4 real devices.

and prints the ratios. The goal on N real devices is aggregate(N stages, S >= N sessions) >=
0.8 x N x single-session(1 stage). Local stage processes share this host's cores, so the
measured speed-up is capped by the core count (printed alongside); each stage gets --threads.

    python bench/bench_decode.py                       # gpt2 (random weights), 4 stages, 4 sessions
    python bench/bench_decode.py --model pipeedge/tiny-llama --new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeedge import models
from pipeedge.client import TextGenerator
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.partition import format_partition
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import LayerRange, PlannedStage


def decode_costs(info: models.ModelInfo) -> list[float]:
    """Per-token decode cost of each sub-layer ~ its matmul weights (embedding lookups are free;
    the LM head, vocab x hidden, counts on the last layer: for GPT-2 it outweighs 5 blocks)."""
    costs = []
    for layer in range(1, info.num_layers + 1):
        shapes = models.build.shard_tensor_shapes(info, layer, layer)
        costs.append(float(sum(s.numel() for n, s in shapes.items()
                               if len(s) == 2 and "wte" not in n and "wpe" not in n
                               and "embed_tokens" not in n)))
    return costs


def balanced_partition(costs: list[float], stages: int) -> list[LayerRange]:
    """Contiguous split minimising the most expensive stage (the pipeline's bottleneck)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                v = max(best[k - 1][i], prefix[j] - prefix[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    ranges, j = [], n
    for k in range(stages, 0, -1):
        i = cut[k][j]
        ranges.append(LayerRange(i + 1, j))
        j = i
    return ranges[::-1]


def deploy(cluster: LocalCluster, model: str, stages: int) -> tuple[str, str]:
    info = models.model_info(model)
    ranges = balanced_partition(decode_costs(info), stages)
    partition = format_partition(ranges)
    dep = load_deployment(cluster.hosts_file(model, partition=partition, microbatch=1))
    planned = [PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    pipeline = deploy_mod.deploy(dep, planned, progress=False)
    path = cluster.workdir / f"pipeline-{stages}.json"
    pipeline.save(path)
    return partition, str(path)


def compute_seconds(addresses: list[str]) -> list[float]:
    out = []
    for address in addresses:
        ctl = StageControl("bench", address)
        try:
            out.append(ctl.status().compute_seconds)
        finally:
            ctl.close()
    return out


def measure(pipeline_file: str, sessions: int, new_tokens: int, prompt_len: int,
            repeats: int) -> tuple[float, float]:
    """Aggregate generated tokens/s with `sessions` generations in flight (best of repeats), and
    the stages' summed busy fraction in that run (> 1: stages computed at the same time)."""
    addresses = [s.address for s in Pipeline.load(pipeline_file).stages]
    with TextGenerator(pipeline_file=pipeline_file, timeout_s=300) as gen:
        prompts = [[3 + (7 * i + j) % 200 for j in range(prompt_len)] for i in range(sessions)]
        gen.complete_many(prompts[:1], max_new_tokens=4, stop_token_ids=())  # warm-up
        best, busy = 0.0, 0.0
        for _ in range(repeats):
            before = compute_seconds(addresses)
            start = time.perf_counter()
            done = gen.complete_many(prompts, concurrency=sessions, max_new_tokens=new_tokens,
                                     stop_token_ids=())
            elapsed = time.perf_counter() - start
            rate = sum(len(c.token_ids) for c in done) / elapsed
            if rate > best:
                after = compute_seconds(addresses)
                best, busy = rate, sum(a - b for a, b in zip(after, before)) / elapsed
        return best, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per stage")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0))
    print(f"{args.model}: {args.new_tokens} new tokens, prompt {args.prompt_len} tokens, "
          f"{args.threads} thread(s) per stage, {cores} core(s) on this host")
    results: dict[tuple[int, int], float] = {}
    with LocalCluster(args.stages, threads=args.threads) as cluster:
        for n in (1, args.stages):
            partition, pipeline_file = deploy(cluster, args.model, n)
            for s in (1, args.sessions):
                rate, busy = measure(pipeline_file, s, args.new_tokens, args.prompt_len,
                                     args.repeats)
                results[(n, s)] = rate
                print(f"  {n} stage(s) [{partition}], {s} session(s): {rate:8.1f} tokens/s   "
                      f"stages busy {busy:4.2f} (sum of compute time / wall time)")

    base = results[(1, 1)]
    n, s = args.stages, args.sessions
    print(f"\nsingle session, {n} stages / 1 stage:           "
          f"{results[(n, 1)] / base:5.2f}x (pipeline latency: ~1x expected)")
    print(f"{s} sessions on 1 stage / single session:        {results[(1, s)] / base:5.2f}x")
    print(f"{s} sessions on {n} stages / single on 1 stage:   {results[(n, s)] / base:5.2f}x "
          f"(goal >= {0.8 * n:.1f}x on {n} devices; this host has {cores} core(s), so "
          f"<= {min(n, max(1, cores // args.threads))}x is possible here)")
    print(f"efficiency vs N x single-device rate:          "
          f"{results[(n, s)] / (n * base):5.2f}")


if __name__ == "__main__":
    main()
