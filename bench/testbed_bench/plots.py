"""One PNG per section, each drawing the section's baseline from the same run."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def draw_all(sections: dict[str, dict], out_dir: Path) -> dict[str, str]:
    """Figures for the sections that ran; returns {section: file name}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no figures")
        return {}
    drawers = {"scaling": _scaling, "predictions": _predictions, "heterogeneous": _hetero,
               "slow_links": _links, "transport": _transport}
    figures = {}
    for name, result in sections.items():
        if result.get("status") != "ok" or name not in drawers:
            continue
        fig = drawers[name](plt, result)
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures[name] = path.name
    return figures


def _scaling(plt, result):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    by_model: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by_model.setdefault(r["model"], []).append(r)
    ns = sorted({r["devices"] for r in result["rows"]})
    left.plot(ns, ns, "k--", label="ideal (N x 1 device)")
    left.plot(ns, [0.9 * n for n in ns], ":", color="gray", label="0.9 N")
    left.plot(ns, [0.85 * n for n in ns], ":", color="silver", label="0.85 N")
    for model, rows in by_model.items():
        left.plot([r["devices"] for r in rows], [r["speedup"] for r in rows], "o-",
                  label=_short(model))
    left.set(xlabel="devices", ylabel="speedup over 1 device", xticks=ns, title="Speedup")
    left.legend(fontsize=8)
    width = 0.8 / max(1, len(by_model))
    for i, (model, rows) in enumerate(by_model.items()):
        xs = [ns.index(r["devices"]) + i * width for r in rows]
        right.bar(xs, [r["items_per_s"] for r in rows], width, label=_short(model))
    right.set_xticks([k + width * (len(by_model) - 1) / 2 for k in range(len(ns))], ns)
    right.set(xlabel="devices", ylabel="items/s (steady state)", title="Throughput")
    right.legend(fontsize=8)
    return fig


def _predictions(plt, result):
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["rows"]
    labels = [f"{r['devices_offered']} offered\n{r['devices_used']} used" for r in rows]
    ax.bar(labels, [r["ratio"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="k", linestyle="--", label="perfect prediction")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['items_per_s']:.2f} / {r['predicted_items_per_s']:.2f}",
                    (i, r["ratio"]), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="measured / predicted throughput", title=f"{_short(rows[0]['model'])}")
    ax.legend(fontsize=8)
    return fig


def _hetero(plt, result):
    sets = sorted({r["set"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sets):
        rows = [r for r in result["rows"] if r["set"] == size]
        xs = range(len(rows))
        ax.bar(xs, [r["items_per_s"] for r in rows],
               color=["tab:blue"] + ["gray"] * (len(rows) - 1), label="measured")
        for i, r in enumerate(rows):
            ax.plot([i - 0.4, i + 0.4], [r["predicted_items_per_s"]] * 2, "r-",
                    label="predicted (cost model)" if i == 0 else None)
            ax.annotate(f"x{r['vs_ours']:.2f}", (i, r["items_per_s"]), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [r["split"].replace(" (", "\n(") for r in rows], fontsize=7)
        ax.set(ylabel="items/s (steady state)",
               title=f"{size} heterogeneous devices, {_short(result['model'])}")
        ax.legend(fontsize=8)
    return fig


def _links(plt, result):
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = result["rows"]
    base = rows[0]
    encodings = [r["encoding"] for r in rows[1:] if r["link_mbps"] == rows[1]["link_mbps"]]
    speeds = sorted({r["link_mbps"] for r in rows[1:]}, reverse=True)
    width = 0.8 / len(encodings)
    for i, enc in enumerate(encodings):
        vals = [next(r["items_per_s"] for r in rows[1:]
                     if r["link_mbps"] == s and r["encoding"] == enc) for s in speeds]
        ax.bar([k + i * width for k in range(len(speeds))], vals, width, label=enc)
    ax.axhline(base["items_per_s"], color="k", linestyle="--",
               label=f"float32 @ {base['link_mbps']:g} Mbps (baseline)")
    ax.set_xticks([k + width * (len(encodings) - 1) / 2 for k in range(len(speeds))],
                  [f"{s:g} Mbps" for s in speeds])
    ax.set(ylabel="items/s (steady state)", title=f"{_short(result['model'])}, 2 stages")
    ax.legend(fontsize=8)
    return fig


def _transport(plt, result):
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["rows"]
    labels = [f"{r['where']}\n{r['stages']} stage(s)" for r in rows]
    p50 = [r["p50_ms"] for r in rows]
    err = [[0] * len(rows), [r["p90_ms"] - r["p50_ms"] for r in rows]]
    ax.bar(labels, p50, yerr=err, capsize=4,
           color=["gray", "gray", "tab:blue", "tab:blue"][:len(rows)])
    ax.set(ylabel="latency p50 (ms), whisker to p90",
           title=f"One request, batch 1 ({_short(result['model'])})")
    return fig


def _short(model: str) -> str:
    return model.split("/")[-1]
