"""Serving profiles: derived model repositories built from the committed production one.

`model_repository/` (committed) is the production GPU profile: TensorRT plans, CUDA
graphs, warmup at the batch sizes the batcher forms. Every other profile is produced by
ONE transform here, never hand-copied:

  cpu       the embedded default (the tritonserver from the nvidia-pytriton wheel has
            only the python backend): every network model becomes a python-backend
            model running pipelines/onnx_model.py over its model.onnx with
            OpenVINO (bf16 where the CPU has it natively, else f32; ONNX Runtime when
            OpenVINO is absent or cannot compile the graph), every usable core per
            model, KIND_CPU, no CUDA graphs, warmup at batch 1. The runtime, precision
            and threads come from serving/cpu_machine.py and are recorded as config
            parameters (cpu_runtime, cpu_precision, cpu_threads).
  openvino  the same CPU choices for a Triton that has the native OpenVINO backend (NGC
            Triton images ship it): backend "openvino" reading model.onnx directly,
            parameters per Triton's openvino_backend (PERFORMANCE_HINT, NUM_STREAMS,
            INFERENCE_NUM_THREADS, HINT_BF16); artifacts copied (shippable).
  onnx-gpu  a GPU Triton without prebuilt plans: platform onnxruntime_onnx, KIND_GPU,
            TensorRT EP in FP16 with an engine cache (CUDA EP runs what TensorRT cannot).

All keep names, inputs, outputs, max_batch_size, dynamic batching (queue policy
included), ensembles and BLS python models. Each model's weight provenance (from
`<m>/1/export.json`) is injected as the config parameter "weights_provenance".

    repo = derive("cpu", dest=Path("build/repositories/cpu"), cpu=CpuSettings(runtime="onnxruntime"))
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

import contract
from contract import MODEL_REPOSITORY, REPO_ROOT, cache
from contract.facts import facts
from contract.shapes import shape_ranges
from pipelines import ENTRY_FILE, entry_source

from . import encoded
from .cpu_machine import CpuSettings, ResolvedCpu

PROFILES = ("cpu", "openvino", "onnx-gpu")
CPU_PROFILES = ("cpu", "openvino")
# the python-backend model a network becomes in the cpu profile: pipelines/onnx_model.py
ONNX_RUNNER = entry_source("onnx_model")
DERIVED_ROOT = REPO_ROOT / "build" / "repositories"

# CPU: GPU-tuned queue deadlines (200 ms) would REJECT ordinary load on a CPU that is
# 20-100x slower; deadlines are raised to at least this. max_queue_size, the bound that
# keeps latency from growing without limit, is kept as committed.
CPU_MIN_QUEUE_TIMEOUT_US = 10_000_000
# OpenVINO's compiled-model cache: restarts skip recompiling unchanged graphs.
OPENVINO_CACHE = REPO_ROOT / "build" / "openvino-cache"

# onnx-gpu: TensorRT EP options (Triton's onnxruntime backend parameter names).
TRT_WORKSPACE_BYTES = str(2 << 30)
DEFAULT_ENGINE_CACHE = "/tmp/visionserve-trt-cache"


# bf16 on the CPU is a speed choice held to f32 by the parity checks on REAL weights
# (tests/unit/test_cpu_bf16_parity.py); a seeded stand-in has no accuracy to keep, and in bf16
# it drifts from the reference frameworks the served-path tests compare it with (synthetic
# YOLO11s on bus.jpg: 63 of 100 detections without an f32 partner). So it is served in f32
# unless the user fixed the precision.
SYNTHETIC_F32 = ("f32: synthetic weights (bf16 is served only where its parity with f32 is checked, "
                 "on real weights)")


class ProfileError(ValueError):
    """A profile cannot be derived as asked (unknown profile, missing artifacts)."""


@dataclass(frozen=True)
class Derived:
    profile: str
    path: Path
    models: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)   # model -> why it was left out
    cpu: ResolvedCpu | None = None                           # CPU profiles: what the models run with
    encoded: tuple[str, ...] = ()                            # the encoded entry points' models (serving/encoded.py)


# -- the pure transform ------------------------------------------------------------------
def transform(config: mc.ModelConfig, profile: str, provenance: str | None = None,
              engine_cache: str = DEFAULT_ENGINE_CACHE, cpu: ResolvedCpu | None = None,
              openvino_cache: Path | None = OPENVINO_CACHE, synthetic: bool = False) -> mc.ModelConfig:
    """The derived config of one model (a new message; `config` is untouched).

    `cpu`: the resolved CPU runtime settings (default: CpuSettings() on this machine).
    `synthetic`: the model's weights are a seeded stand-in (its export record says so)."""
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    out = mc.ModelConfig()
    out.CopyFrom(config)
    kind = _kind(config)
    if kind == "network":
        if profile in CPU_PROFILES:
            cpu = cpu or CpuSettings().resolve()
            _to_cpu(out)
            if synthetic and cpu.precision == "bf16" and not cpu.precision_fixed:
                cpu = cpu.with_runtime(cpu.runtime, "f32")
                out.parameters["cpu_precision_why"].string_value = SYNTHETIC_F32
            if profile == "cpu":
                _python_runner(out, cpu, openvino_cache)
            else:
                _native_openvino(out, cpu, synthetic)
        else:
            _to_onnx_gpu(out, engine_cache)
    if profile in CPU_PROFILES and kind != "ensemble" and out.HasField("dynamic_batching"):
        _raise_queue_timeouts(out.dynamic_batching)
    if provenance:
        out.parameters["weights_provenance"].string_value = provenance
    return out


def _kind(config: mc.ModelConfig) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend == "python":
        return "python"
    return "network"


def _to_cpu(cfg: mc.ModelConfig) -> None:
    cfg.platform = ""
    # One instance per model: its pool has every usable core (a single busy route uses
    # the whole machine); the dynamic batcher, not extra processes, fills it.
    del cfg.instance_group[:]
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    # CUDA graphs and GPU accelerators mean nothing to ONNX Runtime on CPU.
    cfg.ClearField("optimization")
    # Warmup exists so a GPU model is ready only when engines/graphs are built and fast.
    # On CPU there is nothing to build; one batch-1 pass still catches a broken graph at
    # load time (fail fast) without spending seconds per model at batch 8-32 on 2 cores.
    for w in cfg.model_warmup:
        w.batch_size = 1
        w.name = "zeros_batch_1"
    if len(cfg.model_warmup) > 1:
        del cfg.model_warmup[1:]


def _facts(cfg: mc.ModelConfig):
    return facts(contract.ModelContract(cfg.name, Path(cfg.name), cfg))


def _python_runner(cfg: mc.ModelConfig, cpu: ResolvedCpu, openvino_cache: Path | None) -> None:
    cfg.backend = "python"
    f = _facts(cfg)
    if f.cpu_prefer_runtime == "onnxruntime" and cpu.runtime == "openvino":
        cpu = cpu.with_runtime(f.cpu_prefer_runtime, "f32")
        cfg.parameters["cpu_runtime_why"].string_value = f.cpu_prefer_runtime_why
    never = f.cpu_f32_only
    if never:       # e.g. pixel-coordinate arithmetic (its config says why)
        cpu = cpu.with_runtime(cpu.runtime, "f32")
        cfg.parameters["cpu_precision_why"].string_value = "f32 always: " + never
    for key, value in cpu.parameters().items():
        cfg.parameters[key].string_value = value
    if openvino_cache and cpu.runtime == "openvino":
        cfg.parameters["openvino_cache"].string_value = str(openvino_cache)


def _native_openvino(cfg: mc.ModelConfig, cpu: ResolvedCpu, synthetic: bool = False) -> None:
    """Triton's openvino backend (parameter names from its README). ONE stream with the
    LATENCY hint, as in the python runner: batches come from Triton's dynamic batcher.
    Threads: only when the user fixed them (the backend's default is every core of the
    host it runs on, which is what the cpu profile derives here). bf16: OpenVINO already
    picks it by itself on CPUs with native bf16; HINT_BF16 only when asked explicitly.
    The backend has no parameter that forces f32, so the geometry models (never bf16) run
    in Triton's onnxruntime backend on the CPU instead (NGC images ship both)."""
    never = _facts(cfg).cpu_f32_only or (SYNTHETIC_F32 if synthetic and not cpu.precision_fixed else "")
    if never:
        cfg.backend = ""
        cfg.platform = "onnxruntime_onnx"
        cfg.parameters["cpu_precision_why"].string_value = "f32 always (onnxruntime): " + never
        return
    cfg.backend = "openvino"
    cfg.default_model_filename = "model.onnx"
    params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if cpu.threads_fixed:
        params["INFERENCE_NUM_THREADS"] = str(cpu.threads)
    if cpu.precision == "bf16" and cpu.precision_fixed:
        params["HINT_BF16"] = "YES"
    for key, value in params.items():
        cfg.parameters[key].string_value = value


def _raise_queue_timeouts(db: mc.ModelDynamicBatching) -> None:
    if db.HasField("default_queue_policy"):
        qp = db.default_queue_policy
        if 0 < qp.default_timeout_microseconds < CPU_MIN_QUEUE_TIMEOUT_US:
            qp.default_timeout_microseconds = CPU_MIN_QUEUE_TIMEOUT_US


def _to_onnx_gpu(cfg: mc.ModelConfig, engine_cache: str) -> None:
    cfg.backend = ""
    cfg.platform = "onnxruntime_onnx"
    for g in cfg.instance_group:
        g.kind = mc.ModelInstanceGroup.KIND_GPU
    # CUDA graphs are a TensorRT-backend setting; the TRT EP builds its own engines.
    cfg.optimization.ClearField("cuda")
    ea = cfg.optimization.execution_accelerators
    del ea.gpu_execution_accelerator[:]
    trt = ea.gpu_execution_accelerator.add(name="tensorrt")
    # One set of engine shapes covering every batch the dynamic batcher can form, so a new
    # batch size never triggers an engine rebuild under load: the plans' rule (contract/shapes.py).
    shapes = shape_ranges(contract.ModelContract(cfg.name, Path(cfg.name), cfg))
    params = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": TRT_WORKSPACE_BYTES,
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{engine_cache}/{cfg.name}",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": f"{engine_cache}/{cfg.name}",
        "trt_profile_min_shapes": shapes.shapes("min"),
        "trt_profile_opt_shapes": shapes.shapes("opt"),
        "trt_profile_max_shapes": shapes.shapes("max"),
    }
    for k, v in params.items():
        trt.parameters[k] = v
    # Anything TensorRT cannot take falls back to the CUDA EP, which ORT adds by itself
    # for KIND_GPU; the committed warmup (batch 8-32) builds the engine before "ready".


# -- building a repository folder -----------------------------------------------------------
def derive(profile: str, dest: Path | None = None, source: Path = MODEL_REPOSITORY,
           models: list[str] | None = None, skip_missing: bool = False,
           engine_cache: str = DEFAULT_ENGINE_CACHE, copy: bool | None = None,
           cpu: CpuSettings | ResolvedCpu | None = None) -> Derived:
    """Build `dest` (default build/repositories/<profile>) from `source`.

    Artifacts are symlinked for "cpu" (served in place) and copied (hard-linked where
    possible) for "onnx-gpu", whose folder is meant to be shipped to a GPU host or
    mounted into a container where links to this checkout would dangle; `copy` overrides.

    `cpu`: CPU runtime settings for the cpu/openvino profiles (default CpuSettings(),
    resolved against this machine: usable cores, native bf16, openvino installed).

    `models`: only these (plus what their ensembles/pipelines call). A missing artifact
    raises ProfileError naming it and the command that builds it, unless `skip_missing`:
    then the model and every pipeline that needs it are left out and listed in `skipped`.
    """
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    source = Path(source)
    dest = Path(dest) if dest else DERIVED_ROOT / profile
    contracts = contract.load_all(source)
    try:
        cache.check(contracts)      # a response cache Triton cannot honour stops the derivation
    except cache.CacheError as exc:
        raise ProfileError(str(exc)) from exc
    wanted = _closure(models or list(contracts), contracts)

    problems = {m: _missing(contracts[m]) for m in wanted}
    problems = {m: p for m, p in problems.items() if p}
    skipped: dict[str, str] = {m: "missing " + ", ".join(map(str, p)) for m, p in problems.items()}
    # A pipeline is unusable when anything it calls is.
    changed = True
    while changed:
        changed = False
        for m in wanted:
            if m in skipped:
                continue
            bad = [d for d in _dependencies(contracts[m]) if d in skipped or d not in contracts]
            if bad:
                skipped[m] = f"needs {', '.join(bad)}"
                changed = True
    if problems and not skip_missing:
        lines = [f"  {p}" for ps in problems.values() for p in ps]
        exportable = sorted(m for m in problems if contracts[m].kind == "network")
        hint = f"\nBuild them with: make export-onnx MODELS={','.join(exportable)}" if exportable else ""
        if any(contracts[m].kind == "python" for m in problems):
            hint += "\n(a missing model.py is a source file of the repository: restore it from git)"
        raise ProfileError(f"cannot derive the {profile!r} repository; missing artifacts:\n"
                           + "\n".join(lines) + hint)

    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    kept = [m for m in wanted if m not in skipped]
    copy = profile != "cpu" if copy is None else copy
    resolved = None
    if profile in CPU_PROFILES:
        resolved = cpu if isinstance(cpu, ResolvedCpu) else (cpu or CpuSettings()).resolve()
    for m in kept:
        _write_model(contracts[m], tmp / m, profile, engine_cache, copy, resolved)
    entry_models = encoded.write({m: contracts[m] for m in kept}, tmp, profile,
                                 resolved.threads if resolved else None)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return Derived(profile, dest, tuple(kept), skipped, resolved, entry_models)


def _dependencies(c: contract.ModelContract) -> tuple[str, ...]:
    return c.steps   # an ensemble's steps, or a BLS pipeline's "steps" parameter


def _closure(names, contracts) -> list[str]:
    seen: list[str] = []
    todo = list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in contracts:
            raise ProfileError(f"unknown model {n!r}; the repository has {', '.join(contracts)}")
        seen.append(n)
        todo.extend(_dependencies(contracts[n]))
    return sorted(seen)


def _missing(c: contract.ModelContract) -> list[Path]:
    v = c.version_dir()
    if c.kind == "network":
        need = [v / "model.onnx", v / "export.json"]
    elif c.kind == "python":
        need = [v / "model.py"]
    else:
        need = []
    return [_rel(p) for p in need if not p.is_file()]


def _rel(p: Path) -> Path:
    try:
        return p.relative_to(REPO_ROOT)
    except ValueError:
        return p


def synthetic(c: contract.ModelContract) -> bool:
    """Whether the model's export record says its weights are a seeded stand-in."""
    record = c.version_dir() / "export.json"
    try:
        return bool(record.is_file() and json.loads(record.read_text()).get("synthetic"))
    except ValueError:
        return False


def provenance(c: contract.ModelContract) -> str | None:
    record = c.version_dir() / "export.json"
    if not record.is_file():
        return None
    try:
        return str(json.loads(record.read_text())["provenance"])
    except (ValueError, KeyError) as exc:
        raise ProfileError(f"{record}: unreadable export record ({exc}); re-export: "
                           f"make export-onnx MODELS={c.name}") from exc


def _place(src: Path, dst: Path, copy: bool) -> None:
    src = src.resolve()
    if not copy:
        dst.symlink_to(src)   # a 250 MB graph is not duplicated; the source stays the truth
    elif src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _write_model(c: contract.ModelContract, out: Path, profile: str, engine_cache: str, copy: bool,
                 cpu: ResolvedCpu | None) -> None:
    version = out / "1"
    version.mkdir(parents=True)
    src = c.version_dir()
    if c.kind == "network":
        for name in ("model.onnx", "model.onnx.data", "export.json"):
            if (src / name).exists():
                _place(src / name, version / name, copy)
        if profile == "cpu":
            (version / ENTRY_FILE).write_text(ONNX_RUNNER)
    elif c.kind == "python" and src.is_dir():
        # model.py and its data (vocabularies, charsets): everything in the version dir.
        for item in sorted(src.iterdir()):
            if item.name != "__pycache__":
                _place(item, version / item.name, copy)
    cfg = transform(c.config, profile, provenance(c), engine_cache, cpu, synthetic=synthetic(c))
    if profile == "cpu":
        cfg = cpu_override(c, cfg)
    (out / "config.pbtxt").write_text(
        f"# DERIVED by serving/profiles.py (profile {profile!r}) from {_rel(c.path)}; do not edit.\n"
        + contract.to_text(cfg))


CPU_OVERRIDE = "cpu_override.pbtxt"   # beside config.pbtxt: batching measured on CPU (`make tune`)


def cpu_override(c: contract.ModelContract, cfg: mc.ModelConfig) -> mc.ModelConfig:
    """The CPU profile's dynamic_batching / instance_group from `<model>/cpu_override.pbtxt` when
    one exists (what `make tune` measured on this profile); the GPU config is never changed."""
    path = c.path.parent / CPU_OVERRIDE
    if not path.is_file():
        return cfg
    over = contract.parse_config(path.read_text(), path)
    unknown = [f.name for f, _ in over.ListFields() if f.name not in ("dynamic_batching", "instance_group")]
    if unknown:
        raise ProfileError(f"{path}: a CPU override sets only dynamic_batching and instance_group, not {unknown}")
    if over.HasField("dynamic_batching"):
        cfg.dynamic_batching.CopyFrom(over.dynamic_batching)
        _raise_queue_timeouts(cfg.dynamic_batching)
    if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in over.instance_group):
        raise ProfileError(f"{path}: a CPU override's instances run on the CPU (KIND_CPU), not KIND_GPU")
    if over.instance_group:
        del cfg.instance_group[:]
        cfg.instance_group.extend(over.instance_group)
    return cfg


def summary(config: mc.ModelConfig) -> dict:
    """What a profile must not change: names, I/O, batching (used by tests and checks)."""
    d = json_format.MessageToDict(config, preserving_proto_field_name=True)
    keep = ("name", "max_batch_size", "input", "output", "ensemble_scheduling")
    s = {k: d.get(k) for k in keep}
    db = d.get("dynamic_batching")
    if db is not None:
        db = dict(db)
        db.get("default_queue_policy", {}).pop("default_timeout_microseconds", None)
    s["dynamic_batching"] = db
    return s
