"""One exception tree for perf/: user mistakes vs. environment problems vs. bugs.

`PerfError` subclasses are the errors a user can act on (a CLI prints them and exits
non-zero without a traceback); anything else escaping perf/ is a bug.
"""
from __future__ import annotations


class PerfError(Exception):
    """Base of every error perf/ raises on purpose."""


class UsageError(PerfError, ValueError):
    """Bad arguments: unknown model, malformed range, a non-loopback URL, ..."""


class SetupError(PerfError, RuntimeError):
    """A tool or library is missing (perf_analyzer, libb64, libcudart); says how to fix it."""


class OverCapError(PerfError):
    """The pre-flight estimate of a run's memory exceeds the cap; carries what would fit."""

    def __init__(self, message: str, estimate=None, suggestions: tuple[str, ...] = ()):
        super().__init__(message)
        self.estimate = estimate
        self.suggestions = suggestions


class RunFailed(PerfError, RuntimeError):
    """The load generator ran but failed (non-zero exit, killed at the cap, server errors)."""


class ServerUnavailable(PerfError, ConnectionError):
    """No Triton or gateway answered at the given address within the timeout."""
