"""HTTP load through the gateway: single-request, burst and sustained scenarios, SLA verdict.

    python -m perf.bench_pipelines --routes faces,detect,detect:centernet --sla-p95-ms 500

A production team's SLA report: for each route and scenario, p50/p95/p99, throughput,
errors, and PASS when p95 <= target and no request failed. Every scenario is bounded in
requests and seconds; the gateway must be on loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import scene

from contract import defaults

from . import report
from .errors import PerfError, ServerUnavailable, UsageError
from .net import require_loopback
from .record import ResultRecord

TEXT_BODY = b'{"texts": ["a photo of an astronaut", "a red car parked on a street"]}'


@dataclass(frozen=True)
class Scenarios:
    single: int = 20            # sequential requests
    burst: int = 16             # requests fired together ...
    burst_rounds: int = 3       # ... this many times
    rate: float = 5.0           # sustained: requests/s offered (open loop)
    seconds: float = 10.0       # sustained duration, and the cap on any scenario
    max_in_flight: int = 64     # sustained: beyond this, requests count as errors (shed)
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Target:
    path: str                   # what is posted to: the route, with ?model= for a non-default model
    text: bool                  # the model takes strings (a JSON body of texts), else an image


def targets(table=None) -> dict[str, Target]:
    """Every model a gateway route calls (contract/routes.py), named by the route's key, and
    `key:choice` for a route's other models ("detect:centernet")."""
    from contract.routes import route_table

    table = table or route_table()
    out = {}
    for r in table.routes:
        if r.pair:   # a compare route runs its models as its base route does: measured there
            continue
        for m in r.models:
            name = r.key if m is r.default else f"{r.key}:{m.choice}"
            spec = table.contracts[m.model].inputs[0]
            out[name] = Target(r.endpoint(m.model), spec.dtype == np.object_)
    return out


def _request_args(target: Target, image: bytes) -> dict:
    if target.text:
        return {"content": TEXT_BODY, "headers": {"content-type": "application/json"}}
    return {"content": image, "headers": {"content-type": "image/jpeg"}}


class _Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.status: Counter = Counter()
        self.errors = 0
        self.first_error = ""

    def add(self, status: int | str, seconds: float) -> None:
        self.status[str(status)] += 1
        if status == 200:
            self.latencies.append(seconds)
        else:
            self.errors += 1


async def _one(client, url: str, args: dict, tally: _Tally, bar) -> None:
    t0 = time.perf_counter()
    try:
        resp = await client.post(url, **args)
        tally.add(resp.status_code, time.perf_counter() - t0)
        if resp.status_code != 200 and not tally.first_error:
            tally.first_error = f"{resp.status_code}: {resp.text[:200]}"
    except Exception as exc:  # httpx transport errors and timeouts count as failures
        tally.add(type(exc).__name__, time.perf_counter() - t0)
        tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"[:200]
    if bar is not None:
        bar.update(1)


async def _scenario(client, url, args, name: str, sc: Scenarios, bar) -> tuple[_Tally, float, int, float | None]:
    """(tally, elapsed, concurrency, offered rate) for one scenario."""
    tally = _Tally()
    t0 = time.monotonic()
    deadline = t0 + sc.seconds
    if name == "single":
        for _ in range(sc.single):
            if time.monotonic() > deadline:
                break
            await _one(client, url, args, tally, bar)
        return tally, time.monotonic() - t0, 1, None
    if name == "burst":
        for _ in range(sc.burst_rounds):
            if time.monotonic() > deadline:
                break
            await asyncio.gather(*(_one(client, url, args, tally, bar) for _ in range(sc.burst)))
        return tally, time.monotonic() - t0, sc.burst, None
    # sustained, open loop: request i is due at t0 + i/rate whether or not earlier ones returned
    total = int(sc.rate * sc.seconds)
    tasks = []
    in_flight = 0

    async def tracked():
        nonlocal in_flight
        in_flight += 1
        try:
            await _one(client, url, args, tally, bar)
        finally:
            in_flight -= 1

    for i in range(total):
        delay = t0 + i / sc.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= sc.max_in_flight:
            tally.add("shed", 0.0)
            bar is not None and bar.update(1)
            continue
        tasks.append(asyncio.create_task(tracked()))
    await asyncio.gather(*tasks)
    return tally, time.monotonic() - t0, 0, sc.rate


def _count(name: str, sc: Scenarios) -> int:
    return {"single": sc.single, "burst": sc.burst * sc.burst_rounds}.get(name, int(sc.rate * sc.seconds))


async def bench(base_url: str, routes: list[str], scenarios: list[str], sc: Scenarios, image: bytes,
                progress: bool = True) -> list[ResultRecord]:
    import httpx
    from tqdm import tqdm

    require_loopback(base_url)
    limits = httpx.Limits(max_connections=max(sc.burst, sc.max_in_flight) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=sc.timeout_s, limits=limits) as client:
        try:
            ready = await client.get("/readyz", timeout=10)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"no gateway answered at {base_url}: {exc}") from exc
        if ready.status_code != 200:
            raise ServerUnavailable(f"gateway at {base_url} is not ready: {ready.status_code} {ready.text[:200]}")
        records = []
        known = targets()
        for route in routes:
            if route not in known:
                raise UsageError(f"unknown route {route!r}; known: {', '.join(known)}")
            target = known[route]
            args = _request_args(target, image)
            await _one(client, target.path, args, _Tally(), None)  # warm the path
            for name in scenarios:
                bar = tqdm(total=_count(name, sc), desc=f"{route} {name}", unit="req", leave=False,
                           disable=not progress)
                tally, elapsed, conc, rate = await _scenario(client, target.path, args, name, sc, bar)
                bar.close()
                records.append(_record(route, target.path, name, tally, elapsed, conc, rate))
        return records


def _record(route, path, name, tally: _Tally, elapsed, conc, rate) -> ResultRecord:
    ms = np.asarray(tally.latencies) * 1000.0
    pct = np.percentile(ms, [50, 90, 95, 99]) if len(ms) else [float("nan")] * 4
    extra = {"status": dict(tally.status), "route": path}
    if tally.first_error:
        extra["first_error"] = tally.first_error
    return ResultRecord(tool="bench_pipelines", target=route, batch=1, concurrency=conc, scenario=name,
                        request_rate=rate, throughput=len(ms) / elapsed if elapsed else 0.0,
                        p50_ms=float(pct[0]), p90_ms=float(pct[1]), p95_ms=float(pct[2]), p99_ms=float(pct[3]),
                        avg_ms=float(ms.mean()) if len(ms) else None,
                        requests=len(ms) + tally.errors, errors=tally.errors, duration_s=elapsed, extra=extra)


def verdicts(records: list[ResultRecord], sla_p95_ms: float) -> list[tuple[ResultRecord, bool, str]]:
    out = []
    for r in records:
        ok_p95 = r.p95_ms == r.p95_ms and r.p95_ms <= sla_p95_ms   # NaN (no success) fails
        ok = ok_p95 and r.errors == 0
        why = "PASS" if ok else "FAIL: " + ", ".join(
            w for w, bad in ((f"p95 {r.p95_ms:.1f} ms > {sla_p95_ms:g} ms", not ok_p95),
                             (f"{r.errors} errors", r.errors > 0)) if bad)
        out.append((r, ok, why))
    return out


def sla_table(rows) -> str:
    lines = ["| route | scenario | requests | p95 ms | errors | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.target} | {r.scenario} | {r.requests} | {r.p95_ms:.1f} | {r.errors} | {why} |"
              for r, _, why in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_pipelines", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=defaults.GATEWAY_URL, help="gateway base URL (loopback only)")
    ap.add_argument("--routes", default=None, help="comma list of the contract's route models (default: all: "
                    + ", ".join(targets()) + ")")
    ap.add_argument("--scenarios", default="single,burst,sustained")
    ap.add_argument("--image", type=Path, help="JPEG to send (default: export.scene's 1280x720 q90 frame: a face, objects, text)")
    ap.add_argument("--sla-p95-ms", type=float, default=500.0)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--burst-rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=5.0, help="sustained requests/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="sustained length; cap on every scenario")
    ap.add_argument("--name", default="bench-pipelines")
    ap.add_argument("--reports", type=Path, default=report.REPORTS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    sc = Scenarios(single=a.single, burst=a.burst, burst_rounds=a.burst_rounds, rate=a.rate, seconds=a.seconds)
    scen = [s for s in a.scenarios.split(",") if s]
    try:
        bad = [s for s in scen if s not in ("single", "burst", "sustained")]
        if bad:
            raise UsageError(f"unknown scenario(s) {bad}; known: single, burst, sustained")
        image = a.image.read_bytes() if a.image else scene.scene_jpeg(720, 1280)
        routes = [r for r in a.routes.split(",") if r] if a.routes else list(targets())
        records = asyncio.run(bench(a.url, routes, scen, sc, image,
                                    progress=not a.no_progress))
    except (PerfError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = verdicts(records, a.sla_p95_ms)
    out = report.new_dir(a.name, a.reports)
    meta = {"tool": "bench_pipelines (HTTP through the gateway, httpx)", "gateway": a.url,
            "image": str(a.image or "export.scene 1280x720 q90 (faces, objects, text)"),
            "SLA": f"p95 <= {a.sla_p95_ms:g} ms, 0 errors",
            "scenarios": f"single {sc.single} sequential; burst {sc.burst} x {sc.burst_rounds}; "
                         f"sustained {sc.rate:g}/s for {sc.seconds:g} s",
            "verdict": "PASS" if all(ok for _, ok, _ in rows) else "FAIL",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report.write(out, "bench_pipelines: SLA report", records, meta, {"SLA verdict": sla_table(rows)})
    print(sla_table(rows))
    print(f"\nreport: {out}/summary.md")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
