"""This image's TensorRT plans in the plan store: find or build them, check them read-only,
print their keys, gc. The store itself is export/engines/store.py.

Settings (environment of the container):
    VISIONSERVE_ENGINE_ARGS    build options: --max-batch N --workspace-mb N --opt-level N
                               --builder auto|python|trtexec --device N (they change the keys)
    VISIONSERVE_PARITY_WAIVE   models whose FP16 parity check is waived ("yolo,arcface"): the
                               explicit way past a parity failure, per model (docs/deploy.md)
    VISIONSERVE_PLAN_WAIT_S    one deadline for all lock waits of a start (default 2700)
    VISIONSERVE_IMAGE          this image's reference as the pods name it: the store records
                               its keys, and gc keeps them while a ReplicaSet runs it
    VISIONSERVE_POOL           the GPU pool (kind) of this pod: names the Job that builds its plans
    VISIONSERVE_NAMESPACE      the pod's namespace (for that hint)
    VISIONSERVE_DEPLOYED_IMAGES  "kubernetes": gc asks the API which images are deployed
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from deploy import driver
from deploy.errors import StartupError

log = logging.getLogger("visionserve.deploy")


@dataclass(frozen=True)
class Settings:
    engine_args: tuple[str, ...] = ()
    waive_parity: tuple[str, ...] = ()
    wait_s: float = 2700.0
    image: str = ""
    pool: str = ""
    namespace: str = ""
    deployed_images: str = ""

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        raw_wait = env.get("VISIONSERVE_PLAN_WAIT_S", "")
        try:
            wait_s = float(raw_wait) if raw_wait.strip() else cls.wait_s
        except ValueError:
            raise StartupError(f"VISIONSERVE_PLAN_WAIT_S={raw_wait!r} is not a number") from None
        deployed = env.get("VISIONSERVE_DEPLOYED_IMAGES", "")
        if deployed not in ("", "kubernetes"):
            raise StartupError(f"VISIONSERVE_DEPLOYED_IMAGES={deployed!r}: expected `kubernetes` or nothing")
        waive = tuple(sorted({m.strip() for m in env.get("VISIONSERVE_PARITY_WAIVE", "").split(",") if m.strip()}))
        return cls(tuple(shlex.split(env.get("VISIONSERVE_ENGINE_ARGS", ""))), waive, wait_s,
                   env.get("VISIONSERVE_IMAGE", ""), env.get("VISIONSERVE_POOL", ""),
                   env.get("VISIONSERVE_NAMESPACE", ""), deployed)

    def build_hint(self) -> str:
        """How to build the missing plans where this pod runs."""
        if self.pool:
            ns = f"-n {self.namespace} " if self.namespace else ""
            return (f"build them first: `kubectl {ns}apply -k k8s/plan-build` then `kubectl {ns}wait "
                    f"--for=condition=complete job/triton-plans-{self.pool} --timeout=90m` (docs/deploy.md, "
                    "the runbook's plan-build step)")
        return "build them first: `docker compose -f docker/compose.yaml run --rm triton-0 build` (or serve " \
               "with VISIONSERVE_PLANS=build)"


def engine_options(settings: Settings, source: Path):
    """(builder name, export.engines Options) for the image's repository from VISIONSERVE_ENGINE_ARGS."""
    from export.engines.build import Options
    from export.engines.request import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_MB

    p = argparse.ArgumentParser(prog="VISIONSERVE_ENGINE_ARGS", add_help=False)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB)
    p.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL)
    p.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto")
    p.add_argument("--device", type=int, default=0)
    a, unknown = p.parse_known_args(list(settings.engine_args))
    if unknown:
        hint = (" (a parity check is waived per model: VISIONSERVE_PARITY_WAIVE=<model>, docs/deploy.md)"
                if "--no-parity" in unknown else "")
        raise StartupError(f"VISIONSERVE_ENGINE_ARGS: unknown {' '.join(unknown)}; the image takes --max-batch, "
                           f"--workspace-mb, --opt-level, --builder, --device{hint}")
    return a.builder, Options(repository=source, max_batch=a.max_batch, default_plan=False,
                              workspace_mb=a.workspace_mb, opt_level=a.opt_level, device=a.device)


def host():
    """(GPU, TensorRT version) of this container, or StartupError saying what is missing."""
    from export.engines import EngineError, current_gpu, tensorrt_version
    from export.engines.gpu import require_supported_tensorrt

    driver.check_node()
    try:
        gpu = current_gpu()
    except EngineError as exc:
        raise StartupError(f"{exc}. The GPU image needs a GPU (docker: --gpus / compose `devices`; "
                           "Kubernetes: a nvidia.com/gpu limit); the cpu image serves without one") from exc
    trt = tensorrt_version()
    if not trt:
        raise StartupError("cannot tell the TensorRT version of this image (no `tensorrt` module and no "
                           "libnvinfer found): the Triton image must carry TensorRT")
    require_supported_tensorrt(trt, "this image's libnvinfer / tensorrt module")
    return gpu, trt


def _writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"plan store {root} is not writable ({exc}): mount a volume there writable by this user "
                           "(uid 1000 in the image; Kubernetes: fsGroup, see k8s/README.md). Only the plan-build "
                           "Job writes the store; Triton pods read it (VISIONSERVE_PLANS=require)") from exc


def find_plans(store_root: Path, source: Path, settings: Settings, *, build: bool) -> dict:
    """{model: Stored} for every tensorrt_plan model of the image on this GPU. `build`: build
    the missing ones, mark all used and record them under VISIONSERVE_IMAGE; else read-only
    (a missing key is a StartupError naming it and how to build it)."""
    from export.engines import EngineError, ParityError
    from export.engines.build import engine_models
    from export.engines.builders import pick_builder
    from export.engines.lock import Deadline
    from export.engines.store import PlanMissing, PlanStore, ensure_all

    gpu, trt = host()
    store = PlanStore(store_root)
    builder_name, opts = engine_options(settings, source)
    opts = replace(opts, timing_cache_dir=store.timing_cache_dir(gpu))
    models = engine_models(source)
    log.info("GPU %s (compute capability %s), TensorRT %s; %d plan models; plan store %s%s", gpu.name,
             gpu.compute_capability, trt, len(models), store_root,
             f"; parity WAIVED for {', '.join(settings.waive_parity)}" if settings.waive_parity else "")
    try:
        if not build:
            return ensure_all(store, models, gpu, trt, opts, builder=None, candidate=None, log=log.info,
                              build=False, waive_parity=settings.waive_parity)
        builder, candidate = pick_builder(builder_name)
        _writable(store.root)
        deadline = Deadline(settings.wait_s, "VISIONSERVE_PLAN_WAIT_S")
        with store.session(deadline, log.info):
            stored = ensure_all(store, models, gpu, trt, opts, builder=builder, candidate=candidate, log=log.info,
                                deadline=deadline, waive_parity=settings.waive_parity)
            store.record_use(s.key for s in stored.values())
            if settings.image:
                store.record_image(settings.image, [s.key for s in stored.values()])
        return stored
    except PlanMissing as exc:
        raise StartupError(f"{exc}; {settings.build_hint()}") from exc
    except ParityError as exc:
        raise StartupError(f"{exc}. Nothing was published for that model. Find out why first (docs/deploy.md, "
                           "'A parity failure'); the explicit way past it is to waive that model's check for this "
                           "GPU kind (VISIONSERVE_PARITY_WAIVE=<model>, `parity-waive` in k8s/config), which "
                           "serves its plan unchecked") from exc
    except EngineError as exc:
        raise StartupError(str(exc)) from exc


def plan_keys(store_root: Path, source: Path, settings: Settings) -> list[dict]:
    """This image's key per plan model on this GPU, whether the store has it, whether waived."""
    from export.engines.build import engine_models
    from export.engines.store import PlanStore

    gpu, trt = host()
    store = PlanStore(store_root)
    _, opts = engine_options(settings, source)
    rows = []
    for model in engine_models(source):
        waived = model in settings.waive_parity
        key, _ = store.key_of(model, gpu, trt, opts, waived)
        rows.append({"model": model, "key": str(key), "published": store.published(key) is not None,
                     "parity_waived": waived})
    return rows


def require_published(rows: list[dict], store_root: Path, settings: Settings) -> None:
    """The init step of a Triton pod (`check`): a StartupError naming each missing key of
    `rows` (plan_keys) and the command that builds them."""
    missing = [r for r in rows if not r["published"]]
    if missing:
        raise StartupError(f"{len(missing)} of {len(rows)} plans of this image are not in the plan store "
                           f"{store_root}: {', '.join(r['key'] for r in missing)}; {settings.build_hint()}")


def gc(store_root: Path, keep: int, settings: Settings) -> list[Path]:
    """gc of the store; with VISIONSERVE_DEPLOYED_IMAGES=kubernetes, every key of a deployed
    image is kept, and gc removes nothing when the API cannot say which images are deployed."""
    from export.engines import EngineError
    from export.engines.store import PlanStore

    if keep < 1:
        raise StartupError(f"gc keeps at least the newest key per model; got --keep {keep} (VISIONSERVE_PLAN_KEEP)")
    deployed = None
    if settings.deployed_images == "kubernetes":
        from deploy.cluster import ClusterError, deployed_images

        try:
            deployed = deployed_images()
        except ClusterError as exc:
            log.error("gc removed nothing: %s", exc)
            return []
        log.info("gc: deployed Triton images: %s", ", ".join(sorted(deployed)) or "none")
    try:
        return PlanStore(store_root).gc(keep, log.info, deployed=deployed)
    except EngineError as exc:
        log.error("%s", exc)
        return []
