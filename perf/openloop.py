"""Open-loop HTTP load with a raw asyncio client, and what a process holds (RSS, fds).

Used by `make soak` (perf/soak.py) and the gateway's overload/abuse tests. The client
speaks just enough HTTP/1.1 (one request per connection) to do what httpx cannot:
time the status line of an answer that comes before the body was sent, stop sending
when it does, and hang up mid-body on purpose.

    rec = await request("127.0.0.1", 8080, "/v1/detect", body, headers={...})
    recs = await open_loop(lambda: request(...), rate=28.0, seconds=20)
"""
from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 256 * 1024


@dataclass
class Record:
    """One request: status (None: no answer), when its status line came (seconds after
    the request started), when it finished, and the answer's headers."""
    status: int | None
    first_s: float | None
    total_s: float
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    sent: int = 0
    started: float = 0.0      # time.perf_counter() when the request began (CLOCK_MONOTONIC)

    @property
    def code(self) -> str:
        """The gateway's stable error code of a refusal ("" when there is none)."""
        if self.status == 200 or b'"code":"' not in self.body:
            return ""
        return self.body.split(b'"code":"')[1].split(b'"')[0].decode()


async def request(host: str, port: int, path: str, body: bytes | memoryview = b"", *,
                  method: str = "POST", headers: dict | None = None, declared: int | None = None,
                  cut_after: int | None = None, timeout_s: float = 60.0,
                  keep_alive: bool = False) -> Record:
    """One HTTP/1.1 request on its own connection. `declared`: the Content-Length sent
    (default len(body)); `cut_after`: close the connection after that many body bytes;
    `keep_alive`: do not ask the server to close after its answer (as HTTP clients do by
    default: a server that answers before reading a big body then reads the rest instead
    of closing on it, which can reset the connection before the answer is read)."""
    t0 = time.perf_counter()
    body = memoryview(body)
    length = len(body) if declared is None else declared
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Connection: {'keep-alive' if keep_alive else 'close'}",
            f"Content-Length: {length}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        return Record(None, None, time.perf_counter() - t0, error=f"connect: {exc}", started=t0)
    rec = Record(None, None, 0.0, started=t0)
    answer = asyncio.ensure_future(_read_answer(reader, rec, t0))
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        stop = len(body) if cut_after is None else min(cut_after, len(body))
        while rec.sent < stop and not answer.done():
            piece = body[rec.sent:min(stop, rec.sent + CHUNK)]
            writer.write(piece)
            await writer.drain()
            rec.sent += len(piece)
        if cut_after is not None:
            # hang up mid-body: a FIN after what was sent (a RST could make the kernel
            # drop what the server has not read yet, so it would never see the request)
            writer.close()
            await writer.wait_closed()
            answer.cancel()
            rec.error = "cut"
        else:
            await asyncio.wait_for(asyncio.shield(answer), timeout_s)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        # the server answered early and closed while we were still sending: the answer
        # may still be readable
        if not answer.done():
            try:
                await asyncio.wait_for(asyncio.shield(answer), 2.0)
            except Exception:
                pass
        if rec.status is None:
            rec.error = rec.error or f"{type(exc).__name__}: {exc}"
    finally:
        if not answer.done():
            answer.cancel()
        writer.close()
    rec.total_s = time.perf_counter() - t0
    return rec


async def _read_answer(reader: asyncio.StreamReader, rec: Record, t0: float) -> None:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)
    rec.first_s = time.perf_counter() - t0
    rec.status = int(status_line.split()[1])
    while True:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        key, _, value = line.partition(":")
        rec.headers[key.strip().lower()] = value.strip()
    n = int(rec.headers.get("content-length", "0") or 0)
    rec.body = await reader.readexactly(n) if n else b""


async def open_loop(make, rate: float, seconds: float, seed: int = 0,
                    poisson: bool = True) -> list[Record]:
    """Start `make()` (a coroutine returning a Record) at `rate` per second for
    `seconds` (Poisson arrivals, or evenly spaced), whatever the answers do; wait for
    all of them."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks, t = [], 0.0
    collecting = gc.isenabled()
    gc.disable()   # a full collection of the records kept so far would stall the clock
    try:
        while True:
            t += rng.expovariate(rate) if poisson else 1.0 / rate
            if t >= seconds:
                break
            delay = start + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(make()))
        return list(await asyncio.gather(*tasks))
    finally:
        if collecting:
            gc.enable()


# -- what a process holds ------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> list[str]:
    """What each open file descriptor of `pid` points to."""
    out = []
    folder = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(folder):
        try:
            out.append(os.readlink(folder / fd))
        except FileNotFoundError:   # closed while we looked
            pass
    return out


class Sampler:
    """RSS and the fds under a folder of a process, sampled every `every_s` in the
    background while a load runs: `peak_rss`, and every path seen open under `watch`."""

    def __init__(self, pid: int, watch: str | None = None, every_s: float = 0.05):
        self.pid, self.watch, self.every_s = pid, watch, every_s
        self.peak_rss = 0
        self.seen: set[str] = set()
        self._task: asyncio.Task | None = None

    async def _run(self):
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
        if self.watch:
            self.seen.update(p for p in open_fds(self.pid) if p.startswith(self.watch))

    def __enter__(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()
        self.sample()


# -- CPU taken from this machine ----------------------------------------------------
_WATCH = """
import sys, time
every, least = float(sys.argv[1]), float(sys.argv[2])
def read():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v[:8]), v[7]
t0, (total0, steal0) = time.monotonic(), read()
while True:
    time.sleep(every)
    t1, (total1, steal1) = time.monotonic(), read()
    share = (steal1 - steal0) / max(1, total1 - total0)
    print(f"{t0:.6f} {t1:.6f} {share:.4f}", flush=True)
    t0, total0, steal0 = t1, total1, steal1
"""


class StealWatch:
    """A separate process that reads this machine's CPU steal (/proc/stat: time the
    hypervisor ran something else while this VM wanted its CPUs) every `every_s`. On the
    small shared VMs this runs on, a neighbour takes up to a third of the CPU for tens of
    seconds (measured: 20-30% steal in the windows where a soak at 0.7 x C lost
    requests, 1-5% in the windows where it lost none); the fixed-time stand-ins and the
    gateway then run late whatever the gateway does. A load test reports which of its
    slow or failed answers came in an interval with at least `least` of the CPU stolen
    (`during`) and counts only the others against the code. Times are CLOCK_MONOTONIC,
    as Record.started (perf_counter) on Linux."""

    def __init__(self, every_s: float = 0.5, least: float = 0.1):
        self.args, self.least = [str(every_s), str(least)], least
        self.intervals: list[tuple[float, float, float]] = []     # (start, end, share)
        self._proc = None

    def __enter__(self):
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, "-c", _WATCH, *self.args],
                                      stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.intervals = [tuple(map(float, line.split())) for line in out.splitlines()]

    @property
    def stolen(self) -> list[tuple[float, float, float]]:
        return [i for i in self.intervals if i[2] >= self.least]

    def during(self, rec: Record, before_s: float = 0.0) -> float:
        """The largest share of CPU stolen in an interval that overlapped `rec` or ended
        at most `before_s` before it began (what queued meanwhile drains after it);
        0.0: none over `least`."""
        end = rec.started + rec.total_s
        return max((share for t0, t1, share in self.stolen
                    if t0 < end and t1 > rec.started - before_s), default=0.0)

    def unexplained(self, records, before_s: float = 0.0) -> list:
        """Those of `records` that no steal interval (see `during`) accounts for."""
        return [r for r in records if not self.during(r, before_s)]

    @property
    def quiet_share(self) -> float:
        """The share of the watched time with less than `least` of the CPU stolen."""
        total = sum(t1 - t0 for t0, t1, _ in self.intervals)
        return 1.0 - sum(t1 - t0 for t0, t1, _ in self.stolen) / total if total else 1.0

    def summary(self) -> str:
        if not self.intervals:
            return "CPU steal not measured"
        peak = max(share for _, _, share in self.intervals)
        return (f"{1 - self.quiet_share:.0%} of the time with >= {self.least:.0%} of the CPU "
                f"stolen by the hypervisor (peak {peak:.0%})")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]
