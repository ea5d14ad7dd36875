"""`make bench-encoded`: pixels vs encoded images to Triton, side by side in ONE run, on this
CPU, with a real gateway and a real embedded tritonserver on loopback (issue 19, Measure).

One tritonserver serves the derived CPU repository of /v1/detect's model and the faces and
ocr pipelines, every network a ZERO-time stand-in (perf/bench_steps.py): the front end is
what is measured, as a GPU model would leave it. Three gateways on it: pixels over the wire
(shared_memory=off), pixels over shared memory, encoded. Printed:

1. bytes to Triton per image (the gateway's triton_sent_bytes metric, checked against the
   kernel's bytes_acked on the gateway's gRPC connections, `ss -tinp`), for a 1280x720 q90
   and a 4032x3024 photo (perf/decode_images.bench_photos: zidane.jpg scaled);
2. gateway CPU per request (/proc), one client and at concurrency;
3. img/s and p95 through the gateway, and where the CPU goes (gateway, tritonserver + its
   stubs, the load generator);
4. the decode step alone (images per core, batch 1 and 8);
5. BLS orchestration of faces / ocr on zero-time steps (images per core, batch 1/8/32);
6. per 1,000 images/s: gateway cores, Triton CPU cores, network (docs: k8s/README.md).

    python -m perf.bench_encoded [--seconds 6] [--concurrency 1,8] [--requests 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import imaging
from contract import REPO_ROOT
from serving.tritonserver import TritonServer, free_port

from . import bench_steps, decode_images, procstat
from .gatewayproc import Gateway
from .processes import BenchError, http_load

WORK = REPO_ROOT / "build" / "bench-encoded"
ROUTE = "/v1/detect"
MODES = {   # mode -> gateway settings (the admin key is added for shared memory)
    "pixels-wire": {"forward": "pixels", "shared_memory": "off"},
    "pixels-shm": {"forward": "pixels", "shared_memory": "on"},
    "encoded": {"forward": "encoded", "shared_memory": "off"},
}
BASE = "pixels-wire"       # today's path over a network: every ratio is against it
TARGETS = {"bytes": 0.35, "gateway_cpu": 0.3, "throughput": 0.9}


def cpu_model() -> tuple[str, bool]:
    """lscpu's model name and whether the CPU has native bf16 (avx512_bf16)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    m = re.search(r"^Model name:\s*(.+)$", text, re.M)
    return (m.group(1).strip() if m else platform.processor() or "unknown"), "avx512_bf16" in text


def sent_metric(gw: Gateway) -> float:
    """Image bytes the gateway says it sent to Triton, every model."""
    return sum(gw.series("triton_sent_bytes_total").values())


def triton_cpu(server: TritonServer) -> dict[int, float]:
    return procstat.group_cpu(server.process.pid)


def delta_cpu(after: dict[int, float], before: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


@dataclass
class Bytes:
    photo: str
    mode: str
    file_bytes: int
    metric_per_image: float
    kernel_per_image: float        # gateway -> Triton, bytes_acked on its gRPC connections
    kernel_back_per_image: float   # Triton -> gateway (answers, framing)


def measure_bytes(gw: Gateway, mode: str, server: TritonServer, photo: str, data: bytes, n: int) -> Bytes:
    """`n` sequential requests; the gateway's metric and the kernel's counters around them."""
    m0, k0 = sent_metric(gw), procstat.socket_bytes(gw.pid, server.grpc_port)
    for _ in range(n):
        r = gw.client.post(ROUTE, content=data, headers={"content-type": "image/jpeg"})
        if r.status_code != 200:
            raise BenchError(f"{mode}: {ROUTE} answered {r.status_code}: {r.text[:200]}")
    m1, k1 = sent_metric(gw), procstat.socket_bytes(gw.pid, server.grpc_port)
    k = k1 - k0
    if not k.sockets:
        raise BenchError(f"{mode}: no gRPC connection of the gateway (pid {gw.pid}) to port {server.grpc_port}")
    return Bytes(photo, mode, len(data), (m1 - m0) / n, k.sent / n, k.received / n)


@dataclass
class Load:
    mode: str
    concurrency: int
    requests: int
    errors: int
    img_s: float
    p50_ms: float
    p95_ms: float
    gateway_ms: float       # CPU ms per request, from /proc
    triton_ms: float        # tritonserver + its python-backend stubs
    client_ms: float        # this process: the load generator


def measure_load(gw: Gateway, mode: str, server: TritonServer, data: bytes, concurrency: int,
                 seconds: float) -> Load:
    g0, t0, c0 = procstat.cpu_seconds(gw.pid), triton_cpu(server), time.process_time()
    lat, errors, wall = asyncio.run(http_load(gw.url + ROUTE, data, concurrency, seconds, warmup=0))
    g1, t1, c1 = procstat.cpu_seconds(gw.pid), triton_cpu(server), time.process_time()
    n = len(lat)
    p50, p95 = np.percentile(np.array(lat) * 1e3, [50, 95]).tolist()
    return Load(mode, concurrency, n, errors, n / wall, p50, p95, (g1 - g0) * 1e3 / n,
                delta_cpu(t1, t0) * 1e3 / n, (c1 - c0) * 1e3 / n)


def run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, bf16 = cpu_model()
    print(f"CPU: {model}, avx512_bf16 {'yes' if bf16 else 'no'}, {len(os.sched_getaffinity(0))} usable cores")
    derived = bench_steps.build_repository(work)
    photos = {k: decode_images.scaled_photo(*decode_images.BENCH_SIZES[k]) for k in args.sizes}
    print("photos (zidane.jpg scaled to size, q90; the 4032x3024 one upscaled + sigma-2 noise): "
          + ", ".join(f"{k} {len(v):,} B" for k, v in photos.items()), flush=True)
    server = TritonServer(derived.path, free_port(), free_port(), free_port(), log_path=work / "triton.log")
    gateways: dict[str, Gateway] = {}
    t_start = time.monotonic()
    stage = lambda what: print(f"[{time.monotonic() - t_start:5.1f} s] {what}", flush=True)  # noqa: E731
    try:
        stage("starting tritonserver (stand-ins, decode step, pipelines)")
        server.start(600)
        stage("starting the three gateways")
        for mode, settings in MODES.items():
            extra = {"triton_admin_key": server.admin_key} if settings["shared_memory"] == "on" else {}
            gateways[mode] = Gateway(server.grpc_url, work / f"gateway-{mode}.log", triton_timeout_s=300,
                                     **settings, **extra)
        for gw in gateways.values():
            gw.wait_ready()
        small = photos["1280x720"]
        stage("measuring: bytes, load through the gateways, decode step, orchestration")
        for gw in gateways.values():      # warm connections, shm regions, the decode step
            asyncio.run(http_load(gw.url + ROUTE, small, 2, 0.0, warmup=4))
        paths = {m: sorted({k[1] for k in gw.series("triton_input_path_total")}) for m, gw in gateways.items()}
        if paths["pixels-shm"] != ["shm"]:
            raise BenchError(f"the shared-memory gateway sent its frames by {paths['pixels-shm']}")
        by_bytes = [measure_bytes(gateways[m], m, server, photo, data, args.requests)
                    for photo, data in photos.items() for m in MODES]
        loads = [measure_load(gateways[m], m, server, small, c, args.seconds)
                 for c in args.concurrency for m in MODES]
        frame, _ = imaging.letterbox(small, 640, 640, max_pixels=1 << 26, max_side=1 << 14)
        stage("decode step and orchestration")
        decode = bench_steps.decode_step(server, derived.path, photos, args.decode_batch, args.step_seconds)
        stage("orchestration")
        orchestration = bench_steps.orchestration(server, derived.path, frame, args.bls_batch, args.step_seconds)
        stage("stopping")
    finally:
        with ThreadPoolExecutor(len(MODES)) as pool:     # each drains on SIGINT: together
            list(pool.map(Gateway.stop, gateways.values()))
        server.stop()
        stage("stopped")
    result = {"cpu": model, "avx512_bf16": bf16, "bytes": [asdict(b) for b in by_bytes],
              "load": [asdict(p) for p in loads],
              "decode": [dict(asdict(p), per_core=p.per_core("stub")) for p in decode],
              "orchestration": [dict(asdict(p), per_core=p.per_core("pipeline", "tritonserver"))
                                for p in orchestration],
              "wall_s": time.monotonic() - t_start}
    report(result, by_bytes, loads, decode, orchestration)
    return result


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(result: dict, by_bytes: list[Bytes], loads: list[Load], decode, orchestration) -> None:
    print("\n## 1. Bytes to Triton per image, /v1/detect\n")
    print("| photo | mode | file B | metric B/img | kernel B/img (gateway->Triton) | kernel / metric "
          "| kernel B/img back | kernel vs pixels-wire |")
    print("|---|---|---|---|---|---|---|---|")
    base = {b.photo: b for b in by_bytes if b.mode == BASE}
    for b in by_bytes:
        print(f"| {b.photo} | {b.mode} | {b.file_bytes:,} | {b.metric_per_image:,.0f} | {b.kernel_per_image:,.0f} "
              f"| {_ratio(b.kernel_per_image, b.metric_per_image)} | {b.kernel_back_per_image:,.0f} "
              f"| {_ratio(b.kernel_per_image, base[b.photo].kernel_per_image)} |")
    print("\n## 2-3. Through the gateway, 1280x720 q90 to /v1/detect (CPU ms per request from /proc)\n")
    print("| mode | conc | requests | errors | img/s | p50 ms | p95 ms | gateway CPU ms | tritonserver+stubs CPU ms "
          "| load generator CPU ms | gateway CPU vs pixels-wire | img/s vs pixels-wire |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    lbase = {p.concurrency: p for p in loads if p.mode == BASE}
    for p in loads:
        b = lbase[p.concurrency]
        print(f"| {p.mode} | {p.concurrency} | {p.requests} | {p.errors} | {p.img_s:.1f} | {p.p50_ms:.1f} "
              f"| {p.p95_ms:.1f} | {p.gateway_ms:.2f} | {p.triton_ms:.2f} | {p.client_ms:.2f} "
              f"| {_ratio(p.gateway_ms, b.gateway_ms)} | {_ratio(p.img_s, b.img_s)} |")
    print("\n## 4-5. Inside Triton (gRPC straight to the step; CPU from /proc)\n")
    print("| step | batch | img/s | CPU ms/img (processes) | img/s per core |")
    print("|---|---|---|---|---|")
    for p, procs in [(p, ("stub",)) for p in decode] + [(p, ("pipeline", "tritonserver")) for p in orchestration]:
        ms = " + ".join(f"{p.cpu_s[k] * 1e3 / p.images:.2f} {k}" for k in procs)
        print(f"| {p.what} | {p.batch} | {p.img_s:.1f} | {ms} | {p.per_core(*procs):.0f} |")
    sizing(result, by_bytes, loads, decode, orchestration)
    targets(result, by_bytes, loads)


def sizing(result: dict, by_bytes, loads, decode, orchestration) -> None:
    """What 1,000 images/s of 1280x720 photos to /v1/detect cost in front of a GPU."""
    top = max(p.concurrency for p in loads)
    at = {p.mode: p for p in loads if p.concurrency == top}
    wire = {b.mode: b.kernel_per_image for b in by_bytes if b.photo == "1280x720"}
    dec = max((p for p in decode if p.what == "decode 1280x720"), key=lambda p: p.batch)
    rows = []
    print(f"\n## 6. Per 1,000 img/s of 1280x720 photos to /v1/detect (gateway CPU at conc {top}; "
          f"decode at batch {dec.batch})\n")
    print("| mode | gateway cores | Triton CPU cores for decode | network Gbit/s gateway->Triton |")
    print("|---|---|---|---|")
    for mode, p in at.items():
        decode_cores = 1000 / dec.per_core("stub") if mode == "encoded" else 0.0
        net = wire[mode] * 8 * 1000 / 1e9
        rows.append({"mode": mode, "gateway_cores": p.gateway_ms, "decode_cores": decode_cores, "gbit_s": net})
        print(f"| {mode} | {p.gateway_ms:.2f} | {decode_cores:.2f} | {net:.2f} |")
    for name in bench_steps.PIPELINES:
        best = max((p for p in orchestration if p.what == name), key=lambda p: p.per_core("pipeline", "tritonserver"))
        print(f"{name} BLS orchestration: {1000 / best.per_core('pipeline', 'tritonserver'):.2f} Triton CPU cores "
              f"per 1,000 img/s (batch {best.batch})")
    result["per_1000_img_s"] = rows


def targets(result: dict, by_bytes, loads) -> None:
    wire = {b.mode: b.kernel_per_image for b in by_bytes if b.photo == "1280x720"}
    top = max(p.concurrency for p in loads)
    one = {p.mode: p for p in loads if p.concurrency == min(p.concurrency for p in loads)}
    at = {p.mode: p for p in loads if p.concurrency == top}
    checks = {
        f"bytes: encoded <= {TARGETS['bytes']}x pixels (1280x720, kernel)": wire["encoded"] / wire[BASE],
        f"gateway CPU: encoded <= {TARGETS['gateway_cpu']}x pixels-wire (one client)":
            one["encoded"].gateway_ms / one[BASE].gateway_ms,
        f"gateway CPU: encoded <= {TARGETS['gateway_cpu']}x pixels-wire (conc {top})":
            at["encoded"].gateway_ms / at[BASE].gateway_ms,
        f"img/s: encoded >= {TARGETS['throughput']}x pixels-wire (conc {top})": at["encoded"].img_s / at[BASE].img_s,
    }
    print("\ntargets:")
    verdicts = {}
    for name, value in checks.items():
        limit = TARGETS[name.split(":")[0].replace("img/s", "throughput").replace("gateway CPU", "gateway_cpu")]
        ok = value >= limit if name.startswith("img/s") else value <= limit
        verdicts[name] = {"value": value, "met": ok}
        print(f"  [{'met' if ok else 'NOT met'}] {name}: {value:.2f}x")
    result["targets"] = verdicts


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_encoded", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="window per gateway load point")
    p.add_argument("--concurrency", type=_ints, default=[1, 8])
    p.add_argument("--requests", type=int, default=10, help="sequential requests per bytes point")
    p.add_argument("--step-seconds", type=float, default=3.0, help="window per decode / orchestration point")
    p.add_argument("--decode-batch", type=_ints, default=[1, 8])
    p.add_argument("--bls-batch", type=_ints, default=[1, 8, 32])
    p.add_argument("--sizes", type=lambda t: t.split(","), default=list(decode_images.BENCH_SIZES),
                   help="photos for the bytes and decode points (1280x720 always serves the load points)")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default <work>/report.json)")
    args = p.parse_args(argv)
    unknown = set(args.sizes) - set(decode_images.BENCH_SIZES)
    if unknown or "1280x720" not in args.sizes:
        p.error(f"--sizes: from {', '.join(decode_images.BENCH_SIZES)}, 1280x720 included")
    t0 = time.monotonic()
    try:
        result = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(args.work) / "report.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwall time {time.monotonic() - t0:.0f} s; report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
