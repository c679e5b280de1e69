"""Activation encodings: the one owner of their names, grammar, bit cost and validation.

An encoding says how a stage sends its float output to the next hop (`pb.Encoding`: raw,
float16, bfloat16, or uniform k-bit with optional clipping and per-row params). hosts.yml and
`deploy -q` write it as text (SYNTAX), the planner prices it in bits per element, the stage
checks an Assign's encoding before accepting it, and the codec (pipeedge/codec.py) applies it
through pipeedge.quant. Adding an encoding: the proto enum value, then NAMES, `parse` and
`link_bits` here; the codec and quant pick the kind up by name (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeedge._proto import stage_pb2 as pb
from pipeedge.errors import PipeEdgeError

# Text name <-> Encoding.Kind (the names are also pipeedge.quant's kinds).
NAMES = {"raw": pb.Encoding.RAW, "float16": pb.Encoding.FLOAT16,
         "bfloat16": pb.Encoding.BFLOAT16, "uniform": pb.Encoding.UNIFORM}
# Encoding.granularity -> pipeedge.quant's name for it.
GRANULARITY_NAMES: dict[int, str] = {pb.Encoding.PER_SAMPLE: "sample", pb.Encoding.PER_ROW: "row"}

SYNTAX = ("raw | float16 | bfloat16 | uniform:BITS[:token][:CLIP] | "
          "adaptive:ITEMS_PER_S[:MIN_BITS][:CLIP]  (BITS 2..16, CLIP laplace|gelu, "
          "token = one (scale, shift) per token instead of per sample)")


class EncodingError(PipeEdgeError, ValueError):
    """An encoding that cannot be used; the message names it and gives the syntax."""


def from_name(name: str, *, bits: int = 0, clip: str = "", per_row: bool = False) -> pb.Encoding:
    """Build an Encoding from its name: raw, float16, bfloat16, uniform (with bits);
    `per_row`: uniform with one (scale, shift) per row of the last dimension (per token)."""
    try:
        kind = NAMES[name]
    except KeyError:
        raise EncodingError(f"unknown encoding '{name}'; use one of {sorted(NAMES)}") from None
    if per_row and kind != pb.Encoding.UNIFORM:
        raise EncodingError(f"per-row params apply only to uniform encoding, not '{name}'")
    return pb.Encoding(kind=kind, bits=bits, clip=clip,
                       granularity=pb.Encoding.PER_ROW if per_row else pb.Encoding.PER_SAMPLE)


def kind_name(kind: int) -> str | None:
    """The name of an Encoding.Kind value, None when unknown (the caller says what failed)."""
    return next((name for name, value in NAMES.items() if value == kind), None)


def granularity_name(value: int) -> str | None:
    return GRANULARITY_NAMES.get(value)


def link_bits(encoding: pb.Encoding | None, raw_bits: int = 32) -> int:
    """Bits per float element on the link (raw = the compute dtype's width); uniform params are
    left out (8 bytes per sample, or per token with PER_ROW)."""
    if encoding is None or encoding.kind == pb.Encoding.RAW:
        return raw_bits
    if encoding.kind == pb.Encoding.UNIFORM:
        return encoding.bits
    return 16


@dataclass(frozen=True)
class EncodingSpec:
    """A stage's output encoding as hosts.yml or `deploy -q` state it."""

    encoding: pb.Encoding | None     # None = raw; adaptive: carries only the clip
    target_items_per_s: float = 0.0  # > 0 = adaptive (AssignRequest.target_items_per_s)
    min_bits: int = 0                # adaptive: narrowest uniform width; 0 = 2

    @property
    def bits(self) -> int:
        """Bits per float element for link cost; adaptive counts as raw (it sends raw whenever
        the link allows)."""
        return 32 if self.target_items_per_s else link_bits(self.encoding)


_PER_ROW = {"token": True, "row": True, "sample": False}  # granularity words -> per-row params?


def parse(text: str, *, where: str = "") -> EncodingSpec:
    """Parse one encoding (see SYNTAX); a bare number is uniform bits, 0 or 32 raw.

    After the bit width, uniform takes ``token`` (per-token params: one (scale, shift) per row of
    the last dimension, `Encoding.PER_ROW`) and/or a clip, in either order; ``sample`` (the
    default) and ``row`` (= token) are accepted too.
    """
    from pipeedge.quant import CLIPS, MAX_BITS, MIN_BITS  # not on the codec's import path

    text = str(text).strip()
    parts = text.lower().split(":")
    kind, args = parts[0], parts[1:]

    def fail(problem: str) -> EncodingError:
        at = f" for {where}" if where else ""
        return EncodingError(f"encoding '{text}'{at}: {problem}; use {SYNTAX}")

    def clip_of(rest: list[str]) -> str:
        if len(rest) > 1 or (rest and rest[0] not in CLIPS):
            raise fail(f"unexpected '{':'.join(rest)}' (clip is laplace or gelu)")
        return rest[0] if rest else ""

    def width(value: str, what: str) -> int:
        if not value.isdigit() or not MIN_BITS <= int(value) <= MAX_BITS:
            raise fail(f"{what} must be {MIN_BITS}..{MAX_BITS}, got '{value}'")
        return int(value)

    if kind.isdigit():
        if int(kind) in (0, 32) and not args:
            return EncodingSpec(None)
        kind, args = "uniform", parts
    if kind in ("", "raw", "none") and not args:
        return EncodingSpec(None)
    if kind in ("raw", "none", "float16", "bfloat16"):
        if args:
            raise fail(f"{kind} takes no ':' arguments")
        return EncodingSpec(from_name(kind) if kind.endswith("16") else None)
    if kind == "uniform":
        if not args:
            raise fail("uniform needs a bit width, e.g. uniform:8")
        bits = width(args[0], "bits")
        rest = args[1:]
        grains = [a for a in rest if a in _PER_ROW]
        if len(grains) > 1:
            raise fail(f"give one of token or sample, not '{':'.join(grains)}'")
        rest = [a for a in rest if a not in _PER_ROW]
        if len(rest) > 1 or (rest and rest[0] not in CLIPS):
            raise fail(f"unexpected '{':'.join(rest)}' (after BITS: token and/or a clip, "
                       "laplace or gelu, e.g. uniform:8:token)")
        return EncodingSpec(from_name("uniform", bits=bits, clip=rest[0] if rest else "",
                                      per_row=bool(grains) and _PER_ROW[grains[0]]))
    if kind == "adaptive":
        try:
            rate = float(args[0]) if args else 0.0
        except ValueError:
            rate = 0.0
        if not (rate > 0 and math.isfinite(rate)):
            raise fail("adaptive needs a target rate in items/s, e.g. adaptive:20")
        rest = args[1:]
        min_bits = width(rest.pop(0), "MIN_BITS") if rest and rest[0].isdigit() else 0
        if any(a in _PER_ROW for a in rest):
            raise fail("adaptive sends per-sample params only (per-token is not supported "
                       "there yet); use uniform:BITS:token for a fixed width")
        clip = clip_of(rest)
        return EncodingSpec(from_name("uniform", clip=clip) if clip else None,
                            target_items_per_s=rate, min_bits=min_bits)
    raise fail("unknown encoding")
