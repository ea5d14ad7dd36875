"""Outlier ejection: an endpoint whose calls time out while its health check passes.

A Triton whose model executions hang (a stuck GPU kernel, a wedged python-backend stub,
a deadlocked instance) still answers ServerLive and ModelReady: the health probe alone
keeps it `ready`, and least-outstanding balancing keeps sending it a share of the calls,
each answered 504 after the whole deadline. So the fleet also judges each endpoint by
how its calls END:

- `timeouts` calls in a row that reach their deadline (gRPC DEADLINE_EXCEEDED) with no
  answered call between them, or
- within the last `window_s`, at least `timeouts` timed-out calls making up at least
  `ratio` of the calls that ended there (a Triton of which one instance of several
  hangs: timeouts alternate with answers and never line up `timeouts` in a row),

eject it (gateway/fleet.py: not routed, probed back). An answer of any kind (outputs, or
Triton's own error for the model) counts as answered; refusals that say nothing about
the model executing (Triton's queue policy, a connection failure: those have their own
handling in gateway/retry.py) are not counted either way.

The probe that brings an outlier back cannot be the health check (it passed all along):
it is one real inference of the model that timed out (`probe_inputs`: zeros of the
model's input shapes), which must be answered within the request deadline.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from .catalog import ModelInfo


class TimeoutJudge:
    """How one endpoint's calls ended, and whether that makes it an outlier. Pure: the
    clock is injected; O(1) memory per second of the window whatever the call rate."""

    def __init__(self, timeouts: int = 3, ratio: float = 0.5, window_s: float = 30.0,
                 clock=time.monotonic):
        self.limit, self.ratio, self.window_s, self.clock = timeouts, ratio, window_s, clock
        self.in_a_row = 0
        self._seconds: deque[list] = deque()   # [whole second, calls ended, timed out]
        self._calls = self._timeouts = 0       # over the seconds held

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def answered(self) -> None:
        self.in_a_row = 0
        self._count(0)

    def timed_out(self) -> str | None:
        """Count one timed-out call; the reason to eject, or None."""
        self.in_a_row += 1
        calls, timeouts = self._count(1)
        if not self.enabled:
            return None
        if self.in_a_row >= self.limit:
            return f"{self.in_a_row} calls in a row timed out"
        if timeouts >= self.limit and timeouts >= self.ratio * calls:
            return f"{timeouts} of {calls} calls in {self.window_s:g} s timed out"
        return None

    def reset(self) -> None:
        """A fresh start (the endpoint came back): what it did before no longer counts."""
        self.in_a_row = 0
        self._seconds.clear()
        self._calls = self._timeouts = 0

    def _count(self, timed_out: int) -> tuple[int, int]:
        """Add one call to the current second; (calls, timeouts) in the window. Running
        totals: O(1) per call (this runs on every Triton call)."""
        now = int(self.clock())
        seconds = self._seconds
        while seconds and seconds[0][0] <= now - self.window_s:
            _, calls, timeouts = seconds.popleft()
            self._calls -= calls
            self._timeouts -= timeouts
        if seconds and seconds[-1][0] == now:
            seconds[-1][1] += 1
            seconds[-1][2] += timed_out
        else:
            seconds.append([now, 1, timed_out])
        self._calls += 1
        self._timeouts += timed_out
        return self._calls, self._timeouts


def probe_inputs(info: ModelInfo) -> dict[str, np.ndarray]:
    """One batch item of zeros (empty strings for BYTES) per input of `info`, variable
    dimensions at 1: a request every model of the contract accepts or refuses with its
    own error (either proves it executes)."""
    from tritonclient.utils import triton_to_np_dtype

    batch = (1,) if info.max_batch_size > 0 else ()
    out = {}
    for t in info.inputs:
        shape = batch + tuple(d if d > 0 else 1 for d in t.shape)
        if t.datatype == "BYTES":
            out[t.name] = np.full(shape, b"", dtype=np.object_)
        else:
            out[t.name] = np.zeros(shape, triton_to_np_dtype(t.datatype))
    return out
