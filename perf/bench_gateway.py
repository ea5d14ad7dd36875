"""`make bench-gateway`: the gateway against the naive baseline, in ONE run, on the same
Triton and model. A 1280x720 JPEG goes to a 640x640 detector (yolo) at concurrency
1/8/32; printed: req/s, p50/p95/p99, server CPU-ms per request, bytes sent to Triton per
request, and the ratios, beside the bare JPEG decode time of the same image.

    python -m perf.bench_gateway [--seconds 10] [--concurrency 1,8,32] [--out FILE]

Triton runs the derived CPU repository for `yolo` plus the baseline's float adapter
(perf/baseline_naive.py). On a CPU-only Triton the model itself dominates, so the
throughput ratio is model-bound there; `--stub-model` replaces yolo (in the scratch
repository only) by an instant stub with its interface, which measures the two front
ends alone, as a GPU model would let them run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import contract
from contract import REPO_ROOT
from serving import profiles, standins
from serving.tritonserver import TritonServer, free_port

from . import baseline_naive

WORK = REPO_ROOT / "build" / "bench-gateway"
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something the user can fix (a model not exported, a server that did not start)."""


@dataclass
class Point:
    system: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    bytes_to_triton_per_request: float


def test_image() -> bytes:
    """A deterministic 1280x720 photo-like JPEG (q90): the astronaut, resized."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (1280, 720), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def bare_decode_ms(data: bytes, runs: int = 100) -> float:
    """Median full-size libjpeg-turbo decode of the same image, one thread."""
    import simplejpeg

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        simplejpeg.decode_jpeg(data, colorspace="RGB")
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
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


async def _load(url: str, data: bytes, concurrency: int, seconds: float, warmup: int):
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


def _gateway_bytes(base: str) -> float:
    """`base`: the gateway's metrics address (its own port, not the API's)."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    m = re.search(r'^visionserve_gateway_triton_sent_bytes_total\{model="yolo"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _gateway_paths(base: str) -> dict[str, float]:
    """{"shm" | "wire": yolo calls}: how the gateway shipped the image tensors."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    return {p: float(v) for p, v in re.findall(
        r'^visionserve_gateway_triton_input_path_total\{model="yolo",path="(\w+)"\} (\S+)$',
        text, re.M)}


def _baseline_bytes(base: str) -> float:
    import httpx

    return float(httpx.get(base + "/stats", timeout=10).json()["bytes_to_triton"])


def measure(system, base, path, proc, read_bytes, data, concurrency, seconds) -> Point:
    cpu0, bytes0 = cpu_seconds(proc.pid), read_bytes(base)
    lat, errors, wall = asyncio.run(_load(base + path, data, concurrency, seconds,
                                          warmup=0))
    cpu1, bytes1 = cpu_seconds(proc.pid), read_bytes(base)
    n = len(lat)
    ms = np.array(lat) * 1e3
    return Point(system, concurrency, n, errors, n / wall, *np.percentile(ms, [50, 95, 99]).tolist(),
                 (cpu1 - cpu0) * 1e3 / n, (bytes1 - bytes0) / n)


def _no_queue_deadline(config: Path) -> None:
    """Scratch repository only: at concurrency 32 a CPU-bound model queues requests for
    longer than the serving deadline, and rejections would measure the policy, not the
    two front ends. Both systems then wait for the model alike."""
    cfg = contract.parse_config(config.read_text(), config)
    cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds = 0
    config.write_text(contract.to_text(cfg))


def _start(cmd, log: Path, **env_extra) -> subprocess.Popen:
    # the gateway's per-call deadline matches the baseline's 300 s client timeout
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VISIONSERVE_GATEWAY_TRITON_TIMEOUT_S="300",
               **env_extra)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen | None, wait_s: float = 15) -> None:
    """SIGINT (the gateway shuts down gracefully), SIGKILL after `wait_s`."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run(seconds: float, levels: list[int], stub: bool = False) -> dict:
    if not (REPO_ROOT / "model_repository" / "yolo" / "1" / "model.onnx").is_file():
        raise BenchError("yolo is not exported: make export-onnx MODELS=yolo")
    WORK.mkdir(parents=True, exist_ok=True)
    derived = profiles.derive("cpu", dest=WORK / "repo", models=["yolo"])
    if stub:
        standins.add_fixed_time(derived.path, "yolo", batch_ms=0)   # an instant stub
    _no_queue_deadline(derived.path / "yolo" / "config.pbtxt")
    adapter = baseline_naive.write_adapter(derived.path, "yolo")
    ports = free_port(), free_port(), free_port()
    server = TritonServer(derived.path, *ports, log_path=WORK / "triton.log")
    gw_port, gw_metrics_port, bl_port = free_port(), free_port(), free_port()
    gw = bl = None
    data = test_image()
    try:
        print(f"starting Triton ({derived.path}; yolo: "
              f"{'instant stub' if stub else 'the real ONNX model'}) ...", flush=True)
        server.start(600)
        # the admin key lets the gateway register shared memory, as `make run` does
        gw = _start([sys.executable, "-m", "gateway", "--triton-grpc", server.grpc_url,
                     "--port", str(gw_port), "--metrics-port", str(gw_metrics_port),
                     "--log-level", "warning"], WORK / "gateway.log",
                    VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY=server.admin_key)
        bl = _start([sys.executable, "-m", "perf.baseline_naive", "--triton-http",
                     server.http_url, "--model", adapter, "--port", str(bl_port)],
                    WORK / "baseline.log")
        gw_base, bl_base = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{bl_port}"
        gw_metrics = f"http://127.0.0.1:{gw_metrics_port}"
        _wait_http(gw_base + "/readyz", gw)
        _wait_http(bl_base + "/healthz", bl)
        # the machine may be shared: the decode reference is re-measured beside every
        # point and its median used, so both sides of the CPU ratio see the same load
        decodes = [bare_decode_ms(data)]
        print(f"image: 1280x720 JPEG, {len(data)} bytes; bare full decode "
              f"(simplejpeg, 1 thread): {decodes[0]:.2f} ms", flush=True)
        # warm both paths (model sessions, connections) before measuring
        for base, path in ((gw_base, "/v1/detect"), (bl_base, "/detect")):
            asyncio.run(_load(base + path, data, 2, 0.0, warmup=4))
        points = []
        for c in levels:
            for system, base, path, proc, rb in (
                    ("gateway", gw_base, "/v1/detect", gw, lambda _: _gateway_bytes(gw_metrics)),
                    ("baseline", bl_base, "/detect", bl, _baseline_bytes)):
                p = measure(system, base, path, proc, rb, data, c, seconds)
                points.append(p)
                decodes.append(bare_decode_ms(data, runs=30))
                print(f"  {system:8s} c={c:<3d} {p.rps:8.1f} req/s  p50 {p.p50_ms:7.1f}  "
                      f"p95 {p.p95_ms:7.1f}  p99 {p.p99_ms:7.1f} ms  cpu {p.cpu_ms_per_request:6.2f} "
                      f"ms/req  {p.bytes_to_triton_per_request / 1e6:5.2f} MB->Triton  "
                      f"({p.requests} req, {p.errors} errors)", flush=True)
        paths = _gateway_paths(gw_metrics)
        path = "+".join(sorted(paths)) or "none"
        print(f"gateway image input path: {path} (Triton calls: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(paths.items())) + ")", flush=True)
    finally:
        stop_process(gw)
        stop_process(bl)
        server.stop()
    decode_ms = float(np.median(decodes))
    print(f"bare decode reference: median {decode_ms:.2f} ms of {len(decodes)} measurements "
          f"(min {min(decodes):.2f}, max {max(decodes):.2f})")
    result = report(points, decode_ms, len(data))
    result["gateway_input_path"] = path
    result["model"] = "instant stub" if stub else "yolo (real ONNX model)"
    if not stub and not all(result["targets"].values()):
        print("note: with the real model on a CPU Triton both systems wait for the model; "
              "--stub-model measures the two front ends alone, as a GPU model would let "
              "them run")
    return result


def report(points: list[Point], decode_ms: float, jpeg_bytes: int) -> dict:
    by = {(p.system, p.concurrency): p for p in points}
    failed = [p for p in points if p.errors or not p.requests]
    if failed:
        raise BenchError("requests failed; figures would be meaningless: " + ", ".join(
            f"{p.system} c={p.concurrency}: {p.errors}/{p.requests}" for p in failed)
            + f" (logs in {WORK})")
    ratios = {}
    for c in sorted({p.concurrency for p in points}):
        g, b = by[("gateway", c)], by[("baseline", c)]
        ratios[c] = {"throughput_x": g.rps / b.rps if b.rps else float("inf"),
                     "p50_x": b.p50_ms / g.p50_ms if g.p50_ms else float("inf"),
                     "cpu_x": b.cpu_ms_per_request / g.cpu_ms_per_request,
                     "bytes_fraction": g.bytes_to_triton_per_request / b.bytes_to_triton_per_request}
    top = max(ratios)
    g = by[("gateway", top)]
    targets = {
        f"throughput >= 3x baseline at c={top}": ratios[top]["throughput_x"] >= 3,
        "gateway CPU/request <= 1.3x bare decode": g.cpu_ms_per_request <= 1.3 * decode_ms,
        "bytes to Triton <= 1/4 of baseline": ratios[top]["bytes_fraction"] <= 0.25,
    }
    print("\nratios (gateway vs baseline):")
    for c, r in ratios.items():
        print(f"  c={c:<3d} throughput {r['throughput_x']:.2f}x  p50 {r['p50_x']:.2f}x faster  "
              f"server CPU {r['cpu_x']:.2f}x less  bytes {r['bytes_fraction']:.3f} of baseline")
    print(f"gateway CPU at c={top}: {g.cpu_ms_per_request:.2f} ms/req = "
          f"{g.cpu_ms_per_request / decode_ms:.2f}x the bare decode ({decode_ms:.2f} ms)")
    for name, ok in targets.items():
        print(f"  [{'met' if ok else 'NOT met'}] {name}")
    return {"bare_decode_ms": decode_ms, "jpeg_bytes": jpeg_bytes,
            "points": [asdict(p) for p in points], "ratios": ratios, "targets": targets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_gateway", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window per point")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--stub-model", action="store_true",
                   help="serve yolo's interface from an instant stub (zeros): measures the "
                   "front ends alone, as with a GPU model, where a CPU model would dominate")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON report (default perf/reports/bench_gateway[_stub].json)")
    args = p.parse_args(argv)
    args.out = args.out or REPO_ROOT / "perf" / "reports" / (
        "bench_gateway_stub.json" if args.stub_model else "bench_gateway.json")
    try:
        result = run(args.seconds, [int(c) for c in args.concurrency.split(",")], args.stub_model)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
