"""Logging set-up shared by the CLIs: one line per event, text or JSON.

Events worth knowing (assignment, weight push, re-plan, errors) log one line each and pass their
fields as `extra={"event": "assign", ...}`: the JSON format emits those fields as keys, the text
format shows the message alone. Nothing logs per microbatch at INFO or above; repeated failures
on the hot path go through `Throttle` so a failure storm writes a line now and then, not one per
request.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Throttle:
    """Let one line through per `interval_s`; count what was held back in between.

    Example:
        >>> t = Throttle(60.0)
        >>> t.ready()                      # first occurrence: log it
        (True, 0)
        >>> t.ready()                      # within the minute: suppressed and counted
        (False, 0)
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self._suppressed = 0
        self._lock = threading.Lock()

    def ready(self) -> tuple[bool, int]:
        """(whether to log now, how many were suppressed since the last logged one)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last >= self.interval_s:
                self._last, held, self._suppressed = now, self._suppressed, 0
                return True, held
            self._suppressed += 1
            return False, 0
