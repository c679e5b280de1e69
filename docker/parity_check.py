"""Send sentences through a deployed pipeline; compare with the unsplit model built in-process.

    python docker/parity_check.py PIPELINE_JSON MODEL_DIR [--tol 1e-5]

MODEL_DIR is the Hugging Face directory the pipeline's weights were pushed from (here, on the
host). Exit 0 when max |pipelined - unsplit| <= tol. Used by docker/test_docker.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates.",
    "A cat is sleeping on the sofa.",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()

    from pipeedge import models
    from pipeedge.client import PipelineClient
    from pipeedge.coordinator.inputs import text_inputs
    from pipeedge.pipeline_file import Pipeline

    pipeline = Pipeline.load(args.pipeline)
    inputs = text_inputs(SENTENCES, args.model_dir)
    with PipelineClient(pipeline.entry, timeout_s=120) as client:
        outputs = client.infer(inputs)
    reference = models.build_reference(models.model_info(pipeline.model), args.model_dir)(inputs)
    worst = 0.0
    for key, ref in reference.items():
        if key not in outputs:
            print(f"parity: output {key!r} missing from the pipeline's outputs", file=sys.stderr)
            return 1
        if tuple(outputs[key].shape) != tuple(ref.shape):
            print(f"parity: {key} shape {tuple(outputs[key].shape)} != {tuple(ref.shape)}",
                  file=sys.stderr)
            return 1
        diff = (outputs[key].float() - ref.float()).abs().max().item()
        worst = max(worst, diff)
        print(f"parity: {key} {tuple(ref.shape)} max |pipelined - unsplit| = {diff:.2e}")
    stages = ", ".join(f"{s.name} {s.first_layer}-{s.last_layer}" for s in pipeline.stages)
    ok = worst <= args.tol
    print(f"parity: {pipeline.model} over {len(pipeline.stages)} stages ({stages}): "
          f"{'OK' if ok else 'MISMATCH'} (max {worst:.2e}, tolerance {args.tol:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
