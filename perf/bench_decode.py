"""Decode + letterbox throughput: the gateway codec vs the DALI pipeline, side by side.

CPU (`make bench-decode`): for each photo size and batch, the codec (read_header,
plan_letterbox, decode_into; one thread, as one gateway decode thread or one python-backend
instance runs it) and the DALI pipeline with device "cpu" and one worker thread. Reported:
images/s of wall time and images per CPU-second of the process (user + system: what a core
buys; DALI's executor thread is counted).

GPU (`make bench-decode-gpu`, on a GPU host with DALI): the same pipeline with device
"mixed" (nvJPEG / the hardware JPEG decoder, resize and pad on the GPU) at batch 1-64,
frames left on the GPU as Triton hands them to the next model.

    python -m perf.bench_decode [--device cpu|mixed] [--batch 1,8,32] [--sizes 1280x720,4032x3024]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import decode_images

DEFAULT_BATCH = {"cpu": "1,8,32", "mixed": "1,2,4,8,16,32,64"}


@dataclass(frozen=True)
class Result:
    path: str          # "codec" | "dali-cpu" | "dali-mixed"
    size: str          # "1280x720"
    batch: int
    images: int
    wall_s: float
    cpu_s: float

    @property
    def img_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def img_per_cpu_s(self) -> float:
        return self.images / self.cpu_s if self.cpu_s > 0 else 0.0


def cpu_seconds() -> float:
    """This process's user + system CPU time, every thread (DALI's workers included)."""
    return time.process_time()


def measure(run_batch: Callable[[], None], batch: int, *, seconds: float, min_runs: int = 3,
            warmup: int = 1, clock=time.perf_counter, cpu=cpu_seconds) -> tuple[int, float, float]:
    """Run `run_batch` (one batch of `batch` images) `warmup` times untimed, then until
    `seconds` have passed and at least `min_runs` ran: (images, wall s, CPU s)."""
    for _ in range(warmup):
        run_batch()
    runs, t0, c0 = 0, clock(), cpu()
    while runs < min_runs or clock() - t0 < seconds:
        run_batch()
        runs += 1
    return runs * batch, clock() - t0, cpu() - c0


def codec_runner(data: bytes, frame_hw: tuple[int, int], batch: int,
                 out: np.ndarray | None = None) -> Callable[[], None]:
    """One thread decoding `batch` copies of `data` into one batch buffer, as the gateway does."""
    from .decode_parity import reference_codec

    codec = reference_codec()

    out = np.empty((batch, *frame_hw, 3), np.uint8) if out is None else out

    def run():
        for i in range(batch):
            header = codec.read_header(data, max_pixels=1 << 28, max_side=1 << 15)
            box = codec.plan_letterbox(*header.size, frame_hw[1], frame_hw[0])
            codec.decode_into(data, header, box, out[i])
    return run


def dali_runner(data: bytes, frame_hw: tuple[int, int], batch: int, *, device: str,
                threads: int) -> Callable[[], None]:
    from pipelines import dali_letterbox as dl

    pipe = dl.pipeline(frame_hw, device=device, max_batch_size=batch, num_threads=threads,
                       device_id=0 if device == "mixed" else None)
    pipe.build()
    encoded = [np.frombuffer(data, np.uint8)] * batch

    def run():
        pipe.feed_input(dl.INPUT, encoded)
        pipe.run()   # returns once the batch's outputs are ready (on the GPU for "mixed")
    return run


def stage_runners(data: bytes, frame_hw: tuple[int, int], batch: int) -> dict[str, Callable[[], None]]:
    """Where DALI's CPU time goes: its decoder alone, decoder + the pipeline's resize, beside
    libjpeg-turbo (simplejpeg) decoding the full image without DCT scaling."""
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    import simplejpeg

    def dali_stage(resize: bool):
        @dali.pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def stage():
            image = fn.decoders.image(fn.external_source(name="image", dtype=types.UINT8, ndim=1),
                                      device="cpu", output_type=types.RGB)
            if resize:
                image = fn.resize(image, resize_longer=float(max(frame_hw)), antialias=True)
            return image
        pipe = stage()
        pipe.build()
        encoded = [np.frombuffer(data, np.uint8)] * batch

        def run():
            pipe.feed_input("image", encoded)
            pipe.run()
        return run

    def full_decode():
        for _ in range(batch):
            simplejpeg.decode_jpeg(data, colorspace="RGB")
    return {"simplejpeg full-size decode": full_decode, "DALI decode": dali_stage(False),
            "DALI decode + resize": dali_stage(True)}


def table(results: list[Result]) -> str:
    """One row per (size, batch): every path's img/s and img/CPU-s, and DALI / codec."""
    paths = list(dict.fromkeys(r.path for r in results))
    head = f"{'size':>10s} {'batch':>5s}" + "".join(f" {p + ' img/s':>17s} {p + ' img/CPU-s':>19s}" for p in paths)
    base = "codec" if "codec" in paths and len(paths) > 1 else None
    if base:
        head += "".join(f" {p + '/codec per CPU-s':>24s}" for p in paths if p != base)
    lines = [head]
    for size in dict.fromkeys(r.size for r in results):
        for batch in dict.fromkeys(r.batch for r in results if r.size == size):
            row = {r.path: r for r in results if r.size == size and r.batch == batch}
            line = f"{size:>10s} {batch:5d}"
            for p in paths:
                r = row.get(p)
                line += f" {r.img_s:17.1f} {r.img_per_cpu_s:19.1f}" if r else f" {'-':>17s} {'-':>19s}"
            if base:
                for p in paths:
                    if p == base:
                        continue
                    ok = p in row and base in row and row[base].img_per_cpu_s > 0
                    line += f" {row[p].img_per_cpu_s / row[base].img_per_cpu_s:24.2f}" if ok else f" {'-':>24s}"
            lines.append(line)
    return "\n".join(lines)


def parse_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "mixed"), default="cpu",
                    help="cpu: codec vs DALI on the CPU; mixed: the DALI GPU decoder (needs CUDA)")
    ap.add_argument("--batch", type=parse_list, help="batch sizes (default 1,8,32 on cpu, 1..64 mixed)")
    ap.add_argument("--sizes", default=",".join(decode_images.BENCH_SIZES),
                    help=f"photo sizes, from {sorted(decode_images.BENCH_SIZES)}")
    ap.add_argument("--frame", default="640x640", help="letterbox frame WIDTHxHEIGHT")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--threads", type=int, help="DALI worker threads (default 1 on cpu, 4 mixed)")
    ap.add_argument("--stages", action="store_true",
                    help="cpu: also time DALI's decoder alone and decoder + resize (ms of CPU per image)")
    args = ap.parse_args(argv)
    args.batch = args.batch or parse_list(DEFAULT_BATCH[args.device])
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in decode_images.BENCH_SIZES]
    if unknown:
        ap.error(f"unknown sizes {unknown}; known: {sorted(decode_images.BENCH_SIZES)}")
    from pipelines.dali_letterbox import parse_frame

    try:
        args.frame = parse_frame(args.frame)
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    args.threads = args.threads or (1 if args.device == "cpu" else 4)
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    return f"{name}, {os.cpu_count()} cores, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines import dali_letterbox as dl

    missing = dl.dali_missing()
    if missing:
        print(f"bench_decode: {missing}", file=sys.stderr)
        return 2
    # only the sizes asked for: encoding the 4032x3024 photo alone takes seconds
    photos = {size: decode_images.scaled_photo(*decode_images.BENCH_SIZES[size]) for size in args.sizes}
    print(f"decode + letterbox into {args.frame[1]}x{args.frame[0]}; {cpu_model()}; "
          f"DALI threads {args.threads}; {args.seconds:.0f} s per point")
    for size in args.sizes:
        print(f"  {size}: JPEG q90, {len(photos[size])} bytes")
    results = []
    for size in args.sizes:
        data = photos[size]
        for batch in args.batch:
            try:
                runners = {f"dali-{args.device}": dali_runner(data, args.frame, batch, device=args.device,
                                                              threads=args.threads)}
            except RuntimeError as exc:   # no CUDA device or driver for "mixed"
                print(f"bench_decode: DALI cannot build the {args.device} pipeline here: "
                      f"{str(exc).splitlines()[0]}", file=sys.stderr)
                return 2
            if args.device == "cpu":
                runners = {"codec": codec_runner(data, args.frame, batch), **runners}
            for path, run in runners.items():
                images, wall, cpu = measure(run, batch, seconds=args.seconds)
                results.append(Result(path, size, batch, images, wall, cpu))
                print(f"  {path:10s} {size:>10s} batch {batch:3d}: {results[-1].img_s:8.1f} img/s, "
                      f"{results[-1].img_per_cpu_s:8.1f} img/CPU-s", flush=True)
    print()
    print(table(results))
    if args.stages and args.device == "cpu":
        print("\nstages, ms of CPU per image (batch 8):")
        for size in args.sizes:
            for name, run in stage_runners(photos[size], args.frame, 8).items():
                images, _, cpu = measure(run, 8, seconds=args.seconds)
                print(f"  {size:>10s} {name:28s} {1000 * cpu / images:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
