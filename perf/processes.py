"""The processes the gateway benchmarks start (gateway, naive baseline), waited for, loaded
with closed-loop HTTP requests and stopped, for bench_gateway, bench_fleet and gatewayproc."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from contract import REPO_ROOT


class BenchError(RuntimeError):
    """Something the user can fix (a model not exported, a server that did not start)."""


def start_process(cmd, log: Path, **env_extra) -> subprocess.Popen:
    # the gateway's per-call deadline matches the baseline's 300 s client timeout
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VISIONSERVE_GATEWAY_TRITON_TIMEOUT_S="300",
               **env_extra)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{url} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise BenchError(f"{url} not ready after {timeout_s:.0f}s")


async def http_load(url: str, data: bytes, concurrency: int, seconds: float, warmup: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        headers = {"content-type": "image/jpeg"}
        await asyncio.gather(*(client.post(url, content=data, headers=headers)
                               for _ in range(warmup)))
        latencies, errors = [], 0
        stop_at = time.monotonic() + seconds

        async def worker():
            nonlocal errors
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = await client.post(url, content=data, headers=headers)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - t0


def stop_process(proc: subprocess.Popen | None, wait_s: float = 15) -> None:
    """SIGINT (the gateway shuts down gracefully), SIGKILL after `wait_s`."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
