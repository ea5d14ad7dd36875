"""Admission: what the gateway lets in, counted in bytes, and what it counts when done.

`MemoryBudget` is the one limit on memory: bytes of request bodies plus decoded frames
held by requests in flight. A request's `Reservation` is charged as its body ARRIVES,
chunk by chunk (Content-Length is only a bound: over `max_body_bytes` a 413 at once, over
what the budget has free now a 503 at once; nothing is held for bytes not yet sent), then
for its decoded frames before decoding (Service.frames). Over the budget: 503
`gateway_overloaded` + Retry-After (nothing queued); a request that could never fit (over
`max_body_bytes`, or more than the whole budget): 413.

`Admission` is the pure ASGI middleware around every route but the probes: the budget,
the in-flight count cap, the body deadline, request metrics labelled by route TEMPLATE
(never the raw path), and clients that hang up. The count cap bounds the work in flight
(parsing, decoding, Triton calls and what they hold beside the budget), so a request
takes its place when its body is in, not before: a client that announces a body and
sends it slowly, or never, holds only the bytes it sent, for at most `body_timeout_s`
(then 408 `body_timeout`; gateway/protocol.py closes the connection). A client gone
while sending its body, or before its answer, is no error of ours: the handler (and
with it its Triton call) is cancelled, it is logged at info, counted in
`client_disconnects_total`, and never as a 5xx.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import orjson

from .errors import BodyTimeout, GatewayError, GatewayOverloaded, PayloadTooLarge
from .metrics import UNMATCHED, Metrics

log = logging.getLogger("visionserve.gateway")
SCOPE_KEY = "visionserve.reservation"


class MemoryBudget:
    """Bytes held by requests in flight against one limit (event-loop only).

    Bodies may fill it only up to `limit - headroom`: the headroom (what one request's
    decoded frames need, set once the served frame sizes are known) keeps bodies that
    are already in from starving the decode of each other. Frames may use the whole
    budget and wait (bounded) for another request to give memory back."""

    def __init__(self, limit: int, metrics: Metrics | None = None):
        self.limit = limit
        self.headroom = 0
        self.in_use = 0
        self._freed = asyncio.Event()
        self._gauge = metrics.memory_in_use if metrics is not None else None
        if metrics is not None:
            metrics.memory_budget.set(limit)

    def fits(self, n: int, headroom: int = 0) -> bool:
        return self.in_use + n <= self.limit - headroom

    def take(self, n: int, headroom: int = 0) -> bool:
        if not self.fits(n, headroom):
            return False
        self._move(n)
        return True

    async def take_within(self, n: int, seconds: float) -> bool:
        """`take(n)`, waiting up to `seconds` for memory to be given back."""
        deadline = time.monotonic() + seconds
        while not self.take(n):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def give(self, n: int) -> None:
        self._move(-n)
        self._freed.set()
        self._freed = asyncio.Event()

    def _move(self, n: int) -> None:
        self.in_use += n
        if self._gauge is not None:
            self._gauge.set(self.in_use)


class Reservation:
    """What one request holds of the budget; given back when the request ends."""

    def __init__(self, budget: MemoryBudget | None, retry_after: int = 1):
        self.budget = budget
        self.retry_after = retry_after
        self.held = 0
        self._deferred: list = []

    def defer(self, give_back) -> None:
        """Call `give_back()` when the request ends (e.g. a per-model capacity slot)."""
        self._deferred.append(give_back)

    def charge(self, n: int, what: str) -> None:
        """Hold `n` more bytes of body (`what`), or raise at once: 413 when this request
        alone could never fit, 503 + Retry-After when the others in flight leave too
        little now (bodies leave the budget's headroom to decoding)."""
        if not self._needed(n, what):
            return
        if not self.budget.take(n, self.budget.headroom):
            raise self._overloaded()
        self.held += n

    async def charge_decoding(self, n: int, what: str, wait_s: float) -> None:
        """Hold `n` more bytes for decoded frames (`what`): the whole budget may be used,
        and a request whose body is already in waits up to `wait_s` for memory."""
        if not self._needed(n, what):
            return
        if not await self.budget.take_within(n, wait_s):
            raise self._overloaded()
        self.held += n

    def _needed(self, n: int, what: str) -> bool:
        """Whether there is anything to charge; 413 when it could never fit."""
        if self.budget is None or n <= 0:
            return False
        if self.held + n > self.budget.limit:
            raise PayloadTooLarge(
                f"the request needs {self.held + n} bytes for its body and {what}; "
                f"the gateway's memory budget is {self.budget.limit}")
        return True

    def _overloaded(self) -> GatewayOverloaded:
        return GatewayOverloaded(
            f"memory budget in use ({self.budget.in_use} of {self.budget.limit} bytes); "
            "retry later", retry_after=self.retry_after)

    def close(self) -> None:
        if self.budget is not None and self.held:
            self.budget.give(self.held)
        self.held = 0
        deferred, self._deferred = self._deferred, []
        for give_back in deferred:
            give_back()


def reservation_of(request) -> Reservation:
    """The request's reservation, made by the Admission middleware (create_app always
    installs it: without it nothing would be given back)."""
    return request.scope[SCOPE_KEY]


class Admission:
    """Pure ASGI middleware: budget, count cap, body deadline, labels, disconnects,
    request metrics. `clock` (seconds, monotonic) is injectable for tests."""

    def __init__(self, app, *, metrics: Metrics, budget: MemoryBudget, limit: int,
                 request_limit: int, retry_after: int, templates: Callable[[], dict],
                 exempt: frozenset[str] = frozenset(), body_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.app, self.metrics, self.budget = app, metrics, budget
        self.exempt = exempt            # the probes' paths: never shed, charged or counted
        self.limit, self.request_limit, self.retry_after = limit, request_limit, retry_after
        self.body_timeout_s, self.clock = body_timeout_s, clock
        self._templates = templates
        self._known: dict[str, str] | None = None
        self.in_flight = 0              # requests with their body in (what `limit` caps)
        self.receiving = 0              # requests whose body is still arriving

    def label(self, scope) -> str:
        """The route template: looked up before routing (fixed paths), else the route
        the router matched; a path that matched nothing is UNMATCHED."""
        if self._known is None:
            self._known = self._templates()
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED)
        return self._known.get(scope["path"], UNMATCHED)

    def full(self) -> GatewayOverloaded | None:
        """The refusal when the count cap is reached, else None."""
        if self.in_flight < self.limit:
            return None
        return GatewayOverloaded(f"{self.in_flight} requests in flight (limit {self.limit}); "
                                 "retry later", retry_after=self.retry_after)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        m = self.metrics
        t0 = time.perf_counter()
        declared = _content_length(scope)
        if declared is not None:
            m.bytes_in.labels(self.label(scope)).observe(declared)
        # refused at once, the body unread: the cap is full of requests whose body is in
        # (an idle upload holds no place, so it cannot fill it), or the body can never fit
        if (full := self.full()) is not None:
            return await self._refuse(scope, send, "in_flight", full, t0)
        if declared is not None and declared > self.request_limit:
            return await self._refuse(scope, send, None, PayloadTooLarge(
                f"body of {declared} bytes exceeds the limit of {self.request_limit}"), t0)
        reservation = Reservation(self.budget, self.retry_after)
        if declared and not self.budget.fits(declared, self.budget.headroom):
            return await self._refuse(scope, send, "memory", reservation._overloaded(), t0)
        scope[SCOPE_KEY] = reservation
        call = _Call(self, scope, receive, send, reservation,
                     self.clock() + self.body_timeout_s)
        if _has_body(scope, declared):
            call.receiving(True)
        else:
            call.place()
        try:
            status = await call.run()
        except Exception:   # a bug: the app's handler answers 500; count it as such
            m.requests.labels(self.label(scope), "500").inc()
            raise
        finally:
            reservation.close()
            call.release()
        route = self.label(scope)
        if status is None:   # the client hung up: not an answer, not our error
            m.disconnects.labels(route, call.gone_stage).inc()
            log.info("client hung up %s %s (%s)", scope["method"], route,
                     "while sending the body" if call.gone_stage == "body" else "before the answer")
            return
        m.latency.labels(route, str(status)).observe(time.perf_counter() - t0)
        m.requests.labels(route, str(status)).inc()

    async def _refuse(self, scope, send, reason: str | None, exc: GatewayError, t0: float) -> None:
        """Answer at once, without reading the body."""
        route = self.label(scope)
        if reason is not None:
            self.metrics.shed.labels(reason).inc()
        self.metrics.requests.labels(route, str(exc.status)).inc()
        self.metrics.latency.labels(route, str(exc.status)).observe(time.perf_counter() - t0)
        body = orjson.dumps(exc.body())
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Call:
    """One admitted request: the handler runs as a task, so that a client who hangs up
    after sending its body can cancel it (and the Triton call it awaits). Its body is
    charged as it arrives and must be in by `deadline` (Admission.clock)."""

    def __init__(self, admission: Admission, scope, receive, send, reservation: Reservation,
                 deadline: float):
        self.a, self.scope, self._receive, self._send = admission, scope, receive, send
        self.reservation, self.deadline = reservation, deadline
        self.received = 0
        self.placed = False
        self.arriving = False
        self.status: int | None = None
        self.answered = False
        self.gone_stage: str | None = None
        self.handler: asyncio.Task | None = None
        self.watcher: asyncio.Task | None = None

    def receiving(self, on: bool) -> None:
        if on != self.arriving:
            self.arriving = on
            self.a.receiving += 1 if on else -1
            self.a.metrics.receiving.inc(1 if on else -1)

    def place(self) -> None:
        """Take a place under the count cap (the body is in), or raise 503."""
        if (full := self.a.full()) is not None:
            self.a.metrics.shed.labels("in_flight").inc()
            raise full
        self.receiving(False)
        self.placed = True
        self.a.in_flight += 1
        self.a.metrics.in_flight.inc()

    def release(self) -> None:
        self.receiving(False)
        if self.placed:
            self.placed = False
            self.a.in_flight -= 1
            self.a.metrics.in_flight.dec()

    async def run(self) -> int | None:
        """The status answered, or None when the client hung up first."""
        self.handler = asyncio.ensure_future(self.a.app(self.scope, self.receive, self.send))
        try:
            await asyncio.shield(self.handler)
        except asyncio.CancelledError:
            if self.gone_stage is None or asyncio.current_task().cancelling():
                self.handler.cancel()   # we are cancelled (shutdown): so is the handler
                raise
        except Exception:
            if self.gone_stage is None:
                raise
        finally:
            if self.watcher is not None:
                self.watcher.cancel()
        return None if self.gone_stage is not None and not self.answered else self.status

    async def receive(self):
        if self.watcher is not None:   # the body is in: the next message is the hang-up
            return await asyncio.shield(self.watcher)
        message = await self._next()
        if message["type"] == "http.disconnect":
            self.gone_stage = "body"
            return message
        chunk = len(message.get("body", b""))
        self.received += chunk
        if self.received > self.a.request_limit:
            raise PayloadTooLarge(f"body exceeds the limit of {self.a.request_limit} bytes")
        try:
            self.reservation.charge(chunk, "the body as it arrives")
        except GatewayOverloaded:
            # given back now, not when the handler has unwound: uploads that filled the
            # budget together would otherwise all be refused together, none completing
            self.reservation.close()
            self.a.metrics.shed.labels("memory").inc()
            raise
        if not message.get("more_body", False):
            if not self.placed:
                self.place()
            self.watcher = asyncio.ensure_future(self._watch())
        return message

    async def _next(self):
        """The server's next message, within the body deadline while the body is owed."""
        if self.placed:
            return await self._receive()
        left = self.deadline - self.a.clock()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                return await self._receive()
        except TimeoutError:
            self.a.metrics.timeouts.labels("body").inc()
            log.info("body not in within %g s: %s %s (%d bytes received)", self.a.body_timeout_s,
                     self.scope["method"], self.scope["path"], self.received)
            raise BodyTimeout(f"the request body did not arrive within {self.a.body_timeout_s:g} s "
                              f"({self.received} bytes received)") from None

    async def _watch(self):
        """After the body, the server's next message is http.disconnect: when the client
        leaves (or once the answer is sent, which is not a hang-up)."""
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.answered:
            self.gone_stage = "response"
            log.debug("client gone before the answer: cancelling %s", self.scope["path"])
            self.handler.cancel()
        return message

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered = True
        await self._send(message)


def _has_body(scope, declared: int | None) -> bool:
    """Whether the request announces a body (a Content-Length over 0, or chunked)."""
    if declared is not None:
        return declared > 0
    return any(key == b"transfer-encoding" for key, _ in scope["headers"])


def _content_length(scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None
