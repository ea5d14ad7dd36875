"""Per-model admission by Triton's measured capacity, counted in FRAMES: shed what would
only wait.

Under overload Triton's queue policy rejects requests only after they waited their
queue timeout (200 ms in the committed configs), and the gateway has read and decoded
each of them by then; a model without a queue timeout lets them wait until the gateway's
deadline (504). Instead, the gateway keeps per model at most as many frames (batch items:
a 3-image upload is 3, whatever chunks it is sent in) as go through in one request time
plus two batch times waiting in Triton's queue, and never more than Triton finishes
within the deadline:

    limit = max(floor, min(rate x (request_time + wait), rate x deadline))
    wait  = min(2 x batch_time, timeout / 2)

however many instances and replicas serve the model: Triton never idles (batches are
always formed behind the running one), jitter below capacity is absorbed, and nothing
waits long enough for its queue timeout. `rate` is what Triton finishes per second: the
completion rate (a moving average of 1 s windows whose peak fades slowly: at saturation
the capacity of all replicas), and at least max_batch / batch_time (one instance, known
before it is ever saturated); `request_time` one execution plus the shortest recent
time an answered request spent in the gateway itself (decode, answer: its Triton call
taken out, so that requests queued under saturation do not grow the limit), `batch_time` the shortest recent
Triton call (one execution), `timeout` the model's queue timeout from its config.
`floor` (two max batches) holds until a call has been timed. `rate` is in frames per second
(calls are observed with their batch size), so the limit is in frames too.

A request finding the model full is answered 503 `gateway_overloaded` + Retry-After
before its body is read; once the body is in it takes as many places as it has frames
(`enter(n)`), and is shed then if they do not fit (an empty model admits any request:
one too big for the limit alone still runs, chunked, rather than never). A pipeline's
request takes places in the gate of every model the pipeline runs (gateway/service.py);
a model whose own calls were never timed (only ever run inside a pipeline) counts those
frames but does not refuse: the pipeline's own measured gate bounds them.

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
    """One admitted request: its frames, when it entered, and how long Triton took to
    answer it."""
    __slots__ = ("t0", "triton_s", "frames")

    def __init__(self, t0: float, frames: int = 1):
        self.t0, self.triton_s, self.frames = t0, None, frames

    def answered(self, seconds: float) -> None:
        self.triton_s = (self.triton_s or 0.0) + seconds


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
                 clock=time.monotonic, deadline_s: float | None = None):
        self.max_batch = max(1, max_batch)
        self.floor = 2 * self.max_batch
        self.queue_timeout_s = queue_timeout_s
        self.deadline_s = deadline_s          # the gateway's Triton deadline (504 past it)
        self.clock = clock
        self.in_flight = 0                    # frames of the requests admitted
        self.rate = 0.0                       # frames/s: moving average
        self.peak = 0.0                       # ... and its slowly fading peak
        self._window_start = clock()
        self._window_done = 0
        self._batch = _RollingMin(MIN_WINDOW_S, clock)     # one Triton execution
        self._own = _RollingMin(MIN_WINDOW_S, clock)       # a request's time outside Triton

    @property
    def batch_time(self) -> float | None:
        return self._batch.value

    @property
    def limit(self) -> int:
        t = self._batch.value
        if t is None:
            return self.floor
        # not the shortest whole request: under saturation every one of them queued, and a
        # limit grown from queued requests grows without end; the gateway's own part of a
        # request (decode, answer) plus one execution does not queue in Triton
        request = (self._own.value or 0.0) + t
        # what Triton finishes per second: the rate seen at saturation, and at least what
        # one instance does with full batches (known before it is ever saturated)
        rate = max(self.peak, self.max_batch / t)
        wait = 2 * t if self.queue_timeout_s is None else min(2 * t, self.queue_timeout_s / 2)
        held = rate * (request + wait)
        if self.deadline_s is not None:   # what cannot finish before the deadline: refuse now
            held = min(held, rate * self.deadline_s)
        return max(self.floor, math.ceil(held))

    @property
    def measured(self) -> bool:
        """A call of this model has been timed (its limit is its own, not the floor)."""
        return self._batch.value is not None

    def full(self) -> bool:
        """Not one more frame fits."""
        return self.in_flight >= self.limit

    def fits(self, frames: int) -> bool:
        return self.in_flight == 0 or self.in_flight + frames <= self.limit

    def enter(self, frames: int = 1, *, force: bool = False) -> Ticket | None:
        """Admit a request of `frames` (its ticket) or not (None: shed it); `force`:
        count it without judging (a model whose capacity is not known)."""
        if not force and not self.fits(frames):
            return None
        self.in_flight += frames
        return Ticket(self.clock(), frames)

    @property
    def alone(self) -> bool:
        """At most one max batch in flight: a call now does not queue behind ours."""
        return self.in_flight <= self.max_batch

    def leave(self, ticket: Ticket) -> None:
        self.in_flight -= ticket.frames
        if ticket.triton_s is not None:
            self._own.add(max(0.0, self.clock() - ticket.t0 - ticket.triton_s))

    def observe(self, seconds: float, alone: bool = True, frames: int = 1) -> None:
        """One Triton call of this model (or of a pipeline running it: `alone` False)
        answered `frames` in `seconds`; `alone`: it started with at most one max batch of
        this model in flight, so it cannot have queued behind our own requests. Only such
        calls time an execution: under saturation every call queues, and a batch time
        grown from queued calls would grow the limit without end (the last unqueued
        measure is kept: the windows only move with new ones)."""
        now = self.clock()
        if alone:
            self._batch.add(seconds)
        self._window_done += frames
        elapsed = now - self._window_start
        if elapsed >= WINDOW_S:
            sample = self._window_done / elapsed
            self.rate = sample if self.rate == 0 else \
                (1 - SMOOTHING) * self.rate + SMOOTHING * sample
            self.peak = max(self.rate, self.peak * FADE ** (elapsed / WINDOW_S))
            self._window_start, self._window_done = now, 0
