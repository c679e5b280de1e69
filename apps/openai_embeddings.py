"""``POST /v1/embeddings`` on an encoder pipeline whose last stage pools (sentence embeddings).

Inputs are tokenized with the tokenizer of the pipeline's weights directory (truncated where the
model's own files say, as sentence-transformers does); token-id inputs are used as given.
Batches of the pipeline's microbatch size go through `AsyncPipelineClient`, so a re-planned
pipeline is followed like any other client does.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import torch

from pipeedge.apps.openai_service import RequestError, listed_inputs, pipeline_error
from pipeedge.client import AsyncPipelineClient
from pipeedge.errors import PipelineError
from pipeedge.pipeline_file import Pipeline

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingService:
    """Embeddings from one encoder pipeline; ``model_name`` is its public id."""

    kind = "encoder"

    def __init__(self, pipeline_file: str | Path, *, tokenizer: str | Path | None = None,
                 timeout_s: float = 60.0, model_name: str | None = None) -> None:
        pipeline = Pipeline.load(Path(pipeline_file))
        self.info = pipeline.model_info()
        if self.info.is_decoder:
            raise ValueError(f"{pipeline.model} is a decoder; serve it for completions")
        directory = pipeline.weights_directory
        self.tokenizer_dir = tokenizer or directory
        self.model_name = model_name or pipeline.model or str(directory or "")
        self.microbatch = max(1, pipeline.microbatch)
        self.created = int(time.time())
        self.client = AsyncPipelineClient(pipeline_file=pipeline_file, timeout_s=timeout_s)

    async def aclose(self) -> None:
        await self.client.close()

    def _batches(self, body: dict) -> tuple[list[dict[str, torch.Tensor]], int]:
        items = listed_inputs(body.get("input"), "input")
        if len(items) > MAX_INPUTS:
            raise RequestError(400, f"input has {len(items)} items; at most {MAX_INPUTS}",
                               param="input")
        texts = all(isinstance(i, str) for i in items)
        ids = all(isinstance(i, list) and i and all(isinstance(t, int) and not
                                                   isinstance(t, bool) for t in i)
                  for i in items)
        if not (texts or ids):
            raise RequestError(400, "input items must all be strings or all be non-empty "
                               "lists of token ids", param="input")
        if texts and any(not t for t in items):
            raise RequestError(400, "input strings must not be empty", param="input")
        chunks = [items[i:i + self.microbatch] for i in range(0, len(items), self.microbatch)]
        batches = [self._text_batch(c) if texts else self._id_batch(c) for c in chunks]
        return batches, sum(int(b["attention_mask"].sum()) for b in batches)

    def _text_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        from pipeedge.coordinator.inputs import text_inputs

        if self.tokenizer_dir is None:
            raise RequestError(400, "this pipeline has no tokenizer (weights are not a local "
                               "directory; start serve-http with --tokenizer DIR); send "
                               "token ids instead", param="input")
        return text_inputs(texts, self.tokenizer_dir, self.info)

    def _id_batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        vocab, limit = int(self.info.config["vocab_size"]), self.info.max_positions
        for row in rows:
            if len(row) > limit:
                raise RequestError(400, f"an input has {len(row)} tokens; this model takes "
                                   f"at most {limit}", param="input",
                                   code="context_length_exceeded")
            if any(not 0 <= t < vocab for t in row):
                raise RequestError(400, f"token ids must be in 0..{vocab - 1}", param="input")
        width, pad = max(map(len, rows)), int(self.info.config.get("pad_token_id") or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    async def embeddings(self, body: dict) -> dict:
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise RequestError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}",
                               param="encoding_format")
        width = int(self.info.config["hidden_size"])
        if body.get("dimensions") not in (None, width):
            raise RequestError(400, f"dimensions is not supported: {self.model_name} "
                               f"embeddings have {width} dimensions", param="dimensions")
        batches, tokens = self._batches(body)
        try:
            outputs = await self.client.infer_many(batches, window=4)
        except PipelineError as exc:
            raise pipeline_error(exc) from None
        vectors = torch.cat([o["embeddings"] for o in outputs]).float().numpy()
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI's API sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
