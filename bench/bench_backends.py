"""Per-shard throughput, torch versus onnx backend, measured side by side in one run.

Shards are middle blocks (block 2 on, no embeddings or head) of ViT-Base (197 tokens) and
BERT-Base (128 tokens, padded rows), 1, 3 and 6 blocks, at microbatch 1 and 8, seeded random
weights. Both backends are built the way a stage builds them (`load_backend`), use the same
number of threads, and alternate run by run, so load from other processes hits both alike;
items/s are medians, the ratio is the median of the paired (adjacent) runs' ratios. Export time
is measured with an empty cache; max|diff| is the onnx/torch parity on the timed inputs. Goal:
onnx >= 1.5x torch for 3 ViT-Base blocks at microbatch 8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.stage_server.backends import load_backend

MODELS = {"vit": "google/vit-base-patch16-224", "bert": "bert-base-uncased"}
SEQ_LEN = 128
GOAL = ("vit", 3, 8, 1.5)  # model, blocks, microbatch, onnx/torch ratio
SOFT_LIMIT_S = 150.0


def shard_inputs(info: models.ModelInfo, first: int, batch: int) -> dict[str, torch.Tensor]:
    """What the shard starting at layer ``first`` receives (random activations, real mask)."""
    g = torch.Generator().manual_seed(batch)
    tensors = {s.name: torch.randn(s.shape, generator=g)
               for s in models.boundary_spec(info, first - 1, torch.float32, batch, SEQ_LEN)
               if s.dtype.is_floating_point}
    if not info.is_vision:
        tensors["attention_mask"] = models.example_inputs(info, batch, seq_len=SEQ_LEN)[
            "attention_mask"]
    return tensors


def time_pair(runs: dict[str, callable], budget_s: float, min_rounds: int) -> dict[str, list]:
    """Alternate the callables until both have ``min_rounds`` runs and the budget is spent."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    start = time.perf_counter()
    while (len(times[next(iter(runs))]) < min_rounds
           or time.perf_counter() - start < budget_s):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def bench_shard(model: str, blocks: int, batches: list[int], threads: int, budget_s: float,
                cache: Path) -> list[list]:
    info = models.model_info(model)
    first, last = 5, 4 + 4 * blocks  # blocks 2..blocks+1: a middle shard
    state = models.load_shard_state(info, first, last, 0)
    def request(backend: int) -> pb.AssignRequest:
        return pb.AssignRequest(model_name=model, first_layer=first, last_layer=last,
                                backend=backend, threads=threads,
                                weights=pb.WeightSource(random_seed=0))

    torch_backend = load_backend(request(pb.TORCH), state)
    onnx_backend = load_backend(request(pb.ONNX), state, cache_dir=cache)
    del state
    rows = []
    for batch in batches:
        x = shard_inputs(info, first, batch)

        def run_torch(x=x):
            with torch.inference_mode():
                return torch_backend.run(x)

        def run_onnx(x=x):
            return onnx_backend.run(x)

        ref, got = run_torch(), run_onnx()  # also the warm-up
        diff = max((ref[k] - got[k]).abs().max().item() for k in ref if k != "attention_mask")
        times = time_pair({"torch": run_torch, "onnx": run_onnx}, budget_s, min_rounds=3)
        t_torch, t_onnx = statistics.median(times["torch"]), statistics.median(times["onnx"])
        # Each onnx run is paired with the torch run just before it: load from other processes
        # comes and goes over seconds, so paired ratios vary less than a ratio of two medians.
        ratio = statistics.median(a / b for a, b in zip(times["torch"], times["onnx"]))
        rows.append([model.split("/")[-1], blocks, batch, batch / t_torch, batch / t_onnx,
                     ratio, onnx_backend.export_seconds, onnx_backend.load_seconds,
                     diff, len(times["torch"])])
        print(_format(rows[-1]), flush=True)
    torch_backend.close()
    onnx_backend.close()
    return rows


HEADER = (f"{'model':24s} {'blocks':>6s} {'mb':>3s} {'torch it/s':>10s} {'onnx it/s':>10s} "
          f"{'ratio':>6s} {'export s':>8s} {'load s':>7s} {'max|diff|':>9s} {'runs':>4s}")


def _format(r: list) -> str:
    return (f"{r[0]:24s} {r[1]:6d} {r[2]:3d} {r[3]:10.2f} {r[4]:10.2f} {r[5]:6.2f} "
            f"{r[6]:8.2f} {r[7]:7.2f} {r[8]:9.1e} {r[9]:4d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit,bert", help="comma list of: vit, bert")
    ap.add_argument("--blocks", default="1,3,6")
    ap.add_argument("--microbatches", default="1,8")
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of timing per row")
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batches = [int(b) for b in args.microbatches.split(",")]
    print(f"{threads} threads; medians of alternating runs; ratio = median of paired ratios; "
          "export with an empty cache")
    print(HEADER, flush=True)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipeedge-bench-onnx-") as cache:
        for key in args.models.split(","):
            for blocks in (int(b) for b in args.blocks.split(",")):
                # On a loaded machine every run is slow: past the soft limit, only the minimum
                # number of runs per row, so the whole bench stays within about 5 minutes.
                late = time.perf_counter() - start > SOFT_LIMIT_S
                rows += bench_shard(MODELS[key], blocks, batches, threads,
                                    0.0 if late else args.budget, Path(cache))
    print(f"total {time.perf_counter() - start:.0f}s")
    goal = [r for r in rows if (r[0], r[1], r[2]) == (MODELS[GOAL[0]].split("/")[-1], *GOAL[1:3])]
    if goal:
        ratio = goal[0][5]
        print(f"goal: onnx/torch for {GOAL[1]} {GOAL[0]} blocks at microbatch {GOAL[2]} = "
              f"{ratio:.2f} (goal >= {GOAL[3]}) -> {'PASS' if ratio >= GOAL[3] else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
