"""A request's decodes end with the request (issue 20): when one image fails, at the
decode deadline, or when the request is cancelled, the decodes not started are
cancelled and the running ones awaited before the answer; nothing decodes on after
it. And the one decode-cost formula: the budget headroom is computed by it."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

import imaging
from gateway import service
from gateway.app import create_app, decode_headroom
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend
from tests.unit import crafted_images as crafted

GOOD = crafted.jpeg(crafted.gradient(96, 128))
CUT = GOOD[:len(GOOD) // 3]      # header intact, data cut: fails in the decoder


class Watch:
    """imaging.decode_into as the service calls it, slowed for good images, counting
    the decodes started and those running right now."""

    def __init__(self, monkeypatch, seconds: float):
        self.started = self.running = self.finished_after = 0
        self.answered = False
        self.lock = threading.Lock()
        real = imaging.decode_into

        def slow(data, *a, **kw):
            with self.lock:
                self.started += 1
                self.running += 1
            try:
                if bytes(data[-2:]) == b"\xff\xd9":
                    time.sleep(seconds)
                return real(data, *a, **kw)
            finally:
                with self.lock:
                    self.running -= 1
                    self.finished_after += self.answered

        monkeypatch.setattr(service.imaging, "decode_into", slow)


def client(**kw) -> TestClient:
    return TestClient(create_app(GatewaySettings(startup_wait_s=0, metrics_port=0, **kw),
                                 backend=FakeBackend()))


def post(c, images):
    body, ctype = crafted.multipart([("images", f"{i}.jpg", d) for i, d in enumerate(images)])
    return c.post("/v1/detect", content=body, headers={"content-type": ctype})


def test_a_failed_image_stops_its_siblings_before_the_answer(monkeypatch):
    watch = Watch(monkeypatch, 0.3)
    with client(decode_threads=2) as c:
        r = post(c, [CUT] + [GOOD] * 6)
        running_at_answer = watch.running
        watch.answered = True
        time.sleep(0.8)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_image")
    assert running_at_answer == 0
    assert watch.started <= 3, f"{watch.started} decodes started for a request that failed"
    assert watch.finished_after == 0


def test_decodes_not_started_by_the_deadline_are_cancelled_and_refused(monkeypatch):
    watch = Watch(monkeypatch, 0.4)
    with client(decode_threads=2, decode_timeout_s=0.1, retry_after_s=3) as c:
        r = post(c, [GOOD] * 6)
        running_at_answer = watch.running
    assert (r.status_code, r.json()["error"]["code"]) == (503, "gateway_overloaded")
    assert r.headers["retry-after"] == "3"
    assert running_at_answer == 0 and watch.started == 2


def test_a_cancelled_request_awaits_its_running_decodes():
    pool = ThreadPoolExecutor(2)
    running = threading.Event()
    release = threading.Event()

    def work():
        running.set()
        release.wait(5)

    futures = [pool.submit(work) for _ in range(5)]

    async def run():
        task = asyncio.ensure_future(service.settle(futures, 30, lambda: None))
        await asyncio.get_running_loop().run_in_executor(None, running.wait, 5)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done(), "the request ended while its decodes were running"
        task.cancel()                 # cancelled again: still waits for them
        await asyncio.sleep(0.1)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert sum(f.cancelled() for f in futures) == 3
    assert all(f.done() for f in futures)
    pool.shutdown()


def test_the_headroom_is_the_charge_of_a_worst_request():
    s = GatewaySettings(startup_wait_s=0, max_images=4, decode_threads=2,
                        memory_budget_bytes=2**40)
    fh = fw = 640    # the largest route frame in the contract
    header = imaging.ImageHeader("jpeg", 2 * fw - 2, 2 * fh - 2)
    cost = imaging.decode_cost(header, imaging.plan_letterbox(2 * fw - 2, 2 * fh - 2, fw, fh))
    # four frames twice (the gRPC copy) and two full-size decodes at once
    assert decode_headroom(s) == service.decoding_bytes([cost] * 4, (fh, fw), 2, True)
    assert cost >= 3 * (2 * fw - 2) * (2 * fh - 2)
