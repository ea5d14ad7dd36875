"""Per-model admission by Triton's measured capacity: shed what would only wait.

Under overload Triton's queue policy rejects requests only after they waited their
queue timeout (200 ms in the committed configs), and the gateway has read and decoded
each of them by then. Instead, the gateway keeps per model at most as many requests as
go through in one request time plus one batch waiting in Triton's queue:

    limit = max(floor, rate x (request_time + wait)),  wait = min(batch_time, timeout / 2)

however many instances and replicas serve the model: Triton never idles (a batch is
always formed behind the running one) and nothing waits long enough for its queue
timeout. `rate` is the completion rate (requests/s, a moving average of 1 s windows,
whose peak fades slowly: at saturation it is the capacity), `request_time` the shortest
recent admitted request that Triton answered (decode, call and answer, no queueing),
`batch_time` the shortest recent Triton call (one execution), `timeout` the model's
queue timeout from its config. `floor` (two max batches) keeps bursts after an idle
spell admitted while the rate is re-learned.

A request finding the model full is answered 503 `gateway_overloaded` + Retry-After
before its body is read; it takes its place once the body is in (a slow upload holds
none), and is shed then if the place went to another meanwhile.

No lock: used from the event loop only.
"""
from __future__ import annotations

import math
import time

WINDOW_S = 1.0          # completion-rate window
MIN_WINDOW_S = 10.0     # shortest-time windows (two halves, rolling)
SMOOTHING = 0.3         # weight of the newest window in the rate
FADE = 0.98             # per window: how slowly the rate's peak forgets


class Ticket:
    """One admitted request: when it entered, and whether Triton answered it."""
    __slots__ = ("t0", "answered")

    def __init__(self, t0: float):
        self.t0, self.answered = t0, False


class _RollingMin:
    """The least value seen over the last `span` seconds (two halves)."""

    def __init__(self, span: float, clock):
        self.span, self.clock = span, clock
        self.halves = [math.inf, math.inf]
        self.start = clock()

    def add(self, value: float) -> None:
        now = self.clock()
        if now - self.start >= self.span / 2:
            self.halves = [self.halves[1], math.inf]
            self.start = now
        self.halves[1] = min(self.halves[1], value)

    @property
    def value(self) -> float | None:
        best = min(self.halves)
        return None if best == math.inf else best


class ModelCapacity:
    def __init__(self, max_batch: int, queue_timeout_s: float | None = None,
                 clock=time.monotonic):
        self.floor = 2 * max(1, max_batch)
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self.in_flight = 0
        self.rate = 0.0                       # requests/s: moving average
        self.peak = 0.0                       # ... and its slowly fading peak
        self._window_start = clock()
        self._window_done = 0
        self._batch = _RollingMin(MIN_WINDOW_S, clock)     # one Triton execution
        self._request = _RollingMin(MIN_WINDOW_S, clock)   # one admitted request

    @property
    def batch_time(self) -> float | None:
        return self._batch.value

    @property
    def limit(self) -> int:
        t, request = self._batch.value, self._request.value
        if t is None or self.peak <= 0:
            return self.floor
        wait = t if self.queue_timeout_s is None else min(t, self.queue_timeout_s / 2)
        return max(self.floor, math.ceil(self.peak * ((request or t) + wait)))

    def full(self) -> bool:
        return self.in_flight >= self.limit

    def enter(self) -> Ticket | None:
        """Admit one request (its ticket) or not (None: shed it)."""
        if self.full():
            return None
        self.in_flight += 1
        return Ticket(self.clock())

    def leave(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        if ticket.answered:
            self._request.add(self.clock() - ticket.t0)

    def observe(self, seconds: float) -> None:
        """One Triton call of this model answered in `seconds`."""
        now = self.clock()
        self._batch.add(seconds)
        self._window_done += 1
        elapsed = now - self._window_start
        if elapsed >= WINDOW_S:
            sample = self._window_done / elapsed
            self.rate = sample if self.rate == 0 else \
                (1 - SMOOTHING) * self.rate + SMOOTHING * sample
            self.peak = max(self.rate, self.peak * FADE ** (elapsed / WINDOW_S))
            self._window_start, self._window_done = now, 0
