"""Activation compression benchmark: encode+decode throughput and bytes on the wire.

Runs every encoding on a ViT-Base microbatch-8 activation (8x197x768 float32, the hidden state
between blocks) and on the MLP intermediate (8x197x3072, post-GeLU). For each it prints the
encode+decode throughput in MB/s of float32 input, the bytes on the wire versus float32 next to
the ratio the bit width implies (bits / 32), and the relative RMS error. A wire size beyond the
implied size plus packing overhead (params: 8 bytes per sample, or per token for the "/token"
rows, i.e. per-row params; padding: under one byte) is flagged, and the script exits 1.

    python bench/bench_quant.py [--repeat N] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import torch

from pipeedge import quant

SHAPES = {"hidden 8x197x768": (8, 197, 768), "mlp 8x197x3072": (8, 197, 3072)}
# (label, kind, bits, clip, granularity); bits is the nominal width used for the implied ratio.
ENCODINGS = [("float16", "float16", 16, "", "sample"), ("bfloat16", "bfloat16", 16, "", "sample")
             ] + [(f"uniform{b}", "uniform", b, "", "sample") for b in (2, 3, 4, 6, 8, 16)] + [
    ("uniform4+clip", "uniform", 4, "auto", "sample"),
    ("uniform8/token", "uniform", 8, "", "row"), ("uniform4/token", "uniform", 4, "", "row"),
]
TARGET_MBPS_8BIT = 200.0
LINK_MBPS = 100.0  # a mid-range edge link, to put the byte counts in perspective


def _activation(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Hidden states are roughly Gaussian per token; the MLP intermediate is post-GeLU."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    return torch.nn.functional.gelu(x * 1.5 - 0.5) if name.startswith("mlp") else x


def _time(fn, repeat: int) -> tuple[float, float, object]:
    """(best, median) seconds over `repeat` runs: best is the code's speed, median adds noise
    from whatever else the machine (and torch's thread pool) is doing."""
    out = fn()  # warm up allocators and lazy imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), out


def run(repeat: int) -> int:
    mismatches = 0
    slow_8bit = []
    header = (f"{'tensor':<18} {'encoding':<16} {'enc ms':>7} {'dec ms':>7} {'MB/s':>7} "
              f"{'median':>7} "
              f"{'wire bytes':>11} {'ratio':>7} {'implied':>7} {'rel rmse':>9} "
              f"{'ms@100Mbps':>10}  check")
    print(header)
    print("-" * len(header))
    for name, shape in SHAPES.items():
        x = _activation(name, shape)
        raw_bytes = x.numel() * 4
        print(f"{name:<18} {'float32 raw':<16} {'':>7} {'':>7} {'':>7} {'':>7} {raw_bytes:>11} "
              f"{1:>7.4f} {1:>7.4f} {0:>9.2e} {raw_bytes * 8 / LINK_MBPS / 1e3:>10.1f}")
        for label, kind, bits, clip, grain in ENCODINGS:
            if clip == "auto":
                clip = "gelu" if name.startswith("mlp") else "laplace"
                label = f"uniform{bits}+{clip}"
            enc_s, enc_med, (data, params) = _time(
                partial(quant.encode, x, kind=kind, bits=bits, clip=clip, granularity=grain),
                repeat)
            wire = len(data) + len(params)
            implied = bits / 32
            # Allowed overhead: the params (8 bytes per sample or per token) and under one byte
            # of padding.
            allowed = x.numel() * bits / 8 + quant.params_nbytes(shape, kind, grain) + 1
            ok = wire <= allowed and len(data) == quant.encoded_nbytes(shape, kind=kind,
                                                                       bits=bits)
            mismatches += not ok
            row = f"{name:<18} {label:<16} {enc_s * 1e3:>7.2f} "
            tail = (f"{wire:>11} {wire / raw_bytes:>7.4f} {implied:>7.4f} {{:>9}} "
                    f"{wire * 8 / LINK_MBPS / 1e3:>10.1f}  {'ok' if ok else 'RATIO MISMATCH'}")
            if not ok:  # decode would rightly reject the payload; report the sizes only
                print(row + f"{'-':>7} {'-':>7} {'-':>7} " + tail.format("-"))
                continue
            dec_s, dec_med, y = _time(
                partial(quant.decode, data, params, kind=kind, bits=bits, shape=shape,
                        dtype=torch.float32, granularity=grain), repeat)
            mbps = raw_bytes / (enc_s + dec_s) / 1e6
            mbps_median = raw_bytes / (enc_med + dec_med) / 1e6
            rel_rmse = float(((y - x).pow(2).mean() / x.pow(2).mean()).sqrt())
            if kind == "uniform" and bits == 8 and not clip and grain == "sample" \
                    and mbps < TARGET_MBPS_8BIT:
                slow_8bit.append(f"{name}: {mbps:.0f} MB/s")
            print(row + f"{dec_s * 1e3:>7.2f} {mbps:>7.0f} {mbps_median:>7.0f} "
                  + tail.format(f"{rel_rmse:.2e}"))
        print()
    print(f"torch threads: {torch.get_num_threads()}; MB/s = float32 input bytes / best "
          f"(encode + decode) time of {repeat} runs; median: the same from median times; "
          "enc/dec ms: best")
    if slow_8bit:
        print(f"note: 8-bit below the {TARGET_MBPS_8BIT:.0f} MB/s target: " + ", ".join(slow_8bit))
    if mismatches:
        print(f"FAIL: {mismatches} encoding(s) put more bytes on the wire than their bit width "
              "implies beyond packing overhead")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per encoding")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: "
                        "torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(max(1, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
