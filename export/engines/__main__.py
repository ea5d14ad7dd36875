"""`python -m export.engines [--models a,b] [--max-batch N] [--force] [--check] ...`

Builds a raw FP16 TensorRT plan per tensorrt_plan model from model_repository/<m>/1/model.onnx,
for the visible GPU, with a parity check against ONNX Runtime; prints a summary table.
`--check` builds nothing: it reports whether the plans Triton would load here are usable.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from contract import MODEL_REPOSITORY

from .build import DEFAULT_CACHE_DIR, Options, Outcome, build_model, engine_models
from .check import check_repository
from .builders import pick_builder
from .errors import EngineError
from .gpu import current_gpu, require_supported_tensorrt, tensorrt_version
from .request import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_MB

log = logging.getLogger("export.engines")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.engines", description=__doc__.split("\n\n")[1])
    p.add_argument("--models", default="", help="comma list (default: every model whose platform is tensorrt_plan)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="profile max batch (default: the config's max_batch_size)")
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto",
                   help="auto: the TensorRT Python API when importable, else trtexec")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check (recorded in the sidecar)")
    p.add_argument("--no-default-plan", action="store_true",
                   help="only write model.smXY.plan, not the model.plan copy the committed config loads")
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB)
    p.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL, help="builder optimisation level 0-5")
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal (after CUDA_VISIBLE_DEVICES)")
    p.add_argument("--timing-cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="persistent timing caches, one per GPU kind and TensorRT version ($VISIONSERVE_TRT_CACHE)")
    p.add_argument("--check", action="store_true", help="build nothing; check the plans Triton would load here")
    return p.parse_args(argv)


def selected(spec: str, repository: Path) -> list[str]:
    available = engine_models(repository)
    if not spec.strip():
        return available
    models = [m.strip() for m in spec.split(",") if m.strip()]
    wrong = [m for m in models if m not in available]
    if wrong:
        raise EngineError(f"no TensorRT plan for {', '.join(wrong)}: plans are built only for models whose "
                          f"config platform is tensorrt_plan: {', '.join(available)}")
    return models


def summary(outcomes: list[Outcome], total_s: float) -> str:
    rows = [f"{'model':<18} {'status':<11} {'plan':<18} {'MB':>7} {'build s':>8}  parity"]
    for o in outcomes:
        rows.append(f"{o.model:<18} {o.status:<11} {o.plan.name:<18} {o.size_bytes / 1e6:7.1f} "
                    f"{o.seconds:8.1f}  {o.parity or '-'}")
        rows += [f"{'':<18} warning: {w}" for w in o.warnings]
    rows.append(f"total {total_s:.1f} s")
    return "\n".join(rows)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        args = parse_args(argv)
        models = selected(args.models, args.repository)
        if args.check:
            checks = check_repository(args.repository, current_gpu(args.device), models=models)
            for c in checks:
                print(c.message)
            return 0 if all(c.ok for c in checks) else 1
        builder, candidate = pick_builder(args.builder)    # first: "no TensorRT" is the likelier news
        gpu = current_gpu(args.device)
        trt = tensorrt_version()
        require_supported_tensorrt(trt, "this host's tensorrt module / libnvinfer")
        opts = Options(repository=args.repository, max_batch=args.max_batch, force=args.force,
                       parity=not args.no_parity, default_plan=not args.no_default_plan,
                       workspace_mb=args.workspace_mb, opt_level=args.opt_level, device=args.device,
                       timing_cache_dir=args.timing_cache_dir)
        log.info("GPU %d: %s (compute capability %s), TensorRT %s, %s builder", args.device, gpu.name,
                 gpu.compute_capability, trt or "unknown", "python" if candidate else "trtexec")
        outcomes, t0 = [], time.perf_counter()
        for i, model in enumerate(models, 1):
            log.info("[%d/%d] %s", i, len(models), model)
            o = build_model(model, gpu, trt, opts, builder=builder, candidate=candidate, log=log.info)
            log.info("[%d/%d] %s: %s, %.1f MB, %.1f s", i, len(models), model, o.status, o.size_bytes / 1e6, o.seconds)
            outcomes.append(o)
    except EngineError as exc:
        log.error("%s", exc)
        return 2
    print("\n" + summary(outcomes, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
