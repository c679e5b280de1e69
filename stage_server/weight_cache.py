"""Content-addressed cache of pushed weight blobs (safetensors), keyed by sha256.

A blob is written to a temporary file while its hash is computed, checked against the hash the
coordinator announced, and only then renamed into place: a half-received or tampered push is
never used, and a cached blob is hashed again before every use (`verify`), so one changed on disk
is never loaded either. Sizes are bounded: one blob by `max_blob_bytes`, the whole cache (blobs
plus pushes in progress) by `max_total_bytes`, making room by evicting the least recently used
blobs. The cache survives restarts; assignments do not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipeedge.errors import PipeEdgeError

if TYPE_CHECKING:
    from pipeedge._proto import stage_pb2 as pb

T = TypeVar("T")

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightPushError(PipeEdgeError, ValueError):
    """A push that cannot be accepted; the message says why and what to do."""


class WeightCache:
    def __init__(self, root: Path, *, max_blob_bytes: int = 16 << 30,
                 max_total_bytes: int = 64 << 30) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_blob_bytes = max_blob_bytes
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()
        self._reserved = 0  # bytes announced by pushes in progress
        for stale in self.root.glob("*.part"):  # left by a push the process died in
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise WeightPushError(f"'{sha256}' is not a lowercase hex sha256")
        return self.root / f"{sha256}.safetensors"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def receive(self, chunks: Iterable[pb.WeightChunk]) -> tuple[str, int, bool]:
        """Store a pushed blob; returns (sha256, bytes received, already cached)."""
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            raise WeightPushError("weight push was empty; send a header chunk with sha256 first")
        target = self.path(first.sha256)
        if first.total_bytes > self.max_blob_bytes:
            raise WeightPushError(f"weight blob of {first.total_bytes} bytes exceeds this "
                                  f"stage's limit of {self.max_blob_bytes}; raise --max-push-bytes")
        self._reserve(first.total_bytes, keep=target)
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
            with self._lock:
                self._reserved -= first.total_bytes
            if os.path.exists(tmp):
                os.unlink(tmp)

    def verify(self, sha256: str) -> bool:
        """Hash a cached blob again before it is used; a blob that no longer matches its name
        (changed on disk) is deleted and False returned. Marks the blob recently used."""
        path = self.path(sha256)
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except FileNotFoundError:
            return False
        if digest.hexdigest() != sha256:
            log.warning("cached weights %s changed on disk (hash %s); deleted", sha256[:12],
                        digest.hexdigest()[:12])
            path.unlink(missing_ok=True)
            return False
        os.utime(path)
        return True

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.safetensors"))

    def _reserve(self, size: int, *, keep: Path) -> None:
        """Make room for a push of `size` bytes, evicting least recently used blobs."""
        with self._lock:
            if self._reserved + size > self.max_total_bytes:
                raise WeightPushError(f"weight blob of {size} bytes does not fit this stage's "
                                      f"cache limit of {self.max_total_bytes} bytes "
                                      f"({self._reserved} bytes are being pushed); push fewer "
                                      "weights at once or raise --max-cache-bytes")
            blobs = sorted((p for p in self.root.glob("*.safetensors") if p != keep),
                           key=lambda p: p.stat().st_mtime)
            used = sum(p.stat().st_size for p in blobs)
            while blobs and used + self._reserved + size > self.max_total_bytes:
                victim = blobs.pop(0)
                used -= victim.stat().st_size
                victim.unlink(missing_ok=True)
                log.info("evicted cached weights %s to make room", victim.stem[:12])
            self._reserved += size


def _chain(first: T, rest: Iterator[T]) -> Iterator[T]:
    yield first
    yield from rest
