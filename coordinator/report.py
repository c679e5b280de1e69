"""Human-readable summaries of pipeline outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def describe_outputs(outputs: dict[str, torch.Tensor], *, texts: list[str] | None = None,
                     labels: Sequence[str] = ()) -> str:
    """Shapes, top classes (named by the model's id2label when `labels` is given) and, for
    sentence embeddings of several texts, their cosine similarities."""
    lines = []
    for name, t in outputs.items():
        lines.append(f"{name}: shape {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
        if name == "logits":
            top = t.float().softmax(-1).topk(min(5, t.shape[-1]), dim=-1)
            for i in range(t.shape[0]):
                classes = ", ".join(f"{_label(c, labels)}:{p:.3f}" for c, p in
                                    zip(top.indices[i].tolist(), top.values[i].tolist()))
                lines.append(f"  item {i}: top classes {classes}")
    if "embeddings" in outputs and texts and len(texts) > 1:
        lines.append("cosine similarity:")
        lines.append(similarity_table(outputs["embeddings"], texts))
    return "\n".join(lines)


def _label(index: int, labels: Sequence[str]) -> str:
    return f"{labels[index]} ({index})" if index < len(labels) else str(index)


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


def plan_table(plan) -> str:
    """The plan as a table, with the scheduler's predictions when it made the plan."""
    from pipeedge.coordinator.tables import render

    if plan.schedule is None:
        rows = [[i + 1, s.host.name, str(s.layers)] for i, s in enumerate(plan.stages)]
        return render(["stage", "host", "layers"], rows) + f"\nplan: {plan.how}"
    sched = plan.schedule
    rows = [[i + 1, s.host, f"{s.first_layer}-{s.last_layer}", f"{s.compute_s:.3f}",
             f"{s.wire_s:.3f}", f"{s.transfer_s:.3f}", f"{s.memory_MB:.0f}",
             "<- bottleneck" if abs(s.cost_s - sched.bottleneck_s) < 1e-12 else ""]
            for i, s in enumerate(sched.stages)]
    table = render(["stage", "host", "layers", "compute s", "frames s", "transfer s", "memory MB",
                    ""], rows)
    return (f"{table}\nplan: {plan.how}; bottleneck {sched.bottleneck_s:.3f} s per microbatch "
            f"of {sched.batch_size} -> predicted {sched.throughput_items_s:.2f} items/s, "
            f"latency {sched.latency_s:.3f} s")
