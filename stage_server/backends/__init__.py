"""Shard backends: one implementation per file, created through `load_backend`.

Heavy imports (torch models, onnxruntime) happen inside the backend that needs them, so the
server's control plane starts fast.
"""

from pipeedge.stage_server.backends.base import (
                                                 ShardBackend,
                                                 check_target,
                                                 check_threads,
                                                 load_backend,
)

__all__ = ["ShardBackend", "check_target", "check_threads", "load_backend"]
