"""`make soak`: the gateway and a Triton of fixed-time stand-ins at 0.7 x C for a while,
and what the gateway holds before and after.

    python -m perf.soak [--seconds 600] [--fraction 0.7] [--json FILE]

Triton serves a yolo stand-in (serving/standins.py: 50 ms per batch of at most 4, one
instance: C = 80 requests/s whatever this machine's cores); the gateway sends image
tensors through shared memory (as `make run` does) so its slot pool is exercised. The
load is evenly spaced small JPEGs to /v1/detect. Printed: requests, errors (anything but
200), latency, and at the start (after a warm-up) and the end: gateway RSS, open file
descriptors (shm slot files apart), shared-memory slots. Exit status 0 when the run
held: errors only while the hypervisor took >= 10% of this VM's CPU (STEAL_BEFORE_S;
counted and printed apart) and at most 0.1% of the requests otherwise, RSS grew under 5%,
fds not above where they started, every slot free again
(none in use or retired; the pool may grow to its working size within its byte bound).
A run with under half of its time free of such steal is not judged.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from contract import REPO_ROOT
from serving import standins
from serving.tritonserver import TritonServer, free_port

from . import openloop
from .gatewayproc import Gateway

WORK = REPO_ROOT / "build" / "soak"
BATCH_MS, MAX_BATCH = 50, 4
CAPACITY = MAX_BATCH / (BATCH_MS / 1000)     # requests/s of one stand-in instance
WARMUP_S = 15.0
RSS_GROWTH = 0.05
# an error is the machine's, not the code's, only when >= 10% of this VM's CPU was stolen
# by the hypervisor (openloop.StealWatch) during it or at most 0.5 s before it (the backlog
# of a 0.7 x C load drains at 0.3 x C afterwards). The others may be at most
# UNEXPLAINED of the requests: shorter stalls (a single vCPU taken for ~100 ms) hide in the
# 0.5 s steal windows (10-min soak, 2026-11-28: 9 of 33,590 requests, 0.027%, none in 5 of
# its 10 minutes); a gateway that sheds or loses requests by itself fails far above it. A
# run with less than QUIET_SHARE of its time free of steal cannot tell them apart.
STEAL_BEFORE_S = 0.5
UNEXPLAINED = 0.001
QUIET_SHARE = 0.5


def small_jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def holdings(gw: Gateway) -> dict:
    """What the gateway process holds now."""
    fds = openloop.open_fds(gw.pid)
    slots = gw.series("shm_slots")
    return {"rss_bytes": openloop.rss_bytes(gw.pid),
            "fds": len([f for f in fds if not f.startswith("/dev/shm/")]),
            "shm_files": len([f for f in fds if f.startswith("/dev/shm/")]),
            "shm_slots": {k[0]: int(v) for k, v in slots.items()}}


async def _drive(gw: Gateway, rate: float, seconds: float, body: bytes, progress=None):
    """Evenly spaced requests for `seconds`, in one-minute rounds (progress printed)."""
    records, done = [], 0.0
    while done < seconds:
        step = min(60.0, seconds - done)
        records += await openloop.open_loop(
            lambda: openloop.request("127.0.0.1", gw.port, "/v1/detect", body,
                                     headers={"Content-Type": "image/jpeg"}, timeout_s=30),
            rate, step, poisson=False)
        done += step
        if progress:
            progress(done, records)
    return records


def settled_holdings(gw: Gateway, quiet_s: float = 0.5, timeout_s: float = 5.0) -> dict:
    """holdings() once its fds and slots held still for `quiet_s` (the last answers' slots given
    back, the load's connections closed on both sides): the start and the end of a run are
    read alike, so a connection still closing at one of them is not a leak."""
    last, since, t0 = holdings(gw), time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(0.1)
        now = holdings(gw)
        if {k: now[k] for k in ("fds", "shm_files", "shm_slots")} != \
                {k: last[k] for k in ("fds", "shm_files", "shm_slots")}:
            since = time.monotonic()
        last = now
        if time.monotonic() - since >= quiet_s:
            break
    return last


def slots_flat(end: dict) -> bool:
    """No slot leaked: every one free again (none in use, none retired) and an open slot
    file for each (the pool may have grown to its working size, within its byte bound)."""
    slots = end["shm_slots"]
    return (slots.get("in_use") == 0 and slots.get("retired") == 0
            and end["shm_files"] == sum(slots.values()))


def _kinds(records) -> dict[str, int]:
    """{"503 gateway_overloaded": n, ...} of the answers that were not 200."""
    out: dict[str, int] = {}
    for r in records:
        if r.status != 200:
            key = f"{r.status or r.error} {r.code}".strip()
            out[key] = out.get(key, 0) + 1
    return out


def _print(line: str) -> None:
    print(line, flush=True)


def run(seconds: float, fraction: float = 0.7, work: Path = WORK, log=_print,
        warmup_s: float = WARMUP_S, queue_timeout_us: int | None = None) -> dict:
    """`queue_timeout_us`: the stand-in's queue deadline instead of yolo's (0: none)."""
    work.mkdir(parents=True, exist_ok=True)
    repo = standins.write_fixed_time_repository(work / "repo", {})
    standins.add_fixed_time(repo, "yolo", batch_ms=BATCH_MS, max_batch_size=MAX_BATCH,
                            queue_timeout_us=queue_timeout_us)
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=work / "triton.log")
    rate = fraction * CAPACITY
    body = small_jpeg()
    gw = None
    try:
        server.start(180)
        gw = Gateway(server.grpc_url, work / "gateway.log", shared_memory="on",
                     triton_admin_key=server.admin_key).wait_ready()
        log(f"soak: {seconds:.0f} s at {rate:.1f} req/s ({fraction:g} x C, C = {CAPACITY:.0f} "
            f"req/s: yolo stand-in, {BATCH_MS} ms per batch of {MAX_BATCH}); gateway pid {gw.pid}")
        asyncio.run(_drive(gw, rate, warmup_s, body))
        start = settled_holdings(gw)
        t0 = time.monotonic()

        def progress(done, records):
            errors = sum(r.status != 200 for r in records)
            log(f"  {done:5.0f} s  {len(records)} requests  {errors} errors  RSS "
                f"{openloop.rss_bytes(gw.pid) / 2**20:.1f} MiB")

        with openloop.StealWatch() as watch:
            records = asyncio.run(_drive(gw, rate, seconds, body, progress))
        elapsed = time.monotonic() - t0
        end = settled_holdings(gw)
        statuses = gw.series("requests_total")
    finally:
        if gw is not None:
            gw.stop()
        server.stop()
    ok = [r.total_s for r in records if r.status == 200]
    errors = len(records) - len(ok)
    failed = [r for r in records if r.status != 200]
    unexplained = watch.unexplained(failed, STEAL_BEFORE_S)
    first = {id(r) for r in unexplained}
    failed.sort(key=lambda r: id(r) not in first)          # the unexplained errors first
    t_first = min((r.started for r in records), default=0.0)
    growth = end["rss_bytes"] / start["rss_bytes"] - 1
    result = {
        "seconds": round(elapsed, 1), "rate": rate, "requests": len(records), "errors": errors,
        "error_kinds": _kinds(records), "errors_in_steal": errors - len(unexplained),
        "steal": watch.summary(), "quiet_share": round(watch.quiet_share, 3),
        "first_errors": [{"at_s": round(r.started - t_first, 2), "status": r.status or r.error,
                          "steal": round(watch.during(r, STEAL_BEFORE_S), 2),
                          "body": r.body[:300].decode(errors="replace")} for r in failed[:8]],
        "p50_ms": round(openloop.percentile(ok, 50) * 1e3, 1),
        "p99_ms": round(openloop.percentile(ok, 99) * 1e3, 1),
        "start": start, "end": end, "rss_growth": round(growth, 4),
        "gateway_statuses": {f"{k[0]} {k[1]}": v for k, v in statuses.items()},
    }
    judged = watch.quiet_share >= QUIET_SHARE
    result["judged"] = judged
    result["unexplained"] = len(unexplained)
    held = (judged and len(unexplained) <= UNEXPLAINED * len(records) and growth < RSS_GROWTH
            and end["fds"] <= start["fds"] and slots_flat(end))
    result["held"] = held
    log(f"soak: {len(records)} requests in {elapsed:.0f} s, {errors} errors "
        f"{result['error_kinds'] or ''} ({result['errors_in_steal']} with >= 10% of the CPU stolen); p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    for e in result["first_errors"]:
        log(f"  error at {e['at_s']} s (CPU stolen {e['steal']:.0%}): {e['status']} {e['body']}")
    log(f"  {result['steal']}" + ("" if judged else
        f": under {QUIET_SHARE:.0%} of the run without steal, NOT JUDGED (run again)"))
    log(f"  RSS   start {start['rss_bytes'] / 2**20:.1f} MiB  end {end['rss_bytes'] / 2**20:.1f} MiB"
        f"  ({growth:+.2%})")
    log(f"  fds   start {start['fds']}  end {end['fds']}   (shm slot files {start['shm_files']} -> "
        f"{end['shm_files']})")
    log(f"  shm slots start {start['shm_slots']}  end {end['shm_slots']}")
    log(f"  {'held' if held else 'DID NOT HOLD'}: errors only in CPU stolen by the hypervisor "
        f"and <= {UNEXPLAINED:.1%} of the requests otherwise ({len(unexplained)}), "
        f"RSS growth < {RSS_GROWTH:.0%}, fds not grown, "
        "every shm slot free again")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", 600)))
    p.add_argument("--fraction", type=float, default=0.7, help="load as a fraction of C")
    p.add_argument("--json", type=Path, help="write the result here")
    a = p.parse_args(argv)
    result = run(a.seconds, a.fraction)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0 if result["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
