"""Building a shard runs no weight initialisers on its meta tensors: nn.Embedding's `normal_`
on meta imports torch._dynamo (1.2 CPU s, +71 MB per stage process; 12 s of an Assign on a
0.1-core device). Checked in a fresh interpreter, for every text family's first shard."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import torch
from pipeedge import models
for name in ("pipeedge/tiny-bert", "pipeedge/tiny-gpt2", "pipeedge/tiny-llama"):
    info = models.model_info(name)
    shard = models.build_shard(info, 1, info.num_layers, None)
    with torch.inference_mode():
        out = shard(models.example_inputs(info, 2))
    assert all(torch.isfinite(t).all() for t in out.values()), name
print("torch._dynamo" in sys.modules)
# a module built outside a shard still gets its init (the skip is scoped to _meta_shard)
print(bool(torch.nn.Embedding(50, 8).weight.std() > 0.5))
"""


def test_first_shards_build_without_importing_dynamo():
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["False", "True"], run.stdout
