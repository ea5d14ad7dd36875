"""Plan names, the sidecar beside each plan, and the staleness decision.

Layout of a version directory (model_repository/<m>/1/):

    model.onnx                   batch-dynamic ONNX (make export-onnx)
    model.sm90.plan              raw TensorRT plan for compute capability 9.0
    model.sm90.plan.json         its sidecar (this module)
    model.plan, model.plan.json  copy of the plan built for this host's GPU: what the
                                 committed config.pbtxt (default_model_filename) loads

Several GPU kinds share one repository through Triton's `cc_model_filenames`
({"9.0": "model.sm90.plan", "8.6": "model.sm86.plan"}), see `cc_model_filenames()`.

A plan is used only when its sidecar says it was built by this TensorRT version, for
this compute capability, from the ONNX now on disk, with the build flags the current
config implies, and describes this very plan file (its sha256). Anything else is
stale or foreign, and `check_plan` says which, why, and the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from export.base import sha256_file

from .gpu import GpuInfo, cc_from_sm, sm_tag

DEFAULT_PLAN = "model.plan"
SIDECAR_SUFFIX = ".json"
SIDECAR_SCHEMA = 1
_CC_PLAN = re.compile(r"model\.(sm\d+)\.plan")


def onnx_sha256(onnx: Path) -> str:
    """sha256 of model.onnx, folding in model.onnx.data when the weights live beside it."""
    digest = sha256_file(onnx)
    data = Path(onnx).with_name(Path(onnx).name + ".data")
    if data.is_file():
        digest = hashlib.sha256(f"{digest}:{sha256_file(data)}".encode()).hexdigest()
    return digest


def plan_filename(cc: str) -> str:
    return f"model.{sm_tag(cc)}.plan"


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def cc_model_filenames_from_names(names) -> dict[str, str]:
    """Pure: file names in a version dir -> Triton's cc_model_filenames map (sorted by cc)."""
    found = {}
    for n in names:
        m = _CC_PLAN.fullmatch(n)
        if m:
            found[cc_from_sm(m.group(1))] = n
    return dict(sorted(found.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("."))))


def cc_model_filenames(version_dir: Path) -> dict[str, str]:
    """`cc_model_filenames` for a version dir: {"9.0": "model.sm90.plan", ...}.

    Only plans that have a sidecar count (a plan without one is of unknown origin and is
    never pointed at). Reads the directory listing; writes nothing.
    """
    d = Path(version_dir)
    if not d.is_dir():
        return {}
    names = {p.name for p in d.iterdir()}
    return cc_model_filenames_from_names(n for n in names if n + SIDECAR_SUFFIX in names)


@dataclass(frozen=True)
class Sidecar:
    model: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    plan_sha256: str
    build_flags: dict              # canonical: profile, precision, workspace, recipe version
    builder: str = ""              # "tensorrt-python" | "trtexec" (provenance, not compared)
    build_seconds: float = 0.0
    parity: dict = field(default_factory=dict)
    built_at: str = ""
    plan_key: str = ""             # the plan store's key folder (export/engines/store.py), when stored
    schema: int = SIDECAR_SCHEMA

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Sidecar":
        d = json.loads(text)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def read_sidecar(plan: Path) -> Sidecar | None:
    try:
        return Sidecar.from_json(sidecar_path(plan).read_text())
    except (OSError, ValueError, TypeError):
        return None


def write_sidecar(plan: Path, sidecar: Sidecar) -> Path:
    """Atomic: a reader sees the old sidecar or the new one, never half of one."""
    dst = sidecar_path(plan)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.write_text(sidecar.to_json())
    os.replace(tmp, dst)
    return dst


@dataclass(frozen=True)
class Wanted:
    """What a plan must have been built for, on this host, now."""

    tensorrt_version: str | None   # None: no TensorRT here (checked only as far as possible)
    gpu: GpuInfo
    onnx_sha256: str | None        # None: no ONNX here (the plan's origin cannot be re-checked)
    build_flags: dict | None       # None: not compared (e.g. checking without a config)


def staleness(sidecar: Sidecar | None, plan_sha256: str | None, wanted: Wanted) -> tuple[list[str], list[str]]:
    """Pure decision: (reasons the plan must not be used, warnings that do not block).

    Empty reasons = up to date. Compute capability or TensorRT version mismatch makes a
    plan unusable (TensorRT refuses it); a different ONNX or build flags make it stale; a
    different GPU name with the same compute capability runs (TensorRT warns) and is only
    a warning: rebuild with --force for tactics timed on this exact GPU.
    """
    if sidecar is None:
        return ["no sidecar: the plan's origin (TensorRT version, GPU, ONNX) is unknown"], []
    reasons, warnings = [], []
    if plan_sha256 is not None and sidecar.plan_sha256 != plan_sha256:
        reasons.append("the sidecar describes a different plan file (sha256 differs): a build was "
                       "interrupted or the plan was replaced by hand")
    if sidecar.compute_capability != wanted.gpu.compute_capability:
        reasons.append(f"built for compute capability {sidecar.compute_capability} ({sidecar.gpu_name}), "
                       f"this GPU is {wanted.gpu.compute_capability} ({wanted.gpu.name})")
    elif sidecar.gpu_name != wanted.gpu.name:
        warnings.append(f"built on {sidecar.gpu_name}, running on {wanted.gpu.name} (same compute capability "
                        f"{wanted.gpu.compute_capability}): it runs, but tactics were timed on the other GPU")
    if wanted.tensorrt_version is not None and sidecar.tensorrt_version != wanted.tensorrt_version:
        reasons.append(f"built with TensorRT {sidecar.tensorrt_version}, this host has {wanted.tensorrt_version}")
    if wanted.onnx_sha256 is not None and sidecar.onnx_sha256 != wanted.onnx_sha256:
        reasons.append(f"model.onnx changed since the build (sha256 {sidecar.onnx_sha256[:12]} -> "
                       f"{wanted.onnx_sha256[:12]})")
    if wanted.build_flags is not None and sidecar.build_flags != wanted.build_flags:
        diff = sorted(k for k in set(sidecar.build_flags) | set(wanted.build_flags)
                      if sidecar.build_flags.get(k) != wanted.build_flags.get(k))
        reasons.append(f"build flags changed ({', '.join(diff)}): config.pbtxt, MAX_BATCH or the FP32 rule moved")
    return reasons, warnings


def rebuild_command(model: str, max_batch: int | None = None) -> str:
    extra = f" MAX_BATCH={max_batch}" if max_batch else ""
    return f"make export-engines MODELS={model}{extra}"


@dataclass(frozen=True)
class PlanCheck:
    plan: Path
    status: str                    # "ok" | "stale" | "foreign" | "missing"
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_plan(plan: Path, gpu: GpuInfo, tensorrt_version: str | None, *, model: str | None = None,
               build_flags: dict | None = None, onnx: Path | None = None,
               config_max_batch: int | None = None) -> PlanCheck:
    """May `plan` be served on this GPU / TensorRT? With a message a person can act on.

    "foreign": built elsewhere (other compute capability or TensorRT, or no sidecar);
    "stale": built here but from another ONNX / other flags / a plan the sidecar does not
    describe; "missing": no plan. `onnx` defaults to model.onnx beside the plan when there.
    `config_max_batch` adds Triton's own load check (profile max >= max_batch_size).
    """
    plan = Path(plan)
    model = model or plan.parent.parent.name
    cmd = rebuild_command(model)
    if not plan.is_file():
        return PlanCheck(plan, "missing", ("no plan file",), (), f"{plan}: missing; build it with: {cmd}")
    sc = read_sidecar(plan)
    onnx = Path(onnx) if onnx is not None else plan.with_name("model.onnx")
    onnx_sha = onnx_sha256(onnx) if onnx.is_file() else None
    reasons, warnings = staleness(sc, sha256_file(plan), Wanted(tensorrt_version, gpu, onnx_sha, build_flags))
    if sc is not None and config_max_batch is not None:
        plan_max = sc.build_flags.get("profile", {}).get("max_batch")
        if plan_max is not None and plan_max < config_max_batch:
            reasons.append(f"profile max batch {plan_max} < config max_batch_size {config_max_batch}: "
                           "Triton refuses to load it")
    if not reasons:
        status = "ok"
    elif sc is None or any(r.startswith(("built for compute", "built with TensorRT")) for r in reasons):
        status = "foreign"
    else:
        status = "stale"
    if status == "ok":
        msg = f"{plan}: up to date (TensorRT {sc.tensorrt_version}, {sc.gpu_name})"
        if warnings:
            msg += "; " + "; ".join(warnings)
    else:
        msg = f"{plan}: {status.upper()} - {'; '.join(reasons)}. Rebuild on this host with: {cmd}"
    return PlanCheck(plan, status, tuple(reasons), tuple(warnings), msg)


def served_plan(version_dir: Path, gpu: GpuInfo, cc_map: dict[str, str] | None = None,
                default: str = DEFAULT_PLAN) -> Path:
    """The file Triton loads on `gpu`: the cc_model_filenames entry for its cc, else the default."""
    cc_map = cc_model_filenames(version_dir) if cc_map is None else cc_map
    return Path(version_dir) / cc_map.get(gpu.compute_capability, default or DEFAULT_PLAN)
