"""Compute ceiling per network on a GPU: FP16 (autocast) with CUDA graphs at batch 1..64,
plus batched GPU JPEG decode of 1280x720 frames. The R_gpu figures k8s sizing needs.

    python -m perf.gpu_ceiling --out gpu_ceiling.json [--budget-s 420] [--families arcface,yolo]
    python -m perf.gpu_ceiling --device cpu --batches 1,2 --iters 2 --jpeg 64x48   # tests

Per family and batch: the module is captured once in a CUDA graph (replays have no Python
or launch overhead, like Triton's TensorRT backend with graphs) and replayed `--iters`
times between CUDA events; ms per batch and images/s. A family this host cannot measure
(a package it lacks, a third-party ONNX without a GPU runtime) is listed with the reason.
Everything stops at `--budget-s`: points not reached are marked so. Only `main()` exits.
On a CPU (`--device cpu`, tests) the same code runs eagerly in f32: a smoke run, not a ceiling.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .ceiling_models import Unmeasurable, build
from .ceiling_models import families as contract_families
from .units import parse_int_list

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Point:
    family: str
    batch: int
    ms_per_batch: float | None = None
    items_per_s: float | None = None
    precision: str = ""
    cuda_graph: bool = False
    runtime: str = ""
    note: str = ""


@dataclass
class Ceiling:
    host: dict
    points: list[Point] = field(default_factory=list)
    unmeasured: dict[str, str] = field(default_factory=dict)     # family -> why
    jpeg: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"host": self.host, "points": [asdict(p) for p in self.points], "unmeasured": self.unmeasured,
                "jpeg_decode": self.jpeg}


class Clock:
    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


def host_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = "not installed"
    return info


def _timed(fn, device: str, iters: int) -> float:
    """Seconds per call: CUDA events on a GPU, perf_counter on a CPU."""
    import torch

    if device.startswith("cuda"):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000.0 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def measure(cand, batch: int, device: str, iters: int, warmup: int) -> Point:
    import torch

    cuda = device.startswith("cuda")
    inputs = cand.inputs(batch, device)
    is_torch = cand.runtime == "torch"
    if is_torch:
        cand.module.to(device)
    precision = "fp16 (autocast)" if cuda and is_torch else "fp32"

    def call():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda and is_torch,
                                                    cache_enabled=False):
            return cand.module(*inputs)

    graph, note = False, cand.note
    if cuda and is_torch:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 2)):
                call()
        torch.cuda.current_stream().wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                call()
            run, graph = g.replay, True
        except Exception as exc:  # noqa: BLE001 - a module that cannot be captured is timed eagerly
            run, note = call, f"{note}; eager: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]})"
            torch.cuda.synchronize()
    else:
        run = call
    for _ in range(warmup):
        run()
    s = _timed(run, device, iters)
    return Point(cand.name, batch, s * 1000.0, batch / s, precision, graph, cand.runtime, note.strip("; "))


def jpeg_decode(device: str, size: tuple[int, int], batches, iters: int, clock: Clock) -> list[dict]:
    """Batched torchvision.io.decode_jpeg of one q90 frame repeated `batch` times."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    w, h = size
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    g = torch.Generator().manual_seed(0)
    img = torch.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)]).to(torch.int16)
    img = (img + torch.randint(-12, 12, img.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    data = encode_jpeg(img, quality=90)
    out = []
    for b in batches:
        if clock.left() <= 0:
            out.append({"batch": b, "skipped": "time budget spent"})
            continue
        frames = [data] * b
        decode_jpeg(frames, device=device)                   # warm-up (nvJPEG handles, buffers)
        s = _timed(lambda: decode_jpeg(frames, device=device), device, iters)
        out.append({"batch": b, "ms_per_batch": s * 1000.0, "images_per_s": b / s, "bytes_per_image": int(data.numel()),
                    "size": f"{w}x{h}"})
    return out


def run(families, batches, device: str, iters: int, warmup: int, budget_s: float,
        jpeg: tuple[int, int] | None, progress=print) -> Ceiling:
    import torch

    clock = Clock(budget_s)
    result = Ceiling(host_info(device))
    if jpeg:
        try:
            result.jpeg = jpeg_decode(device, jpeg, batches, iters, clock)
        except (ImportError, RuntimeError) as exc:
            result.unmeasured["jpeg_decode"] = f"torchvision.io.decode_jpeg on {device}: {exc}"
    for name in families:
        if clock.left() <= 0:
            result.unmeasured[name] = "time budget spent before this family"
            continue
        try:
            cand = build(name)
        except Unmeasurable as exc:
            result.unmeasured[name] = str(exc)
            progress(f"{name}: not measured: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one family's build failure must not end the run
            result.unmeasured[name] = f"building it failed: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        for b in batches:
            if clock.left() <= 0:
                result.points.append(Point(name, b, note="time budget spent"))
                continue
            try:
                p = measure(cand, b, device, iters, warmup)
            except torch.cuda.OutOfMemoryError:
                result.points.append(Point(name, b, note="out of GPU memory"))
                torch.cuda.empty_cache()
                break
            except Exception as exc:  # noqa: BLE001 - one family failing on this device ends that family only
                result.points.append(Point(name, b, note=f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
                progress(f"{name} b={b}: failed: {exc}")
                break
            result.points.append(p)
            progress(f"{name} b={b}: {p.ms_per_batch:.3f} ms/batch, {p.items_per_s:,.0f}/s")
        cand.module = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result


def table(c: Ceiling) -> str:
    lines = [f"host: {', '.join(f'{k}={v}' for k, v in c.host.items())}", "",
             "| family | batch | ms/batch | items/s | precision | CUDA graph | runtime | note |",
             "|---|---|---|---|---|---|---|---|"]
    for p in c.points:
        ms = f"{p.ms_per_batch:.3f}" if p.ms_per_batch is not None else "-"
        ips = f"{p.items_per_s:,.0f}" if p.items_per_s is not None else "-"
        lines.append(f"| {p.family} | {p.batch} | {ms} | {ips} | {p.precision} | {'yes' if p.cuda_graph else 'no'} "
                     f"| {p.runtime} | {p.note} |")
    if c.jpeg:
        lines += ["", "| JPEG decode (torchvision.io.decode_jpeg) | batch | ms/batch | images/s |", "|---|---|---|---|"]
        for j in c.jpeg:
            if "skipped" in j:
                lines.append(f"| {c.host['device']} | {j['batch']} | - | {j['skipped']} |")
            else:
                lines.append(f"| {j['size']} q90 on {c.host['device']} | {j['batch']} | {j['ms_per_batch']:.3f} "
                             f"| {j['images_per_s']:,.0f} |")
    if c.unmeasured:
        lines += ["", "Not measured:"] + [f"- {k}: {v}" for k, v in c.unmeasured.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.gpu_ceiling", description=__doc__.split("\n")[0])
    known = contract_families()
    ap.add_argument("--families", default=",".join(known), help=f"comma list (default all: {','.join(known)})")
    ap.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run for tests)")
    ap.add_argument("--iters", type=int, default=50, help="timed replays per point")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop measuring after this many seconds")
    ap.add_argument("--jpeg", default="1280x720", help="JPEG decode frame size WxH, or 'none'")
    ap.add_argument("--out", type=Path, default=Path("gpu_ceiling.json"), help="JSON result path")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: perf.gpu_ceiling needs PyTorch (pip install torch torchvision)", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); --device cpu for a smoke run",
              file=sys.stderr)
        return 2
    families = [f for f in a.families.split(",") if f]
    unknown = [f for f in families if f not in known]
    if unknown:
        print(f"error: unknown families {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    jpeg = None if a.jpeg == "none" else tuple(int(v) for v in a.jpeg.lower().split("x"))
    result = run(families, parse_int_list(a.batches), a.device, a.iters, a.warmup, a.budget_s, jpeg,
                 progress=lambda m: print(m, file=sys.stderr, flush=True))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result.as_dict(), indent=2))
    print(table(result))
    print(f"\nJSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
