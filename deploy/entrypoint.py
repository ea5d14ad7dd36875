"""Entrypoint of the GPU Triton image: content-keyed TensorRT plans, then tritonserver.

    python -m deploy build [--gc]  find or build this image's plans for this GPU, mark them used,
                                   record them under VISIONSERVE_IMAGE (the plan-build Job);
                                   --gc: then gc, keeping the keys of deployed images
    python -m deploy check         read-only: every plan of this image present, else exit 2 naming
                                   the missing keys and the command that builds them (init step)
    python -m deploy serve         find the plans (VISIONSERVE_PLANS=require: read-only; build:
                                   build missing ones, for one-host compose), assemble the served
                                   repository from their keys, exec tritonserver
    python -m deploy keys          this image's plan keys on this GPU (JSON lines)
    python -m deploy gc            keep the last VISIONSERVE_PLAN_KEEP keys per GPU kind and model
    python -m deploy preflight     prove the plan volume's semantics (k8s/README.md)

The image holds the production repository read-only (/opt/visionserve/model_repository).
Plans live in the plan store on a volume (VISIONSERVE_PLAN_STORE, default
/var/cache/visionserve), under keys of (ONNX sha256, build recipe, TensorRT, exact GPU),
published read-only and never rebuilt in place (export/engines/store.py). The served
repository is assembled per start in a pod-local folder (VISIONSERVE_SERVED_REPOSITORY,
default /tmp/visionserve/served). Plan settings: deploy/plans.py. tritonserver gets the
embedded default's hardened flags (serving/tritonserver.py) bound to 0.0.0.0; its admin key
is VISIONSERVE_TRITON_ADMIN_KEY (else random per start), extra flags VISIONSERVE_TRITON_ARGS,
OpenTelemetry traces VISIONSERVE_TRACE_OTLP (a collector URL; empty: off) and VISIONSERVE_TRACE_RATE.
The image's ENTRYPOINT runs NGC's /opt/nvidia/nvidia_entrypoint.sh first.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from deploy import plans
from deploy.errors import StartupError
from deploy.served import assemble

PROJECT = Path(os.environ.get("VISIONSERVE_HOME", "/opt/visionserve"))
TRITON_HOME = Path(os.environ.get("TRITON_HOME", "/opt/tritonserver"))
DEFAULT_STORE = Path(os.environ.get("VISIONSERVE_PLAN_STORE", "/var/cache/visionserve"))
DEFAULT_SERVED = Path(os.environ.get("VISIONSERVE_SERVED_REPOSITORY", "/tmp/visionserve/served"))
PLANS_POLICIES = ("build", "require")
MODES = ("build", "check", "serve", "keys", "gc", "preflight")

log = logging.getLogger("visionserve.deploy")


def triton_command(repository: Path, admin_key: str | None, extra: list[str],
                   trace_otlp: str | None = None, trace_rate: int = 0) -> list[str]:
    """The NGC tritonserver with the embedded default's hardened flags, bound to 0.0.0.0;
    OpenTelemetry traces to `trace_otlp` when set (serving.tritonserver.trace_args)."""
    from serving.tritonserver import TritonInstall, TritonServer, response_cache_bytes

    install = TritonInstall(binary=TRITON_HOME / "bin" / "tritonserver", libs=TRITON_HOME / "lib",
                            python_backend=TRITON_HOME / "backends" / "python",
                            stub=TRITON_HOME / "backends" / "python" / "triton_python_backend_stub",
                            caches=TRITON_HOME / "caches")
    # the response cache's size: VISIONSERVE_RESPONSE_CACHE_BYTES (k8s values, compose), as `python -m serving`
    server = TritonServer(repository, host="0.0.0.0", admin_key=admin_key,
                          backends_dir=TRITON_HOME / "backends", extra_args=tuple(extra),
                          trace_otlp=trace_otlp or None, trace_rate=trace_rate,
                          response_cache_bytes=response_cache_bytes())
    return server.command(install)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=MODES, nargs="?", default="serve")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="plan store volume")
    p.add_argument("--source", type=Path, default=PROJECT / "model_repository", help="repository in the image")
    p.add_argument("--served", type=Path, default=DEFAULT_SERVED, help="where served repositories are assembled")
    p.add_argument("--keep", type=int, default=int(os.environ.get("VISIONSERVE_PLAN_KEEP", "3")),
                   help="gc: keys kept per GPU kind and model (most recently used), besides deployed images'")
    p.add_argument("--gc", action="store_true", help="build: then gc (the plan-build Job)")
    p.add_argument("--peers", type=int, default=1, help="preflight: pods running it at once (a Job's parallelism)")
    p.add_argument("--run-id", default=os.environ.get("VISIONSERVE_PREFLIGHT_RUN", ""),
                   help="preflight: shared by the peers of one run (e.g. the Job's uid)")
    return p.parse_args(argv)


def _warn_about(source: Path, stored: dict) -> None:
    """Say loudly at every start what this image serves unchecked or untrained."""
    from deploy.weights import records, synthetic

    fake = synthetic(records(source))
    if fake:
        log.warning("SYNTHETIC weights (random, built with WEIGHTS_POLICY=allow-synthetic): %s answer with "
                    "well-formed nonsense", ", ".join(fake))
    waived = sorted(m for m, s in stored.items() if s.parity_waived)
    if waived:
        log.warning("parity WAIVED (VISIONSERVE_PARITY_WAIVE) for %s: their FP16 plans were never compared with "
                    "ONNX Runtime", ", ".join(waived))


def _serve(args, settings: plans.Settings) -> list[str]:
    policy = os.environ.get("VISIONSERVE_PLANS", "build")
    if policy not in PLANS_POLICIES:
        raise StartupError(f"VISIONSERVE_PLANS={policy!r}: expected one of {', '.join(PLANS_POLICIES)}")
    stored = plans.find_plans(args.store, args.source, settings, build=policy == "build")
    _warn_about(args.source, stored)
    repo = assemble(args.source, args.served, {m: (s.version, s.plan) for m, s in stored.items()})
    log.info("served repository %s", repo)
    return triton_command(repo, os.environ.get("VISIONSERVE_TRITON_ADMIN_KEY"),
                          shlex.split(os.environ.get("VISIONSERVE_TRITON_ARGS", "")),
                          os.environ.get("VISIONSERVE_TRACE_OTLP"),
                          int(os.environ.get("VISIONSERVE_TRACE_RATE") or 0))


def _run(args) -> list[str] | None:
    """Do `args.mode`; the tritonserver argv to exec for `serve`, else None."""
    if args.mode == "preflight":
        from export.engines.preflight import run_preflight

        report = run_preflight(args.store, peers=args.peers, run_id=args.run_id, log=log.info)
        print(report.text())
        if not report.ok:
            raise StartupError(f"the plan volume {args.store} fails the pre-flight (above); see k8s/README.md")
        return None
    settings = plans.Settings.from_env()
    if args.mode == "serve":
        return _serve(args, settings)
    if args.mode == "build":
        plans.find_plans(args.store, args.source, settings, build=True)
        if args.gc:
            plans.gc(args.store, args.keep, settings)
    elif args.mode in ("keys", "check"):
        rows = plans.plan_keys(args.store, args.source, settings)
        for row in rows:
            print(json.dumps(row))
        if args.mode == "check":
            plans.require_published(rows, args.store, settings)
    else:
        plans.gc(args.store, args.keep, settings)
    return None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s deploy %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    from export.engines.errors import EngineError
    from serving.tritonserver import TritonServerError     # a bad response cache size

    try:
        cmd = _run(args)
    except (StartupError, EngineError, TritonServerError) as exc:
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
