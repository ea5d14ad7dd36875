"""`python -m export [--models a,b] [--weights-dir D] [--weights model=PATH] [--force]`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from contract import MODEL_REPOSITORY

from . import registry
from .base import DEFAULT_SEED, ExportError, WeightsSearch
from .runner import export_one


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export", description="Export models to batch-dynamic ONNX.")
    p.add_argument("--models", default="", help=f"comma list (default: all): {','.join(registry.MODELS)}")
    p.add_argument("--weights-dir", action="append", default=[],
                   help="folder searched for real weights (repeatable; also VISIONSERVE_WEIGHTS_DIR, os.pathsep-separated)")
    p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                   help="explicit weights file for one model (repeatable)")
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for synthetic weights")
    p.add_argument("--force", action="store_true", help="re-export even when up to date")
    return p.parse_args(argv)


def selected_models(spec: str) -> list[str]:
    if not spec.strip():
        return list(registry.MODELS)
    models = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in models if m not in registry.MODELS]
    if unknown:
        raise ExportError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(registry.MODELS)}")
    return models


def weights_search(args) -> WeightsSearch:
    dirs = list(args.weights_dir)
    dirs += [d for d in os.environ.get("VISIONSERVE_WEIGHTS_DIR", "").split(os.pathsep) if d]
    explicit = {}
    for item in args.weights:
        model, sep, path = item.partition("=")
        if not sep:
            raise ExportError(f"--weights expects MODEL=PATH, got {item!r}")
        explicit[model] = Path(path).resolve()
    return WeightsSearch(explicit, tuple(Path(d).resolve() for d in dirs if Path(d).is_dir()), args.seed)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("export")
    try:
        args = parse_args(argv)
        models = selected_models(args.models)
        search = weights_search(args)
        results = []
        t0 = time.perf_counter()
        for i, model in enumerate(models, 1):
            log.info("[%d/%d] %s: %s", i, len(models), model, registry.record(model).summary)
            r = export_one(model, search, args.repository, force=args.force)
            log.info("[%d/%d] %s: %s, %.1f MB, %.1f s", i, len(models), model, r.status, r.size_bytes / 1e6, r.seconds)
            results.append(r)
    except ExportError as exc:
        log.error("%s", exc)
        return 2
    print(f"\n{'model':<18} {'status':<11} {'MB':>7} {'s':>7}  weights")
    for r in results:
        flag = "SYNTHETIC " if r.synthetic else ""
        print(f"{r.model:<18} {r.status:<11} {r.size_bytes / 1e6:7.1f} {r.seconds:7.1f}  {flag}{r.provenance}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
