"""Content-addressed cache of pushed weight blobs (safetensors), keyed by sha256.

A blob is written to a temporary file while its hash is computed, checked against the hash the
coordinator announced, and only then renamed into place: a half-received or tampered push is
never used. The cache survives restarts; assignments do not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightPushError(ValueError):
    """A push that cannot be accepted; the message says why and what to do."""


class WeightCache:
    def __init__(self, root: Path, *, max_blob_bytes: int = 16 << 30) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_blob_bytes = max_blob_bytes

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise WeightPushError(f"'{sha256}' is not a lowercase hex sha256")
        return self.root / f"{sha256}.safetensors"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def receive(self, chunks: Iterable) -> tuple[str, int, bool]:
        """Store a pushed blob; returns (sha256, bytes received, already cached)."""
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            raise WeightPushError("weight push was empty; send a header chunk with sha256 first")
        target = self.path(first.sha256)
        if first.total_bytes > self.max_blob_bytes:
            raise WeightPushError(f"weight blob of {first.total_bytes} bytes exceeds this "
                                  f"stage's limit of {self.max_blob_bytes}; raise --max-push-bytes")
        digest, received = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in _chain(first, it):
                    received += len(chunk.data)
                    if received > first.total_bytes:
                        raise WeightPushError(f"weight push sent more than the announced "
                                              f"{first.total_bytes} bytes")
                    digest.update(chunk.data)
                    f.write(chunk.data)
            if received != first.total_bytes:
                raise WeightPushError(f"weight push ended after {received} of "
                                      f"{first.total_bytes} bytes; push again")
            if digest.hexdigest() != first.sha256:
                raise WeightPushError(f"weight blob hash {digest.hexdigest()} does not match "
                                      f"announced {first.sha256}; the transfer was corrupted")
            already = target.exists()
            os.replace(tmp, target)
            log.info("cached weights %s (%d bytes)", first.sha256[:12], received,
                     extra={"event": "weight_push", "sha256": first.sha256, "bytes": received})
            return first.sha256, received, already
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _chain(first, rest):
    yield first
    yield from rest
