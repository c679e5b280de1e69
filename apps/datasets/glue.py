"""GLUE CoLA from its local TSV files.

`in_domain_dev.tsv`, `out_of_domain_dev.tsv` and `in_domain_train.tsv` (the raw CoLA release) and
GLUE's `CoLA/dev.tsv` / `train.tsv` share one layout, no header, tab-separated:

    source code    acceptability label (1 = acceptable, 0 = not)    original marker ("*" or "")
    sentence

GLUE's `test.tsv` has no labels (a header `index  sentence`) and cannot be scored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ColaExample:
    source: str        # e.g. "gj04": where the sentence comes from
    label: int         # 1 = grammatically acceptable, 0 = not
    marker: str        # the original author's acceptability mark ("*" when unacceptable)
    sentence: str


def load_cola(path: str | Path) -> list[ColaExample]:
    """Read a CoLA TSV file; a malformed line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoLA file {path} not found; pass in_domain_dev.tsv (or GLUE's "
                                "CoLA/dev.tsv)")
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if n == 1 and row[0].strip().lower() == "index":
                raise ValueError(f"{path} has a header and no labels (GLUE test.tsv?); use a "
                                 "labelled file such as in_domain_dev.tsv")
            if len(row) != 4 or row[1].strip() not in ("0", "1"):
                raise ValueError(f"{path} line {n}: expected 4 tab-separated columns (source, "
                                 "label 0/1, marker, sentence)")
            out.append(ColaExample(row[0], int(row[1]), row[2], row[3]))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


def cola_batches(examples: Sequence[ColaExample], tokenizer_dir: str | Path, batch: int,
                 model=None) -> Iterator[tuple[dict[str, torch.Tensor], list[int]]]:
    """(tokenized inputs, labels) per microbatch, padded to the longest sentence in it and
    truncated where `model` (name or ModelInfo) and its tokenizer files say."""
    from pipeedge.coordinator.inputs import text_inputs

    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        yield (text_inputs([e.sentence for e in chunk], tokenizer_dir, model),
               [e.label for e in chunk])
