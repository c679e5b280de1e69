"""Human-readable summaries of pipeline outputs."""

from __future__ import annotations

import torch


def describe_outputs(outputs: dict[str, torch.Tensor], *, texts: list[str] | None = None) -> str:
    lines = []
    for name, t in outputs.items():
        lines.append(f"{name}: shape {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
        if name == "logits":
            top = t.float().softmax(-1).topk(min(5, t.shape[-1]), dim=-1)
            for i in range(t.shape[0]):
                classes = ", ".join(f"{c}:{p:.3f}" for c, p in
                                    zip(top.indices[i].tolist(), top.values[i].tolist()))
                lines.append(f"  item {i}: top classes {classes}")
    if "embeddings" in outputs and texts and len(texts) > 1:
        lines.append("cosine similarity:")
        lines.append(similarity_table(outputs["embeddings"], texts))
    return "\n".join(lines)


def similarity_table(embeddings: torch.Tensor, texts: list[str]) -> str:
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    short = [t if len(t) <= 40 else t[:37] + "..." for t in texts]
    rows = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            rows.append((sim[i, j].item(), short[i], short[j]))
    rows.sort(reverse=True)
    return "\n".join(f"  {s:+.3f}  {a!r} ~ {b!r}" for s, a, b in rows)
