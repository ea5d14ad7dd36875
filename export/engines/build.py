"""Build one model's plan: decide, lock, build, check parity, place atomically, record.

The seams (`builder`, `candidate`) are plain functions so tests drive the whole flow
without TensorRT: a builder returning bytes and a candidate runner over them.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import contract as contract_mod
from contract import MODEL_REPOSITORY, REPO_ROOT
from export.base import sha256_file

from . import parity as parity_mod
from . import precision as precision_mod
from .errors import EngineError, TensorRTUnavailable
from .gpu import GpuInfo
from .lock import place_bytes, place_file, target_lock
from .metadata import (
    DEFAULT_PLAN,
    Sidecar,
    Wanted,
    onnx_sha256,
    plan_filename,
    read_sidecar,
    sidecar_path,
    staleness,
    write_sidecar,
)
from .profiles import Profile, check_onnx_inputs, derive_profile
from .request import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_MB, BuildOutput, BuildRequest, assert_raw_plan, build_flags

ONNX_NAME = "model.onnx"
DEFAULT_CACHE_DIR = Path(os.environ.get("VISIONSERVE_TRT_CACHE", REPO_ROOT / "build" / "trt-timing-cache"))

Builder = Callable[[BuildRequest], BuildOutput]
Candidate = Callable[[bytes], object]      # plan bytes -> Polygraphy-style runner


@dataclass(frozen=True)
class Options:
    repository: Path = MODEL_REPOSITORY
    max_batch: int | None = None
    force: bool = False
    parity: bool = True
    default_plan: bool = True               # also place model.plan (what the committed config loads)
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    opt_level: int = DEFAULT_OPT_LEVEL
    device: int = 0
    timing_cache_dir: Path = DEFAULT_CACHE_DIR
    lock_timeout_s: float = 3600.0
    fp32_name_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    model: str
    status: str                             # "built" | "up-to-date"
    plan: Path
    size_bytes: int
    seconds: float
    parity: str                             # figures, "skipped (...)" or "" when up to date
    warnings: tuple[str, ...] = field(default_factory=tuple)


def engine_models(repository: Path = MODEL_REPOSITORY) -> list[str]:
    """Models whose config asks for a TensorRT plan (only those get one)."""
    return [n for n, c in contract_mod.load_all(repository).items() if c.config.platform == "tensorrt_plan"]


def onnx_input_dims(onnx_model) -> dict[str, tuple]:
    inits = {i.name for i in onnx_model.graph.initializer}   # old exports list initializers as inputs
    out = {}
    for vi in onnx_model.graph.input:
        if vi.name in inits:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in vi.type.tensor_type.shape.dim)
        out[vi.name] = dims
    return out


@dataclass(frozen=True)
class Plan:
    """Everything decided before building (cheap: no TensorRT, no GPU work)."""

    model: str
    contract: object
    onnx: Path
    onnx_sha256: str
    profile: Profile
    precision: precision_mod.PrecisionPlan
    flags: dict
    target: Path


def prepare(model: str, gpu: GpuInfo, opts: Options) -> Plan:
    import onnx

    c = contract_mod.load(model, opts.repository)
    if c.config.platform != "tensorrt_plan":
        raise EngineError(f"{model}: config platform is {c.config.platform or c.config.backend!r}, "
                          "not tensorrt_plan; only such models get plans")
    vdir = c.version_dir()
    src = vdir / ONNX_NAME
    if not src.is_file():
        raise EngineError(f"{model}: no ONNX at {src}; run: make export-onnx MODELS={model}")
    profile = derive_profile(c, opts.max_batch)
    graph = onnx.load(str(src), load_external_data=False)
    check_onnx_inputs(profile, onnx_input_dims(graph))
    prec = precision_mod.fp32_nodes(graph, model, opts.fp32_name_patterns)
    flags = build_flags(profile, prec, opts.workspace_mb, opts.opt_level)
    return Plan(model, c, src, onnx_sha256(src), profile, prec, flags, vdir / plan_filename(gpu.compute_capability))


def _current(p: Plan, gpu: GpuInfo, trt_version: str | None) -> tuple[list[str], list[str]]:
    if not p.target.is_file():
        return ["no plan yet"], []
    if trt_version is None:
        return ["TensorRT version of this host unknown before building"], []
    return staleness(read_sidecar(p.target), sha256_file(p.target), Wanted(trt_version, gpu, p.onnx_sha256, p.flags))


def build_model(model: str, gpu: GpuInfo, trt_version: str | None, opts: Options, *, builder: Builder,
                candidate: Candidate | None, log: Callable[[str], None] = print) -> Outcome:
    p = prepare(model, gpu, opts)
    prof = p.profile
    if not prof.serves_config:
        log(f"  {model}: WARNING profile max {prof.max_batch} < config max_batch_size {prof.config_max_batch}: "
            f"Triton will refuse this plan unless max_batch_size in {p.contract.path} is <= {prof.max_batch}")
    reasons, warns = _current(p, gpu, trt_version)
    if not opts.force and not reasons:
        _place_default(p, opts, log)
        return Outcome(model, "up-to-date", p.target, p.target.stat().st_size, 0.0, "", tuple(warns))
    with target_lock(p.target, opts.lock_timeout_s, on_wait=log):
        reasons, warns = _current(p, gpu, trt_version)    # another process may have just built it
        if not opts.force and not reasons:
            log(f"  {model}: built meanwhile by another process; up to date")
            _place_default(p, opts, log)
            return Outcome(model, "up-to-date", p.target, p.target.stat().st_size, 0.0, "", tuple(warns))
        log(f"  {model}: building {p.target.name} ({'; '.join(reasons) if not opts.force else 'forced'})")
        out, report, seconds = compile_plan(p, gpu, trt_version, opts, builder=builder, candidate=candidate,
                                            log=log, workdir=p.target.parent)
        place_bytes(out.plan, p.target)
        write_sidecar(p.target, make_sidecar(p, gpu, out, sha256_file(p.target), seconds, report))
    _place_default(p, opts, log)
    return Outcome(model, "built", p.target, len(out.plan), seconds, report.get("figures", ""), tuple(warns))


def compile_plan(p: Plan, gpu: GpuInfo, trt_version: str | None, opts: Options, *, builder: Builder,
                 candidate: Candidate | None, log: Callable[[str], None], workdir: Path
                 ) -> tuple[BuildOutput, dict, float]:
    """Mark the FP32 nodes, build, refuse framework headers, check parity; places nothing.

    `workdir` holds the marked ONNX copy while TensorRT reads it (a writable folder on the
    same volume as the result, or any scratch folder). Returns (output, parity report, seconds).
    """
    prof = p.profile
    log(f"  {p.model}: profile batch {prof.min_batch}/{prof.opt_batch}/{prof.max_batch}, "
        f"{'FP16' if p.precision.fp16 else 'FP32'}, {len(p.precision.fp32_nodes)} nodes kept FP32 "
        f"{p.precision.reasons}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".engine-{p.model}-", dir=workdir) as tmp:
        marked = precision_mod.marked_copy(p.onnx, Path(tmp) / ONNX_NAME, p.precision)
        cache = Path(opts.timing_cache_dir) / f"{gpu.sm}-trt{trt_version or 'unknown'}.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        out = builder(BuildRequest(p.model, marked, prof, p.precision, cache, opts.workspace_mb,
                                   opts.opt_level, opts.device, log))
        try:
            assert_raw_plan(out.plan)
        except ValueError as exc:
            raise EngineError(f"{p.model}: {exc}") from exc
        report = _parity(p, out.plan, opts, candidate, log)
    return out, report, time.perf_counter() - t0


def make_sidecar(p: Plan, gpu: GpuInfo, out: BuildOutput, plan_sha256: str, seconds: float, report: dict,
                 plan_key: str = "") -> Sidecar:
    return Sidecar(model=p.model, tensorrt_version=out.tensorrt_version, gpu_name=gpu.name,
                   compute_capability=gpu.compute_capability, onnx_sha256=p.onnx_sha256,
                   plan_sha256=plan_sha256, build_flags=p.flags, builder=out.builder,
                   build_seconds=round(seconds, 2), parity=report, plan_key=plan_key,
                   built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _parity(p: Plan, plan: bytes, opts: Options, candidate: Candidate | None, log) -> dict:
    if not opts.parity:
        return {"passed": None, "figures": "skipped (--no-parity)"}
    if candidate is None:
        raise TensorRTUnavailable(f"{p.model}: the parity check needs the TensorRT Python API to run the plan "
                                  "(trtexec-only host); pass --no-parity to accept the plan unchecked")
    batches = tuple(sorted({1, p.profile.max_batch}))
    log(f"  {p.model}: parity vs ONNX Runtime at batch {' and '.join(map(str, batches))}")
    report = parity_mod.check(p.model, parity_mod.onnxrt_runner(p.onnx), candidate(plan),
                              p.contract.with_variable_dims("max").inputs,
                              tuple(o.name for o in p.contract.outputs), batches)
    parity_mod.require(report)      # a failed check fails the build: nothing is placed
    log(f"  {p.model}: parity ok ({report.figures()})")
    return report.as_dict()


def _place_default(p: Plan, opts: Options, log) -> None:
    """model.plan (+ sidecar) = this GPU's plan, so the committed config serves it as is."""
    if not opts.default_plan or not p.target.is_file():
        return
    default = p.target.with_name(DEFAULT_PLAN)
    with target_lock(default, opts.lock_timeout_s, on_wait=log):
        src_sc = sidecar_path(p.target)
        dst_sc = sidecar_path(default)
        if (default.is_file() and dst_sc.is_file() and dst_sc.read_bytes() == src_sc.read_bytes()
                and sha256_file(default) == read_sidecar(p.target).plan_sha256):
            return
        place_file(p.target, default)
        place_file(src_sc, dst_sc)
