"""The one error type of the testbed: its message names the thing that failed and the fix."""

from __future__ import annotations

from pipeedge.errors import PipeEdgeError


class TestbedError(PipeEdgeError, RuntimeError):
    """A testbed step failed; str(exc) is one line naming what and how to fix it."""

    __test__ = False  # not a pytest test class, despite the name
