"""When a failed Triton call may be sent to another endpoint, and how many may be.

Inference is idempotent, so a call may be repeated; what matters is whether repeating
it helps and what it costs. The gateway error class (gateway/backend.py `translate`,
the one place gRPC errors are classified) decides:

| error              | Triton took it? | retry elsewhere | eject the endpoint |
|--------------------|-----------------|-----------------|--------------------|
| TritonUnavailable  | no (down, draining, refused connection) or lost with the connection | yes | yes |
| ModelUnavailable   | no (NOT_FOUND: a stopping Triton answers this for new requests)     | yes | yes (re-probe) |
| TritonOverloaded   | no (its queue policy rejected it: 429)                              | yes, never the same endpoint | no |
| TritonTimeout      | maybe, and the deadline is spent                                     | no  | no |
| TritonError        | yes (the model failed)                                               | no  | no |

Retries go to an endpoint not tried yet, within the request's remaining deadline, and
under a `RetryBudget` so a sick fleet is not hit with a storm of repeats. The request is
re-serialised from the arrays the gateway still holds: no gRPC retry buffer is involved,
so a 1.2 MB frame (or a 16-frame batch) is retried as easily as a text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ModelUnavailable, TritonOverloaded, TritonUnavailable, UpstreamError


@dataclass(frozen=True)
class Action:
    retry: bool    # another endpoint may take it
    eject: bool    # this endpoint is down or leaving: stop routing to it, probe it back


_NEVER = Action(False, False)
_TABLE = {TritonUnavailable: Action(True, True), ModelUnavailable: Action(True, True),
          TritonOverloaded: Action(True, False)}


def action(exc: UpstreamError) -> Action:
    for cls, act in _TABLE.items():
        if isinstance(exc, cls):
            return act
    return _NEVER


class RetryBudget:
    """A token bucket: every request adds `ratio` of a token, every retry takes one,
    and at most `burst` are saved. Over time retries stay under `ratio` of the requests
    (plus the burst), so when most calls fail the gateway answers errors instead of
    multiplying the load. `min_per_s` tokens a second keep a quiet gateway able to retry."""

    def __init__(self, ratio: float = 0.1, burst: float = 20.0, min_per_s: float = 1.0,
                 clock=time.monotonic):
        self.ratio, self.burst, self.min_per_s, self.clock = ratio, burst, min_per_s, clock
        self.tokens = burst
        self._last = clock()

    def deposit(self) -> None:
        self._refill(self.ratio)

    def withdraw(self) -> bool:
        self._refill(0.0)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def _refill(self, extra: float) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + extra + (now - self._last) * self.min_per_s)
        self._last = now
