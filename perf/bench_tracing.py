"""`make bench-tracing`: what tracing costs the gateway, side by side in ONE run.

    python -m perf.bench_tracing [--requests 1000] [--rounds 3]

The bench-lean driver (perf/bench_lean.py: the app on the fake Triton, requests through
its ASGI callable, process CPU time) on three apps, interleaved round by round:
`off` (the default: no middleware, null spans), `on, sampled` (every request traced: 6
spans exported in batches by the SDK's thread, whose CPU counts, to an OTLP/HTTP sink in
another process) and `on, unsampled` (tracing on, trace_sample_rate=0: the middleware
and non-recording spans only). Printed: CPU microseconds per request (median of the
rounds) for a 1280x720 and a 64x48 JPEG, and each `on` minus `off`.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys

from .bench_lean import _round, jpeg

# The OTLP/HTTP sink: reads each export and answers 200 (its CPU is not the gateway's).
SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


async def _started(app):
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    await outbox.get()
    return inbox, outbox, life


async def _run(requests: int, rounds: int, sink_url: str) -> dict:
    from gateway import tracing
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from gateway.testing import FakeBackend

    settings = GatewaySettings(startup_wait_s=0, decode_threads=1)
    states = {"off": (None, None)}
    apps = {"off": create_app(settings, backend=FakeBackend())}
    for name, rate in (("on, unsampled", 0.0), ("on, sampled", 1.0)):
        tracing.configure(sink_url, rate)
        apps[name] = create_app(settings, backend=FakeBackend())   # with the middleware
        states[name] = (tracing._tracer, tracing._provider)
        tracing._provider = None          # kept alive: the next configure must not shut it
    lives = [await _started(a) for a in apps.values()]
    out = {}
    try:
        for size, body in (("1280x720", jpeg(1280, 720)), ("64x48", jpeg(64, 48))):
            times: dict[str, list[float]] = {n: [] for n in apps}
            for _ in range(rounds):
                for name, app in apps.items():
                    tracing._tracer, tracing._provider = states[name]
                    times[name].append(await _round(app, body, requests))
            out[size] = {n: statistics.median(t) for n, t in times.items()}
    finally:
        tracing._tracer = tracing._provider = None
        for inbox, outbox, life in lives:
            inbox.put_nowait({"type": "lifespan.shutdown"})
            await outbox.get()
            await life
        for _, provider in states.values():
            if provider is not None:
                provider.shutdown()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_tracing", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000, help="requests per round and app")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(sink.stdout.readline())}"
        result = asyncio.run(_run(a.requests, a.rounds, url))
    finally:
        sink.terminate()
        sink.wait(10)
    for size, r in result.items():
        off = r["off"]
        print(f"{size:9s} JPEG: off {off:7.1f} us/request | " + " | ".join(
            f"{n} {v:7.1f} (+{v - off:5.1f} us, {(v - off) / off:+.1%})" for n, v in r.items() if n != "off"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
