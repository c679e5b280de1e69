"""The one exception the scheduler raises for bad inputs or impossible requests.

Its message names the problem and the fix, so the CLI can print it as a single line.
"""

from __future__ import annotations

from pipeedge.errors import PipeEdgeError

__all__ = ["SchedulingError"]


class SchedulingError(PipeEdgeError, ValueError):
    """Inputs are inconsistent or no schedule satisfies them; ``str(err)`` says what to change."""
