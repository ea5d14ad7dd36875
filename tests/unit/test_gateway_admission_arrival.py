"""Admission charged as a body arrives (issue 20): bytes not sent hold no memory, a body
not yet in holds no in-flight place, and a body not in by `body_timeout_s` is a 408.

Driven through the ASGI interface with the Call driver of the admission tests' pattern
(rebuilt here: test modules share nothing but tests/support), an injected clock for the
deadline, and FakeBackend behind the seam."""
from __future__ import annotations

import asyncio
import re

from gateway.admission import Admission
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend, metrics_text
from tests.support.images import flat_jpeg
from tests.support.polling import eventually

MiB = 1024 * 1024
JPEG = flat_jpeg(320, 240, 100, quality=80)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_with(clock: Clock | None = None, fake: FakeBackend | None = None, **kw):
    app = create_app(GatewaySettings(startup_wait_s=0, metrics_port=0, **kw),
                     backend=fake or FakeBackend())
    if clock is not None:
        for mw in app.user_middleware:
            if mw.cls is Admission:
                mw.kwargs["clock"] = clock
    return app


class Call:
    def __init__(self, app, declared: int | None, path="/v1/detect", method="POST"):
        headers = [(b"content-type", b"image/jpeg")]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        self.app = app
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                      "method": method, "scheme": "http", "path": path,
                      "raw_path": path.encode(), "root_path": "", "query_string": b"",
                      "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
                      "headers": headers}
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []

    async def receive(self):
        return await self.inbox.get()

    async def send(self, message):
        self.sent.append(message)

    def feed(self, chunk: bytes, more=True):
        self.inbox.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def run(self):
        return asyncio.ensure_future(self.app(self.scope, self.receive, self.send))

    @property
    def status(self):
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def code(self):
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        m = re.search(rb'"code":"(\w+)"', body)
        return m.group(1).decode() if m else None


def value(app, name: str) -> float:
    m = re.search(rf"^visionserve_gateway_{name} (\S+)$", metrics_text(app), re.M)
    return float(m.group(1))


async def started(app):
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"

    async def stop():
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), 10)
        await task
    return stop


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_idle_uploads_hold_no_place_and_no_memory():
    """3 x the in-flight cap of uploads announce 1 MiB and send nothing: nothing of the
    budget is held, no place is taken, and a legitimate request is served meanwhile."""
    app = app_with(max_in_flight=2)

    async def go():
        stop = await started(app)
        idle = [Call(app, MiB) for _ in range(6)]
        tasks = [c.run() for c in idle]
        assert await eventually(lambda: value(app, "receiving_requests") == 6, 2)
        held = value(app, "memory_in_use_bytes"), value(app, "in_flight_requests")
        ok = Call(app, len(JPEG))
        ok.feed(JPEG, more=False)
        await asyncio.wait_for(ok.run(), 5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop()
        return held, ok

    held, ok = run(go())
    assert held == (0.0, 0.0)
    assert ok.status == 200


def test_the_budget_is_charged_by_what_arrived_not_by_content_length():
    app = app_with()

    async def go():
        stop = await started(app)
        c = Call(app, 4 * MiB)
        task = c.run()
        c.feed(b"\xff" * (MiB // 4))
        assert await eventually(lambda: value(app, "memory_in_use_bytes") == MiB // 4, 2), \
            value(app, "memory_in_use_bytes")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop()
    run(go())


def test_a_trickle_past_the_body_deadline_is_a_408_and_frees_what_it_held():
    clock = Clock()
    app = app_with(clock, body_timeout_s=30)

    async def go():
        stop = await started(app)
        c = Call(app, 1000)
        task = c.run()
        c.feed(b"\xff" * 100)
        assert await eventually(lambda: value(app, "memory_in_use_bytes") == 100, 2)
        clock.now += 29.9
        c.feed(b"\xff" * 100)     # still in time
        assert await eventually(lambda: value(app, "memory_in_use_bytes") == 200, 2)
        clock.now += 0.2          # past the deadline: the next receive refuses
        c.feed(b"\xff" * 100)
        await asyncio.wait_for(task, 5)
        text = metrics_text(app)
        await stop()
        return c, text

    c, text = run(go())
    assert (c.status, c.code) == (408, "body_timeout")
    assert "visionserve_gateway_memory_in_use_bytes 0.0" in text
    assert "visionserve_gateway_receiving_requests 0.0" in text
    assert 'visionserve_gateway_client_timeouts_total{stage="body"} 1.0' in text
    assert 'visionserve_gateway_requests_total{route="/v1/detect",status="408"} 1.0' in text


def test_an_idle_body_is_a_408_at_its_deadline():
    """Nothing after the head: 408 once the deadline passes (a real, short one)."""
    app = app_with(body_timeout_s=0.2)

    async def go():
        stop = await started(app)
        c = Call(app, 1000)
        await asyncio.wait_for(c.run(), 5)
        await stop()
        return c

    c = run(go())
    assert (c.status, c.code) == (408, "body_timeout")


def test_the_place_is_taken_when_the_body_is_in():
    """Cap 1: two uploads in progress together hold no place; the first complete takes
    it, the second complete while it is held is a 503 (after its body)."""
    fake = FakeBackend()
    fake.hold.clear()
    app = app_with(fake=fake, max_in_flight=1)

    async def go():
        stop = await started(app)
        first, second = Call(app, len(JPEG)), Call(app, len(JPEG))
        tasks = [first.run(), second.run()]
        first.feed(JPEG[:100])
        second.feed(JPEG[:100])
        assert await eventually(lambda: value(app, "receiving_requests") == 2, 2)
        assert value(app, "in_flight_requests") == 0
        first.feed(JPEG[100:], more=False)
        assert await eventually(fake.entered.is_set, 2)
        assert value(app, "in_flight_requests") == 1
        second.feed(JPEG[100:], more=False)
        await asyncio.wait_for(tasks[1], 5)
        fake.hold.set()
        await asyncio.wait_for(tasks[0], 5)
        text = metrics_text(app)
        await stop()
        return first, second, text

    first, second, text = run(go())
    assert first.status == 200
    assert (second.status, second.code) == (503, "gateway_overloaded")
    assert 'visionserve_gateway_shed_total{reason="in_flight"} 1.0' in text
    assert "visionserve_gateway_in_flight_requests 0.0" in text


def test_per_client_connection_default_carries_a_proxy_at_full_load():
    s = GatewaySettings()
    assert s.connections_per_client == 2 * s.in_flight_limit
    assert GatewaySettings(max_connections_per_client=0).connections_per_client == 0
    assert s.body_timeout_s == 30


def test_uploads_that_fill_the_budget_together_are_not_all_refused():
    """24 uploads fed in lockstep, over twice what the budget holds: the ones refused give
    their memory back at once, so some complete (200) instead of all meeting the full
    budget together (503 for everyone)."""
    import numpy as np
    import simplejpeg

    body = simplejpeg.encode_jpeg(np.random.default_rng(0).integers(0, 255, (480, 640, 3),
                                                                    np.uint8), quality=95)
    budget = 6 * MiB
    app = app_with(memory_budget_bytes=budget, max_body_bytes=2 * MiB)

    async def go():
        stop = await started(app)
        calls = [Call(app, len(body)) for _ in range(24)]
        tasks = [c.run() for c in calls]
        sent = [0] * len(calls)
        step = 64 * 1024
        while any(s < len(body) and c.status is None for s, c in zip(sent, calls)):
            for i, c in enumerate(calls):
                if c.status is None and sent[i] < len(body):
                    piece = body[sent[i]:sent[i] + step]
                    sent[i] += len(piece)
                    c.feed(piece, more=sent[i] < len(body))
            await asyncio.gather(*(consumed(c) for c in calls))
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        text = metrics_text(app)
        await stop()
        return [c.status for c in calls], text

    statuses, text = run(go())
    assert 24 * len(body) > 2 * budget
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    assert "visionserve_gateway_memory_in_use_bytes 0.0" in text


async def consumed(call: Call) -> None:
    """Until the app has taken every chunk fed (or answered)."""
    assert await eventually(lambda: call.inbox.empty() or call.status is not None, 5)
