"""Admission: the memory budget (bodies + decoded frames in flight), the in-flight count,
metric labels that are route templates, and clients that hang up (not our error).

Driven through the ASGI interface directly where a test needs a client that sends part
of a body and disconnects (TestClient cannot), with FakeBackend behind the seam."""
from __future__ import annotations

import asyncio
import re
import threading

import numpy as np
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend, metrics_text
from tests.support.images import flat_jpeg
from tests.support.polling import eventually

MiB = 1024 * 1024


JPEG = flat_jpeg(320, 240, 100, quality=80)


def settings(**kw) -> GatewaySettings:
    return GatewaySettings(startup_wait_s=0, metrics_port=0, **kw)


def series(text: str, name: str) -> dict[tuple, float]:
    """{label values: value} of one metric family in Prometheus text."""
    out = {}
    for labels, value in re.findall(rf'^visionserve_gateway_{name}\{{([^}}]*)\}} (\S+)$', text, re.M):
        out[tuple(re.findall(r'="([^"]*)"', labels))] = float(value)
    return out


# -- an ASGI driver for clients TestClient cannot play ---------------------------------
class Call:
    """One HTTP request against the app's ASGI callable: the body is fed chunk by chunk,
    `hang_up()` makes the next receive() an http.disconnect."""

    def __init__(self, app, path, headers=(), method="POST", query=b""):
        self.app = app
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                      "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                      "root_path": "", "query_string": query, "client": ("127.0.0.1", 5000),
                      "server": ("127.0.0.1", 8080),
                      "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.started = asyncio.Event()

    async def receive(self):
        return await self.inbox.get()

    async def send(self, message):
        self.sent.append(message)
        if message["type"] == "http.response.start":
            self.started.set()

    def feed(self, chunk: bytes, more=True):
        self.inbox.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def hang_up(self):
        self.inbox.put_nowait({"type": "http.disconnect"})

    def run(self):
        return asyncio.ensure_future(self.app(self.scope, self.receive, self.send))

    @property
    def status(self):
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)


async def _lifespan(app):
    """Start the app's lifespan (catalog learned) and return a stopper."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    msg = await asyncio.wait_for(outbox.get(), 10)
    assert msg["type"] == "lifespan.startup.complete", msg

    async def stop():
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), 10)
        await task
    return stop


async def entered(fake: FakeBackend) -> None:
    """Until the fake Triton has a call in hand."""
    assert await eventually(fake.entered.is_set, 2), "the fake Triton never got the call"


async def consumed(call: "Call") -> None:
    """Until the app has taken every chunk fed so far (or answered)."""
    assert await eventually(lambda: call.inbox.empty() or call.status is not None, 2), "the app stopped reading"


def in_use(app) -> float:
    m = re.search(r"^visionserve_gateway_memory_in_use_bytes (\S+)$", metrics_text(app), re.M)
    return float(m.group(1))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- clients that hang up ---------------------------------------------------------------
def hang_up(app, body: bytes, declared: int, fake: FakeBackend | None = None):
    """A POST /v1/detect announcing `declared` bytes that sends `body` and hangs up: at
    once, or (`fake` given, the body complete) once its Triton call is in hand.
    Returns (the call, the metrics text)."""
    async def go():
        stop = await _lifespan(app)
        call = Call(app, "/v1/detect", [("content-type", "image/jpeg"),
                                        ("content-length", str(declared))])
        task = call.run()
        call.feed(body, more=len(body) < declared)
        if fake is not None:
            await entered(fake)
        else:
            await consumed(call)
        call.hang_up()
        await asyncio.wait_for(task, 5)
        text = metrics_text(app)
        await stop()
        return call, text

    return run(go())


def test_upload_cut_mid_body_is_not_a_5xx():
    """The client announces 20 MB, sends 1 MB and hangs up: no response is owed, no
    5xx in the metrics, a disconnect counted apart."""
    app = create_app(settings(), backend=FakeBackend())
    call, text = hang_up(app, b"\xff\xd8\xff" + b"0" * MiB, 20 * MiB)
    assert call.status is None or call.status < 500
    statuses = {k[1] for k in series(text, "requests_total")}
    assert not any(s.startswith("5") for s in statuses), statuses
    assert series(text, "client_disconnects_total") == {("/v1/detect", "body"): 1.0}
    assert "visionserve_gateway_in_flight_requests 0.0" in text


def test_client_gone_while_waiting_for_triton_cancels_the_call():
    fake = FakeBackend()
    fake.hold.clear()
    cancelled = threading.Event()
    real_infer = fake.infer

    async def infer(*a, **kw):
        try:
            return await real_infer(*a, **kw)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    fake.infer = infer
    app = create_app(settings(), backend=fake)
    call, text = hang_up(app, JPEG, len(JPEG), fake)
    assert cancelled.is_set(), "the Triton call was not cancelled when the client left"
    assert call.status is None
    assert series(text, "client_disconnects_total") == {("/v1/detect", "response"): 1.0}
    assert not any(k[1].startswith("5") for k in series(text, "requests_total"))


# -- labels ------------------------------------------------------------------------------
def test_random_paths_add_no_label_values():
    with TestClient(create_app(settings(), backend=FakeBackend())) as c:
        c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg"})
        before = series(metrics_text(c.app), "requests_total")
        rng = np.random.default_rng(0)
        for _ in range(50):
            assert c.get(f"/v1/{rng.bytes(8).hex()}").status_code == 404
            assert c.post(f"/{rng.bytes(4).hex()}/x").status_code == 404
        after = series(metrics_text(c.app), "requests_total")
    routes = {k[0] for k in after}
    assert routes <= {"/v1/detect", "unmatched"}, routes
    assert len(after) <= len(before) + 1
    assert after[("unmatched", "404")] == 100


# -- the memory budget -------------------------------------------------------------------
def test_declared_body_over_the_budget_is_shed_before_reading():
    """Content-Length that does not fit in what is left of the budget: 503 + Retry-After
    without a byte of the body read; over the per-request limit: 413."""
    fake = FakeBackend()
    fake.hold.clear()
    app = create_app(settings(memory_budget_bytes=6 * MiB, max_body_bytes=5 * MiB,
                              retry_after_s=3), backend=fake)

    async def go():
        stop = await _lifespan(app)
        first = Call(app, "/v1/detect", [("content-type", "image/jpeg"),
                                         ("content-length", str(len(JPEG)))])
        t1 = first.run()
        first.feed(JPEG, more=False)
        await entered(fake)
        # holds its body and a 640x640 frame (1.2 MB): 5 MiB more does not fit in 6 MiB
        second = Call(app, "/v1/detect", [("content-type", "image/jpeg"),
                                          ("content-length", str(5 * MiB))])
        t2 = second.run()
        await asyncio.wait_for(t2, 2)     # answered without feeding any body
        third = Call(app, "/v1/detect", [("content-type", "image/jpeg"),
                                         ("content-length", str(5 * MiB + 1))])
        await asyncio.wait_for(third.run(), 2)
        fake.hold.set()
        await asyncio.wait_for(t1, 5)
        text = metrics_text(app)
        await stop()
        return first, second, third, text

    first, second, third, text = run(go())
    assert first.status == 200
    assert second.status == 503
    headers = dict(second.sent[0]["headers"])
    assert headers[b"retry-after"] == b"3"
    assert b"gateway_overloaded" in second.sent[1]["body"]
    assert third.status == 413 and b"payload_too_large" in third.sent[1]["body"]
    assert "visionserve_gateway_memory_in_use_bytes 0.0" in text


def test_streamed_body_is_charged_while_it_arrives():
    """No Content-Length (chunked): the budget is charged chunk by chunk and a body that
    overruns it is answered 503 mid-stream."""
    app = create_app(settings(memory_budget_bytes=4 * MiB, max_body_bytes=3 * MiB),
                     backend=FakeBackend())

    async def go():
        stop = await _lifespan(app)
        holder, streamer = (Call(app, "/v1/detect", [("content-type", "image/jpeg")])
                            for _ in range(2))
        tasks = [holder.run(), streamer.run()]
        holder.feed(b"\xff" * (5 * MiB // 2))   # holds 2.5 MiB, not done yet
        assert await eventually(lambda: in_use(app) == 5 * MiB // 2, 2), in_use(app)
        for i in range(4):                       # 0.5 MiB at a time: over the budget (less the
            streamer.feed(b"\xff" * (MiB // 2))   # decoding headroom) before the 4th
            await consumed(streamer)
            assert streamer.status == (None if i == 0 else streamer.status), (i, in_use(app))
        assert streamer.status == 503
        holder.feed(b"", more=False)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        text = metrics_text(app)
        await stop()
        return holder, streamer, text

    holder, streamer, text = run(go())
    assert b"gateway_overloaded" in streamer.sent[1]["body"]
    assert holder.status == 415        # read whole (and it is no image)
    assert "visionserve_gateway_memory_in_use_bytes 0.0" in text


def test_in_flight_default_follows_from_the_budget():
    s = settings(memory_budget_bytes=64 * MiB)
    assert s.in_flight_limit == s.memory_budget_bytes // s.typical_request_bytes
    assert settings(max_in_flight=3).in_flight_limit == 3
    assert GatewaySettings().memory_budget_bytes <= 600 * MiB   # a 1 GiB pod, with room


def test_a_gateway_bug_is_still_a_counted_500():
    fake = FakeBackend()
    fake.fail = ZeroDivisionError("a bug")
    with TestClient(create_app(settings(), backend=fake), raise_server_exceptions=False) as c:
        r = c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert series(metrics_text(c.app), "requests_total") == {("/v1/detect", "500"): 1.0}
