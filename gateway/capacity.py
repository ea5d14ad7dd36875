"""Per-model admission by Triton's measured capacity: shed what would only wait.

Under overload Triton's queue policy rejects requests only after they waited their
queue timeout (200 ms in the committed configs), and the gateway has read and decoded
each of them by then. Instead, the gateway keeps per model at most as many requests as
Triton finishes in one batch time plus a short wait:

    limit = max(floor, rate x (batch_time + wait)),  wait = min(2 x batch_time, timeout / 2)

`rate` is the best recent completion rate (requests/s, over 1 s windows), `batch_time`
the shortest recent Triton call (a request that did not queue: one execution), `timeout`
the model's queue timeout from its config. A request over the limit gets 503
`gateway_overloaded` + Retry-After before its body is read. `floor` (three max batches)
keeps bursts after an idle spell admitted while the rate is re-learned.

No lock: used from the event loop only.
"""
from __future__ import annotations

import math
import time

WINDOW_S = 1.0          # completion-rate window
RTT_WINDOW_S = 10.0     # shortest-call window (two halves, rolling)
DECAY = 0.9             # the peak rate forgets 10% per window: capacity lost is re-learned


class ModelCapacity:
    def __init__(self, max_batch: int, queue_timeout_s: float | None = None,
                 clock=time.monotonic):
        self.floor = 3 * max(1, max_batch)
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self.in_flight = 0
        self.rate = 0.0                       # requests/s, decayed peak
        self._window_start = clock()
        self._window_done = 0
        self._rtt = [math.inf, math.inf]      # shortest call: previous half, current half
        self._rtt_start = clock()

    @property
    def batch_time(self) -> float | None:
        best = min(self._rtt)
        return None if best == math.inf else best

    @property
    def limit(self) -> int:
        t = self.batch_time
        if t is None or self.rate <= 0:
            return self.floor
        wait = 2 * t if self.queue_timeout_s is None else min(2 * t, self.queue_timeout_s / 2)
        return max(self.floor, math.ceil(self.rate * (t + wait)))

    def enter(self) -> bool:
        """Admit one request (True) or not (False: shed it)."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def observe(self, seconds: float) -> None:
        """One Triton call of this model finished in `seconds` (any outcome but a
        cancellation: an error answer is an answer)."""
        now = self.clock()
        if now - self._rtt_start >= RTT_WINDOW_S / 2:
            self._rtt = [self._rtt[1], math.inf]
            self._rtt_start = now
        self._rtt[1] = min(self._rtt[1], seconds)
        self._window_done += 1
        elapsed = now - self._window_start
        if elapsed >= WINDOW_S:
            sample = self._window_done / elapsed
            self.rate = max(self.rate * DECAY ** (elapsed / WINDOW_S), sample)
            self._window_start, self._window_done = now, 0
