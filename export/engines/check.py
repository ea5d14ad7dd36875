"""May the plans in a repository be served on this host? (for serving and `--check`)

Serving code calls `check_model` / `check_repository` before starting Triton with the
production profile, so a stale or foreign plan is refused with a message naming the plan,
the reason and the rebuild command, instead of failing inside Triton (or, for a plan
from another GPU of the same compute capability, running untuned without a word).
"""
from __future__ import annotations

from pathlib import Path

import contract as contract_mod
from contract import MODEL_REPOSITORY

from .gpu import GpuInfo, current_gpu, tensorrt_version
from .metadata import PlanCheck, cc_model_filenames, check_plan, served_plan

_UNSET = object()


def check_model(model: str, repository: Path = MODEL_REPOSITORY, gpu: GpuInfo | None = None,
                trt_version=_UNSET) -> PlanCheck:
    """Check the plan Triton would load for `model` on `gpu` (default: visible device 0).

    Uses the config's own cc_model_filenames when it has them, else the per-cc plans
    present, else default_model_filename / model.plan. `trt_version` defaults to this
    host's (None skips that comparison, e.g. a check run outside the serving container).
    """
    c = contract_mod.load(model, repository)
    gpu = gpu or current_gpu()
    trt = tensorrt_version() if trt_version is _UNSET else trt_version
    vdir = c.version_dir()
    cc_map = dict(c.config.cc_model_filenames) or cc_model_filenames(vdir)
    plan = served_plan(vdir, gpu, cc_map, c.config.default_model_filename)
    return check_plan(plan, gpu, trt, model=model, config_max_batch=c.max_batch_size)


def check_repository(repository: Path = MODEL_REPOSITORY, gpu: GpuInfo | None = None,
                     trt_version=_UNSET, models: list[str] | None = None) -> list[PlanCheck]:
    gpu = gpu or current_gpu()
    names = models or [n for n, c in contract_mod.load_all(repository).items()
                       if c.config.platform == "tensorrt_plan"]
    return [check_model(n, repository, gpu, trt_version) for n in names]
