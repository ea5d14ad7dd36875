"""`make bench-fleet`: does a second and a third Triton replica add throughput through the gateway?

ONE run, side by side: 1, 2 and 3 real tritonservers on 127.0.0.2-4 serving a fixed-time
stand-in of mobileclip_image (BATCH_MS + IMAGE_MS per image per batch, no CPU: each
replica's capacity is set, as a GPU's would be, not by this machine's 2 cores), one gateway
in front with `--triton-grpc ipv4:<the replicas>`, closed-loop HTTP clients at
CONCURRENCY_PER_REPLICA x replicas (enough to saturate them), for each balancer, in
ROUNDS interleaved rounds (every point once per round; a shared machine drifts):

  pick_first          what the gateway did before: ONE gRPC channel, gRPC's default policy
  round_robin         one gRPC channel, gRPC's round_robin over the same list
  least_outstanding   the fleet (gateway/fleet.py): per call, the endpoint with the fewest
                      calls in flight, health checks, retries

Printed: images/s (mean of the rounds), errors, p50/p95/p99 (all rounds' requests), each
replica's share (Triton's own nv_inference_request_success), and the scaling efficiency
img/s(3) / (3 x img/s(1)).
Target: >= 0.9 for least_outstanding.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from contract import REPO_ROOT
from serving.replicas import Replicas, loopback_hosts
from serving.tritonserver import free_port

from .processes import BenchError, http_load, start_process, stop_process, wait_http

WORK = REPO_ROOT / "build" / "bench-fleet"
MODEL, ROUTE = "mobileclip_image", "/v1/embed/image"
WARMUP_S = 1.5
BALANCERS = ("pick_first", "round_robin", "least_outstanding")
# ~23 img/s per replica at batch 8: low enough that the gateway and the load generator
# (Python, on this machine's 2 shared cores) are never what limits 3 replicas
BATCH_MS, IMAGE_MS = 20.0, 40.0
CONCURRENCY_PER_REPLICA = 8
TARGET = 0.9


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8).repeat(4, 0).repeat(4, 1)).save(
        buf, "JPEG", quality=85)
    return buf.getvalue()


def measure(replicas: Replicas, hosts: list[str], balancer: str, seconds: float,
            warmup_s: float = WARMUP_S, work: Path = WORK) -> dict:
    target = "ipv4:" + ",".join(replicas.address(h) for h in hosts)
    port = free_port()
    log = work / f"gateway-{balancer}-{len(hosts)}.log"
    proc = start_process([sys.executable, "-m", "gateway", "--triton-grpc", target, "--host",
                   "127.0.0.1", "--port", str(port)], log,
                  VISIONSERVE_GATEWAY_BALANCER=balancer, VISIONSERVE_GATEWAY_DECODE_THREADS="1")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", proc)
        data, c = _jpeg(), CONCURRENCY_PER_REPLICA * len(hosts)
        asyncio.run(http_load(base + ROUTE, data, c, warmup_s, 0))     # warm-up
        before = {h: replicas.success(h, MODEL) for h in hosts}
        latencies, errors, wall = asyncio.run(http_load(base + ROUTE, data, c, seconds, 0))
        served = {h: replicas.success(h, MODEL) - before[h] for h in hosts}
    finally:
        stop_process(proc)
    return {"balancer": balancer, "replicas": len(hosts), "concurrency": c,
            "img_s": (len(latencies) - errors) / wall, "latencies": latencies,
            "errors": errors, "served": served}


def combine(rounds: list[dict]) -> dict:
    """One point from its rounds: mean images/s, pooled latencies and served counts."""
    ms = np.array([x for r in rounds for x in r["latencies"]] or [0.0]) * 1000
    served = {h: sum(r["served"][h] for r in rounds) for h in rounds[0]["served"]}
    total = sum(served.values()) or 1
    first = rounds[0]
    return {"balancer": first["balancer"], "replicas": first["replicas"],
            "concurrency": first["concurrency"],
            "img_s": float(np.mean([r["img_s"] for r in rounds])),
            "img_s_rounds": [round(r["img_s"], 1) for r in rounds],
            "requests": int(ms.size), "errors": sum(r["errors"] for r in rounds),
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)),
            "share": {h: served[h] / total for h in served}}


def run(seconds: float, max_replicas: int = 3, rounds: int = 2, warmup_s: float = WARMUP_S,
        work: Path = WORK) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    hosts = loopback_hosts(max_replicas)
    # the queue holds requests (no 200 ms shedding): an overloaded replica shows as
    # latency and lost throughput, not as a storm of 429s
    standin = {MODEL: {"batch_ms": BATCH_MS, "image_ms": IMAGE_MS, "queue_timeout_us": 0}}
    raw: dict[tuple[str, int], list[dict]] = {}
    with Replicas(work / "replicas", standin, hosts) as replicas:
        replicas.start_all()
        for r in range(rounds):
            for balancer in BALANCERS:
                for k in range(1, max_replicas + 1):
                    m = measure(replicas, hosts[:k], balancer, seconds, warmup_s, work)
                    raw.setdefault((balancer, k), []).append(m)
                    print(f"  round {r + 1}: {balancer:<18} replicas={k} {m['img_s']:7.1f} img/s",
                          flush=True)
    points = [combine(v) for v in raw.values()]
    print()
    for p in points:
        print(_line(p))
    return report(points, max_replicas, work)


def _line(p: dict) -> str:
    share = " ".join(f"{s:5.1%}" for s in p["share"].values())
    return (f"  {p['balancer']:<18} replicas={p['replicas']} c={p['concurrency']:<3} "
            f"{p['img_s']:7.1f} img/s  errors {p['errors']:<4} p50 {p['p50_ms']:7.1f}  "
            f"p95 {p['p95_ms']:7.1f}  p99 {p['p99_ms']:7.1f} ms  share {share}")


def report(points: list[dict], k: int, work: Path = WORK) -> dict:
    by = {(p["balancer"], p["replicas"]): p for p in points}
    summary = {}
    print(f"\nscaling efficiency img/s({k}) / ({k} x img/s(1)); target >= {TARGET} for the fleet:")
    for b in BALANCERS:
        if (b, 1) in by and (b, k) in by:
            if by[(b, 1)]["img_s"] <= 0:      # nothing served: say so, do not divide by it
                print(f"  {b:<18} n/a: no image served with 1 replica")
                continue
            eff = by[(b, k)]["img_s"] / (k * by[(b, 1)]["img_s"])
            summary[b] = eff
            verdict = ("met" if eff >= TARGET else "NOT met") if b == "least_outstanding" else ""
            print(f"  {b:<18} {eff:5.2f}  {verdict}")
    if ("pick_first", k) in by and ("least_outstanding", k) in by and by[("pick_first", k)]["img_s"] > 0:
        gain = by[("least_outstanding", k)]["img_s"] / by[("pick_first", k)]["img_s"]
        print(f"  least_outstanding / pick_first at {k} replicas: {gain:.2f}x throughput")
    out = {"points": points, "efficiency": summary, "target": TARGET,
           "standin": {"model": MODEL, "batch_ms": BATCH_MS, "image_ms": IMAGE_MS,
                       "clients_per_replica": CONCURRENCY_PER_REPLICA},
           "command": "make bench-fleet"}
    (work / "report.json").write_text(json.dumps(out, indent=2))
    print(f"report: {work / 'report.json'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_fleet", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per point")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per point")
    p.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of load before each point")
    p.add_argument("--work", type=Path, default=WORK, help="replica repositories, logs, report.json")
    args = p.parse_args(argv)
    print(f"stand-in {MODEL}: {BATCH_MS:g} ms + {IMAGE_MS:g} ms/image per batch; "
          f"{CONCURRENCY_PER_REPLICA} clients per replica; {args.seconds:g} s per point, "
          f"{args.rounds} rounds", flush=True)
    t0 = time.monotonic()
    try:
        run(args.seconds, args.replicas, args.rounds, args.warmup, args.work)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
