"""`pipeedge-coord eval`: accuracy of the deployed pipeline over a local dataset.

Microbatches stream through the pipeline with a window in flight (inputs are read just in time,
overlapping the pipeline's work); each result's logits are compared with the labels. Image
classifiers report top-1 accuracy; CoLA reports Matthews correlation (GLUE's metric) as well.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeedge.apps.datasets.glue import ColaExample, cola_batches
from pipeedge.apps.datasets.imagenet import ImageFolder
from pipeedge.client import PipelineClient
from pipeedge.models import ModelInfo, model_info


@dataclass(frozen=True)
class EvalResult:
    task: str                      # "imagenet" or "cola"
    predictions: tuple[int, ...]   # argmax of the logits, in dataset order
    labels: tuple[int, ...]
    seconds: float
    label_names: tuple[str, ...] = ()  # the model's id2label, for per-label results

    def per_label(self, limit: int = 20) -> str:
        """'name: accuracy (correct/items)' for each label present, up to `limit` labels."""
        present = sorted(set(self.labels))
        named = any(n != f"LABEL_{i}" for i, n in enumerate(self.label_names))
        if not named or len(present) > limit:  # no id2label names: nothing to add
            return ""
        parts = []
        for y in present:
            items = [p for p, t in zip(self.predictions, self.labels) if t == y]
            name = self.label_names[y] if y < len(self.label_names) else str(y)
            right = sum(p == y for p in items)
            parts.append(f"{name} {right / len(items):.1%} ({right}/{len(items)})")
        return "per label: " + ", ".join(parts)

    @property
    def items(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> int:
        return sum(p == y for p, y in zip(self.predictions, self.labels))

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0

    @property
    def matthews(self) -> float | None:
        """Matthews correlation for binary tasks (CoLA); None otherwise."""
        if self.task != "cola":
            return None
        return matthews_corrcoef(self.labels, self.predictions)

    def summary(self) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        text = f"top-1 accuracy {self.accuracy:.2%} ({self.correct}/{self.items})"
        if self.matthews is not None:
            text = f"Matthews correlation {self.matthews:.4f}; accuracy {self.accuracy:.2%} " \
                   f"({self.correct}/{self.items})"
        per_label = self.per_label()
        return f"{text} in {self.seconds:.1f}s ({rate:.1f} items/s)" + \
            (f"\n{per_label}" if per_label else "")


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Binary Matthews correlation; 0 when a marginal is empty (as scikit-learn returns)."""
    tp = sum(1 for y, p in zip(labels, predictions) if y == 1 and p == 1)
    tn = sum(1 for y, p in zip(labels, predictions) if y == 0 and p == 0)
    fp = sum(1 for y, p in zip(labels, predictions) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, predictions) if y == 1 and p == 0)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def predict(client: PipelineClient, batches: Iterable[tuple[dict[str, torch.Tensor], list[int]]],
            *, total: int, window: int = 4, progress: bool = True, desc: str = "eval"
            ) -> tuple[list[int], list[int], float]:
    """Stream (inputs, labels) microbatches; returns predictions, labels and seconds taken."""
    pending: deque[list[int]] = deque()  # labels of sent microbatches, in order
    failed: list[Exception] = []

    def feed():  # runs in gRPC's sender thread: a bad file must end the stream, not break it
        try:
            for inputs, labels in batches:
                pending.append(labels)
                yield inputs
        except Exception as exc:  # noqa: BLE001 - reported after the results already sent come back
            failed.append(exc)

    preds: list[int] = []
    labels: list[int] = []
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="item", disable=not progress) as bar:
        for out in client.infer_many(feed(), window=window):
            if "logits" not in out:
                raise ValueError(f"the pipeline returns {sorted(out)}, not logits; eval needs "
                                 "a classification model")
            batch_labels = pending.popleft()
            preds.extend(out["logits"].argmax(-1).tolist())
            labels.extend(batch_labels)
            bar.update(len(batch_labels))
            bar.set_postfix(acc=f"{sum(p == y for p, y in zip(preds, labels)) / len(labels):.3f}",
                            refresh=False)
    if failed:
        raise failed[0]
    return preds, labels, time.perf_counter() - start


def evaluate_images(client: PipelineClient, folder: ImageFolder, model: str | ModelInfo, *,
                    batch: int, window: int = 4, progress: bool = True,
                    directory: Path | None = None) -> EvalResult:
    """Top-1 accuracy over an ImageNet-style folder, preprocessed as the model directory says."""
    info = model if isinstance(model, ModelInfo) else model_info(model)
    top = max(label for _, label in folder.samples)
    if top >= info.num_labels:
        raise ValueError(f"{folder.root} has class index {top} ({folder.classes[top]}) but "
                         f"{info.name} has {info.num_labels} labels; pass --classes or another "
                         "model")
    preds, labels, seconds = predict(client, folder.batches(info, batch, directory),
                                     total=len(folder), window=window, progress=progress,
                                     desc="eval images")
    return EvalResult("imagenet", tuple(preds), tuple(labels), seconds, info.labels)


def evaluate_cola(client: PipelineClient, examples: Sequence[ColaExample],
                  tokenizer_dir: str | Path, *, batch: int, window: int = 4,
                  progress: bool = True, model: ModelInfo | None = None) -> EvalResult:
    """Matthews correlation and accuracy over CoLA sentences (`model`: truncation length and
    label names)."""
    preds, labels, seconds = predict(client, cola_batches(examples, tokenizer_dir, batch, model),
                                     total=len(examples), window=window, progress=progress,
                                     desc="eval CoLA")
    return EvalResult("cola", tuple(preds), tuple(labels), seconds,
                      model.labels if model is not None else ())
