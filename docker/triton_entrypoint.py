"""Entrypoint of the GPU Triton image: content-keyed TensorRT plans, then tritonserver.

    triton_entrypoint.py build      find or build this image's plans for this GPU in the plan
                                    store, mark them used, exit (plan-build Job, init container);
                                    with --gc, then gc (the Job)
    triton_entrypoint.py serve      find the plans (building missing ones unless
                                    VISIONSERVE_PLANS=require), assemble the served repository
                                    from their keys, exec tritonserver
    triton_entrypoint.py keys       print this image's plan keys on this GPU (JSON lines)
    triton_entrypoint.py gc         keep the last VISIONSERVE_PLAN_KEEP keys per GPU kind and model
    triton_entrypoint.py preflight  prove the plan volume's semantics (k8s/README.md)

The image holds the production repository read-only (/opt/visionserve/model_repository:
configs, ONNX, python models). Plans live in the plan store on a volume
(VISIONSERVE_PLAN_STORE, default /var/cache/visionserve), filed under a key of
(ONNX sha256, build recipe, TensorRT version, GPU name + compute capability), published
read-only and never rebuilt in place (export/engines/store.py). The served repository is
assembled per start in a pod-local folder (VISIONSERVE_SERVED_REPOSITORY, default
/tmp/visionserve/served): configs copied, image files linked, `model.plan` linked to the
key of this image on this GPU. Nothing shared is ever deleted at start: two image
versions, a rollback, or an old pod restarting each find their own keys.

Waiting for another builder's lock has one overall deadline (VISIONSERVE_PLAN_WAIT_S,
default 2700 s, under the pods' 30-minute startup allowance plus the init step).
tritonserver gets the hardened flags of the embedded default (serving/tritonserver.py)
bound to 0.0.0.0. The image's ENTRYPOINT runs NGC's /opt/nvidia/nvidia_entrypoint.sh
first (CUDA forward compatibility on older drivers), which then runs this script.
Other environment: VISIONSERVE_TRITON_ADMIN_KEY (else a random key per start),
VISIONSERVE_ENGINE_ARGS (`python -m export.engines` flags: --max-batch, --workspace-mb,
--opt-level, --builder, --no-parity), VISIONSERVE_TRITON_ARGS (extra tritonserver flags).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("VISIONSERVE_HOME", "/opt/visionserve"))
TRITON_HOME = Path(os.environ.get("TRITON_HOME", "/opt/tritonserver"))
DEFAULT_STORE = Path(os.environ.get("VISIONSERVE_PLAN_STORE", "/var/cache/visionserve"))
DEFAULT_SERVED = Path(os.environ.get("VISIONSERVE_SERVED_REPOSITORY", "/tmp/visionserve/served"))
PLANS_POLICIES = ("build", "require")
# Files of an image's version folder that are build products, never linked into a served one.
BUILT_SUFFIXES = (".plan", ".plan.json", ".lock", ".tmp")
COMPLETE = ".complete"

log = logging.getLogger("visionserve.entrypoint")


class EntrypointError(RuntimeError):
    """A start-up condition the operator must fix (no GPU, no TensorRT, bad volume): exit 2."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise EntrypointError(f"{name}={raw!r} is not a number") from None


def _is_built(name: str) -> bool:
    return name.startswith(".") or name.endswith(BUILT_SUFFIXES)


# -- the served repository ---------------------------------------------------------------------
def served_id(source: Path, plans: dict[str, tuple[str, Path]]) -> str:
    """Name of the served repository of `source` with `plans`: same inputs, same folder."""
    h = hashlib.sha256(str(Path(source).resolve()).encode())
    for cfg in sorted(Path(source).glob("*/config.pbtxt")):
        h.update(cfg.parent.name.encode() + b"\0" + cfg.read_bytes())
    for model, (version, plan) in sorted(plans.items()):
        h.update(f"{model}/{version}={plan}".encode())
    return h.hexdigest()[:16]


def assemble(source: Path, served_root: Path, plans: dict[str, tuple[str, Path]]) -> Path:
    """A served repository over `source` whose plan models load the stored keys; returns it.

    `plans` maps model -> (version folder, published plan). Built aside and renamed into
    place, never edited afterwards: the same inputs reuse the same folder (a container
    restarting in its pod), other inputs get another one. Configs are copied, the image's
    other files linked, `model.plan` (+ sidecar) linked to the plan store.
    """
    source, served_root = Path(source), Path(served_root)
    models = sorted(p.parent.name for p in source.glob("*/config.pbtxt"))
    if not models:
        raise EntrypointError(f"{source} holds no model (no */config.pbtxt): wrong VISIONSERVE_HOME?")
    unknown = sorted(set(plans) - set(models))
    if unknown:
        raise EntrypointError(f"plans given for models the image does not have: {', '.join(unknown)}")
    dest = served_root / served_id(source, plans)
    if (dest / COMPLETE).is_file():
        return dest
    tmp = served_root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for model in models:
        src_dir, dst_dir = source / model, tmp / model
        dst_dir.mkdir(parents=True)
        shutil.copyfile(src_dir / "config.pbtxt", dst_dir / "config.pbtxt")
        for src_version in sorted(p for p in src_dir.iterdir() if p.is_dir()):
            dst_version = dst_dir / src_version.name
            dst_version.mkdir()
            for f in sorted(src_version.iterdir()):
                if not _is_built(f.name):
                    os.symlink(f.resolve(), dst_version / f.name)
        if model in plans:
            version, plan = plans[model]
            (dst_dir / version).mkdir(exist_ok=True)
            os.symlink(plan, dst_dir / version / "model.plan")
            os.symlink(plan.with_name(plan.name + ".json"), dst_dir / version / "model.plan.json")
    (tmp / COMPLETE).write_text(json.dumps({m: str(p) for m, (_, p) in sorted(plans.items())}, indent=1))
    try:
        os.rename(tmp, dest)
    except OSError:                          # the same folder was just completed by another start
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / COMPLETE).is_file():
            raise
    return dest


# -- plans ----------------------------------------------------------------------------------------
def _host():
    """(GPU, TensorRT version) of this container, or EntrypointError saying what is missing."""
    from export.engines import EngineError, current_gpu, tensorrt_version
    from export.engines.gpu import require_supported_tensorrt

    try:
        gpu = current_gpu()
    except EngineError as exc:
        raise EntrypointError(f"{exc}. The GPU image needs a GPU (docker: --gpus / compose `devices`; "
                              "Kubernetes: a nvidia.com/gpu limit); the cpu image serves without one") from exc
    trt = tensorrt_version()
    if not trt:
        raise EntrypointError("cannot tell the TensorRT version of this image (no `tensorrt` module and no "
                              "libnvinfer found): the Triton image must carry TensorRT")
    require_supported_tensorrt(trt, "this image's libnvinfer / tensorrt module")
    return gpu, trt


def engine_options(engine_args: list[str], source: Path):
    """export.engines Options for the image's repository from VISIONSERVE_ENGINE_ARGS."""
    from export.engines.__main__ import parse_args
    from export.engines.build import Options

    a = parse_args(engine_args)
    return a, Options(repository=source, max_batch=a.max_batch, parity=not a.no_parity, default_plan=False,
                      workspace_mb=a.workspace_mb, opt_level=a.opt_level, device=a.device)


def find_plans(store_root: Path, source: Path, engine_args: list[str], *, build: bool, record: bool
               ) -> dict[str, tuple[str, Path]]:
    """{model: (version, plan)} for every tensorrt_plan model of the image, on this GPU."""
    from dataclasses import replace

    from export.engines import EngineError
    from export.engines.__main__ import pick_builder
    from export.engines.build import engine_models
    from export.engines.lock import Deadline
    from export.engines.store import PlanStore, ensure_all

    gpu, trt = _host()
    store = PlanStore(store_root)
    a, opts = engine_options(engine_args, source)
    opts = replace(opts, timing_cache_dir=store.timing_cache_dir(gpu))
    models = engine_models(source)
    deadline = Deadline(_env_float("VISIONSERVE_PLAN_WAIT_S", 2700.0), "VISIONSERVE_PLAN_WAIT_S")
    log.info("GPU %s (compute capability %s), TensorRT %s; %d plan models; plan store %s", gpu.name,
             gpu.compute_capability, trt, len(models), store_root)
    try:
        builder, candidate = pick_builder(a.builder) if build else (None, None)
        if build:
            try:
                store.root.mkdir(parents=True, exist_ok=True)
                probe = store.root / f".write-probe-{os.getpid()}"
                probe.touch()
                probe.unlink()
            except OSError as exc:
                raise EntrypointError(f"plan store {store_root} is not writable ({exc}): mount a volume there "
                                      "writable by this user (uid 1000 in the image; Kubernetes: fsGroup, see "
                                      "k8s/README.md), or serve with VISIONSERVE_PLANS=require") from exc
            with store.session(deadline, log.info):
                stored = ensure_all(store, models, gpu, trt, opts, builder=builder, candidate=candidate,
                                    log=log.info, deadline=deadline)
                if record:
                    store.record_use(s.key for s in stored.values())
        else:
            stored = ensure_all(store, models, gpu, trt, opts, builder=None, candidate=None, log=log.info,
                                build=False)
    except EngineError as exc:
        raise EntrypointError(str(exc)) from exc
    return {m: (s.version, s.plan) for m, s in stored.items()}


def plan_keys(store_root: Path, source: Path, engine_args: list[str]) -> list[dict]:
    """This image's key per plan model on this GPU, and whether the store has it."""
    from export.engines.build import engine_models, prepare
    from export.engines.store import PlanStore, plan_key

    gpu, trt = _host()
    store = PlanStore(store_root)
    _, opts = engine_options(engine_args, source)
    rows = []
    for model in engine_models(source):
        p = prepare(model, gpu, opts)
        key = plan_key(model, p.onnx_sha256, p.flags, trt, gpu)
        rows.append({"model": model, "key": str(key), "published": store.published(key) is not None})
    return rows


def triton_command(repository: Path, admin_key: str | None, extra: list[str]) -> list[str]:
    """The NGC tritonserver with the embedded default's hardened flags, bound to 0.0.0.0."""
    from serving.tritonserver import TritonInstall, TritonServer

    install = TritonInstall(binary=TRITON_HOME / "bin" / "tritonserver", libs=TRITON_HOME / "lib",
                            python_backend=TRITON_HOME / "backends" / "python",
                            stub=TRITON_HOME / "backends" / "python" / "triton_python_backend_stub")
    server = TritonServer(repository, host="0.0.0.0", admin_key=admin_key,
                          backends_dir=TRITON_HOME / "backends", extra_args=tuple(extra))
    return server.command(install)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="triton_entrypoint", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("build", "serve", "keys", "gc", "preflight"), nargs="?", default="serve")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="plan store volume")
    p.add_argument("--source", type=Path, default=PROJECT / "model_repository", help="repository in the image")
    p.add_argument("--served", type=Path, default=DEFAULT_SERVED, help="where served repositories are assembled")
    p.add_argument("--keep", type=int, default=int(os.environ.get("VISIONSERVE_PLAN_KEEP", "3")),
                   help="gc: keys kept per GPU kind and model (most recently used)")
    p.add_argument("--gc", action="store_true", help="build: then gc (the plan-build Job)")
    p.add_argument("--peers", type=int, default=1, help="preflight: pods running it at once (a Job's parallelism)")
    p.add_argument("--run-id", default=os.environ.get("VISIONSERVE_PREFLIGHT_RUN", ""),
                   help="preflight: shared by the peers of one run (e.g. the Job's uid)")
    return p.parse_args(argv)


def _serve(args) -> list[str]:
    policy = os.environ.get("VISIONSERVE_PLANS", "build")
    if policy not in PLANS_POLICIES:
        raise EntrypointError(f"VISIONSERVE_PLANS={policy!r}: expected one of {', '.join(PLANS_POLICIES)}")
    engine_args = shlex.split(os.environ.get("VISIONSERVE_ENGINE_ARGS", ""))
    plans = find_plans(args.store, args.source, engine_args, build=policy == "build", record=policy == "build")
    repo = assemble(args.source, args.served, plans)
    log.info("served repository %s", repo)
    return triton_command(repo, os.environ.get("VISIONSERVE_TRITON_ADMIN_KEY"),
                          shlex.split(os.environ.get("VISIONSERVE_TRITON_ARGS", "")))


def _run(args) -> list[str] | None:
    """Do `args.mode`; the tritonserver argv to exec for `serve`, else None."""
    engine_args = shlex.split(os.environ.get("VISIONSERVE_ENGINE_ARGS", ""))
    if args.mode == "serve":
        return _serve(args)
    if args.mode == "build":
        find_plans(args.store, args.source, engine_args, build=True, record=True)
        if args.gc:
            from export.engines.store import PlanStore

            PlanStore(args.store).gc(args.keep, log.info)
    elif args.mode == "keys":
        for row in plan_keys(args.store, args.source, engine_args):
            print(json.dumps(row))
    elif args.mode == "gc":
        from export.engines.store import PlanStore

        PlanStore(args.store).gc(args.keep, log.info)
    else:
        from export.engines.preflight import run_preflight

        report = run_preflight(args.store, peers=args.peers, run_id=args.run_id, log=log.info)
        print(report.text())
        if not report.ok:
            raise EntrypointError(f"the plan volume {args.store} fails the pre-flight (above); see k8s/README.md")
    return None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s entrypoint %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    from export.engines.errors import EngineError

    try:
        cmd = _run(args)
    except (EntrypointError, EngineError) as exc:
        log.error("%s", exc)
        return 2
    if cmd is None:
        return 0
    log.info("exec %s", " ".join(c if "admin-key=" not in c else c.split("admin-key=")[0] + "admin-key=***"
                                  for c in cmd))
    sys.stdout.flush()
    # exec: tritonserver replaces this process and gets SIGTERM itself.
    os.execv(cmd[0], cmd)
    return 0   # not reached


if __name__ == "__main__":
    sys.exit(main())
