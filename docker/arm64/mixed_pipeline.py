"""A mixed x86_64 + arm64 pipeline checked against transformers (used by make test-arm64).

    python docker/arm64/mixed_pipeline.py --arm64 ADDR --arm64 ADDR --workdir DIR

Starts one x86_64 stage here and deploys each tiny model over arm64 -> x86_64 -> arm64 (every
hop crosses the architecture boundary) with seeded random weights pushed from this coordinator,
so both architectures compute with the same bytes. Checks, against transformers on this host:
tiny-bert and tiny-vit outputs within --tol, tiny-gpt2's greedy tokens identical and
its logits at every step within --tol. Exit 0 if all hold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeedge import models  # noqa: E402
from pipeedge.client import PipelineClient, TextGenerator  # noqa: E402
from pipeedge.coordinator import deploy as deploy_mod  # noqa: E402
from pipeedge.coordinator.hosts import load_deployment  # noqa: E402
from pipeedge.coordinator.local_cluster import LocalCluster  # noqa: E402
from pipeedge.partition import parse_partition  # noqa: E402
from pipeedge.records import PlannedStage  # noqa: E402

MODELS = ("pipeedge/tiny-bert", "pipeedge/tiny-vit", "pipeedge/tiny-gpt2")
NEW_TOKENS = 16


def thirds(num_layers: int) -> str:
    a, b = num_layers // 3, 2 * num_layers // 3
    return f"1,{a},{a + 1},{b},{b + 1},{num_layers}"


def deploy(model: str, hosts: list[dict], hf_dir: Path, workdir: Path):
    info = models.model_info(model)
    partition = thirds(info.num_layers)
    path = workdir / f"hosts-{model.split('/')[-1]}.yml"
    path.write_text(yaml.safe_dump({
        "model": model, "weights": f"push:{hf_dir}", "partition": partition,
        "pipeline_file": str(workdir / f"pipeline-{model.split('/')[-1]}.json"),
        "hosts": hosts}, sort_keys=False))
    dep = load_deployment(path)
    ranges = parse_partition(partition, info.num_layers)
    stages = [PlannedStage(h, r) for h, r in zip(dep.ordered_hosts(), ranges)]
    pipeline = deploy_mod.deploy(dep, stages, progress=False)
    return pipeline, pipeline.save(workdir / f"pipeline-{model.split('/')[-1]}.json")


def check_outputs(model: str, pipeline, hf_dir: Path, tol: float) -> bool:
    info = models.model_info(model)
    inputs = models.example_inputs(info, 2, seq_len=16)
    with PipelineClient(pipeline.entry, timeout_s=600) as client:
        outputs = client.infer(inputs)
    reference = models.build_reference(info, hf_dir)(inputs)
    worst = 0.0
    for key, ref in reference.items():
        got = outputs.get(key)
        if got is None or tuple(got.shape) != tuple(ref.shape):
            print(f"[mixed] {model}: output {key} missing or of shape "
                  f"{None if got is None else tuple(got.shape)}, want {tuple(ref.shape)}")
            return False
        worst = max(worst, (got.float() - ref.float()).abs().max().item())
    ok = worst <= tol
    print(f"[mixed] {model}: max |pipelined - transformers| = {worst:.2e} "
          f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:.0e})")
    return ok


def check_generation(model: str, pipeline_file: Path, hf_dir: Path, tol: float) -> bool:
    import transformers

    prompt = [5, 17, 99, 3, 42]
    with TextGenerator(pipeline_file=pipeline_file) as gen:
        events = list(gen.generate(prompt, max_new_tokens=NEW_TOKENS, stop_token_ids=(),
                                   return_logits=True))
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), attn_implementation="eager").eval()
    out = ref_model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    got, want = [e.token_id for e in events], out.sequences[0, len(prompt):].tolist()
    worst = max(float((e.logits - w[0]).abs().max()) for e, w in zip(events, out.logits))
    ok = got == want and worst <= tol
    print(f"[mixed] {model}: {NEW_TOKENS} greedy tokens {'==' if got == want else '!='} "
          f"transformers.generate ({got[:8]}...), max |logits diff| = {worst:.2e} "
          f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:.0e})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm64", action="append", required=True,
                        help="address of an arm64 stage (give two)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    if len(args.arm64) != 2:
        parser.error("give exactly two --arm64 stage addresses")
    (args.workdir / "x86").mkdir(parents=True, exist_ok=True)

    ok = True
    with LocalCluster(1, threads=1, workdir=args.workdir / "x86") as cluster:
        hosts = [{"name": "arm64-a", "address": args.arm64[0]},
                 {"name": "x86-0", "address": cluster.stages[0].address},
                 {"name": "arm64-b", "address": args.arm64[1]}]
        for model in MODELS:
            t0 = time.monotonic()
            info = models.model_info(model)
            hf_dir = models.write_hf_directory(info, 0, args.workdir / "hf" / model.split("/")[-1])
            pipeline, pipeline_file = deploy(model, hosts, hf_dir, args.workdir)
            stages = ", ".join(f"{s.name} {s.first_layer}-{s.last_layer}" for s in pipeline.stages)
            print(f"[mixed] {model} deployed on {stages} in {time.monotonic() - t0:.0f}s")
            if info.is_decoder:
                ok &= check_generation(model, pipeline_file, hf_dir, args.tol)
            else:
                ok &= check_outputs(model, pipeline, hf_dir, args.tol)
            print(f"[mixed] {model} done in {time.monotonic() - t0:.0f}s")
    print(f"[mixed] {'OK' if ok else 'FAILED'}: x86_64 + arm64 pipelines vs transformers")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
