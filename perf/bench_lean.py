"""`make bench-lean`: what LeanRoute saves, side by side in ONE run.

    python -m perf.bench_lean [--requests 2000] [--rounds 5]

The same app (gateway/app.py with the fake Triton of gateway/testing.py, so only the
gateway's own work is timed) answers POST /v1/detect through LeanRoute and through
FastAPI's own request handler (LeanRoute hands every request to it while
app.dependency_overrides is not empty: here an override of a dependency no route uses).
The two are interleaved round by round; printed: CPU microseconds per request of each
(median of the rounds), for a 1280x720 JPEG and a 64x48 one, and the difference.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time

import numpy as np


def jpeg(w: int, h: int) -> bytes:
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (h // 8, w // 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img.repeat(8, 0).repeat(8, 1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def _one(app, body: bytes, query: bytes) -> int:
    """One request through the app's ASGI callable; its status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/detect", "raw_path": b"/v1/detect", "root_path": "",
             "query_string": query, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080),
             "headers": [(b"content-type", b"image/jpeg"),
                         (b"content-length", str(len(body)).encode())]}
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive():
        if sent:
            return sent.pop()
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def _unused_dependency():   # overridden to switch LeanRoute to FastAPI's handler
    return None


async def _round(app, body, n) -> float:
    t0 = time.process_time()
    for _ in range(n):
        status = await _one(app, body, b"score_threshold=0.3&max_results=50")
        assert status == 200, status
    return (time.process_time() - t0) / n * 1e6


async def _run(requests: int, rounds: int) -> dict:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from gateway.testing import FakeBackend

    app = create_app(GatewaySettings(startup_wait_s=0, decode_threads=1), backend=FakeBackend())
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    await outbox.get()
    out = {}
    try:
        for name, body in (("1280x720", jpeg(1280, 720)), ("64x48", jpeg(64, 48))):
            lean, full = [], []
            for _ in range(rounds):
                app.dependency_overrides.clear()
                lean.append(await _round(app, body, requests))
                app.dependency_overrides[_unused_dependency] = _unused_dependency
                full.append(await _round(app, body, requests))
            app.dependency_overrides.clear()
            out[name] = {"lean_us": statistics.median(lean), "fastapi_us": statistics.median(full)}
    finally:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await outbox.get()
        await life
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_lean", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    result = asyncio.run(_run(a.requests, a.rounds))
    for name, r in result.items():
        saved = r["fastapi_us"] - r["lean_us"]
        print(f"{name:9s} JPEG: LeanRoute {r['lean_us']:7.1f} us/request, FastAPI's handler "
              f"{r['fastapi_us']:7.1f} us/request: LeanRoute saves {saved:6.1f} us "
              f"({saved / r['fastapi_us']:.1%} of the gateway's CPU per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
