"""`make serve` / `make run`: derive a profile's repository, start Triton (and the gateway).

    python -m serving serve [--profile cpu] [--http-port 8000 --grpc-port 8001 --metrics-port 8002]
    python -m serving run   [... --gateway-port 8080 --gateway-metrics-port 8081]
    python -m serving derive --profile onnx-gpu [--dest DIR]

Ctrl-C (SIGINT) or SIGTERM stops everything cleanly: the gateway first, then Triton,
which finishes the inferences in flight (`--exit-timeout`) while refusing new ones (a
fleet gateway retries those on another replica). Ports already in use are refused.
`main()` is the only place that exits.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from contract import REPO_ROOT, defaults

from . import cpu_machine, profiles
from .tritonserver import (DEFAULT_RESPONSE_CACHE_BYTES, RESPONSE_CACHE_ENV, TritonServer, TritonServerError,
                           response_cache_bytes)

log = logging.getLogger("serving")


class StartError(RuntimeError):
    """Something the user can fix (missing module, artifacts, ports): printed, exit 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("serve", "run", "derive"):
        s = sub.add_parser(name)
        s.add_argument("--profile", default="cpu", choices=profiles.PROFILES)
        s.add_argument("--source", type=Path, default=profiles.MODEL_REPOSITORY, help="committed repository")
        s.add_argument("--dest", type=Path, default=None, help="derived repository (default build/repositories/<profile>)")
        s.add_argument("--engine-cache", default=profiles.DEFAULT_ENGINE_CACHE,
                       help="onnx-gpu: TensorRT EP engine cache folder (as the GPU server sees it)")
        s.add_argument("--skip-missing", action="store_true",
                       help="leave out models whose artifacts are missing (and pipelines needing them)")
        cpu_machine.add_arguments(s)
        if name == "derive":
            continue
        s.add_argument("--host", default=defaults.HOST, help="address Triton binds (default loopback only)")
        s.add_argument("--http-port", type=int, default=defaults.TRITON_HTTP_PORT)
        s.add_argument("--grpc-port", type=int, default=defaults.TRITON_GRPC_PORT)
        s.add_argument("--metrics-port", type=int, default=defaults.TRITON_METRICS_PORT)
        s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all models to load")
        s.add_argument("--log", default=None,
                       help="Triton's log file, or - for standard output (containers); default "
                       "build/logs/triton-<host>-<grpc port>.log (one per instance)")
        s.add_argument("--grpc-max-connection-age", type=float, default=60.0, metavar="S",
                       help="close gRPC connections after S seconds so direct clients "
                       "reconnect and spread over new replicas (default 60)")
        s.add_argument("--grpc-max-connection-age-grace", type=float, default=30.0, metavar="S",
                       help="time calls in flight get after that (default 30)")
        s.add_argument("--exit-timeout", type=int, default=30, metavar="S",
                       help="on SIGTERM/SIGINT, how long Triton finishes in-flight work (default 30)")
        s.add_argument("--trace-otlp", type=_otlp_url, metavar="URL",
                       default=os.environ.get("VISIONSERVE_TRACE_OTLP") or None,
                       help="OpenTelemetry traces to this OTLP/HTTP collector (Triton's "
                       "spans; `run` gives the gateway the same endpoint); default "
                       "$VISIONSERVE_TRACE_OTLP, off when empty")
        s.add_argument("--trace-rate", type=_count, default=os.environ.get("VISIONSERVE_TRACE_RATE") or "0",
                       metavar="N", help="Triton also traces every N-th request that arrives "
                       "without a traceparent (default 0: only those the gateway traced)")
        s.add_argument("--response-cache-bytes", type=int, default=None, metavar="N",
                       help="Triton's response cache, in bytes of this process's memory (LRU); the "
                       "models whose config enables it (text_embed, the encoded entry points) answer "
                       f"repeated inputs from it; 0 turns it off (default ${RESPONSE_CACHE_ENV}, else "
                       f"{DEFAULT_RESPONSE_CACHE_BYTES >> 20} MiB)")
        if name == "run":
            s.add_argument("--gateway-host", default="127.0.0.1")
            s.add_argument("--gateway-port", type=int, default=defaults.GATEWAY_PORT)
            s.add_argument("--gateway-metrics-port", type=int, default=defaults.GATEWAY_METRICS_PORT,
                           help="the gateway's Prometheus /metrics (never on its API port)")
    return p


def _otlp_url(value: str) -> str:
    defaults.otlp_traces_url(value)   # ValueError (argparse: "invalid value") unless http(s)
    return value


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(value)
    return n


def _derive(args) -> profiles.Derived:
    derived = profiles.derive(args.profile, dest=args.dest, source=args.source,
                              skip_missing=getattr(args, "skip_missing", False), engine_cache=args.engine_cache,
                              cpu=cpu_machine.from_args(args))
    log.info("derived the %s repository at %s (%d models)", args.profile, derived.path, len(derived.models))
    if derived.cpu is not None and args.profile == "cpu":
        log.info("network models run %s", derived.cpu.describe())
        for note in derived.cpu.notes:
            log.warning("%s", note)
    for model, why in derived.skipped.items():
        log.warning("left out %s: %s", model, why)
    return derived


def _gateway_command(args, server: TritonServer) -> list[str]:
    if importlib.util.find_spec("gateway") is None or importlib.util.find_spec("gateway.__main__") is None:
        raise StartError("the gateway module is not available (`python -m gateway` needs gateway/__main__.py); "
                         "use `make serve` to run Triton alone")
    return [sys.executable, "-m", "gateway", "--triton-grpc", server.grpc_url,
            "--host", args.gateway_host, "--port", str(args.gateway_port),
            "--metrics-port", str(args.gateway_metrics_port)]


def _serve(args, with_gateway: bool) -> int:
    if args.profile != "cpu":
        raise StartError(f"the embedded tritonserver runs only the 'cpu' profile (it has the python backend "
                         f"alone); serve {args.profile!r} with a GPU Triton: `python -m serving derive "
                         f"--profile {args.profile}` then tritonserver --model-repository <that folder>")
    derived = _derive(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cache_bytes = response_cache_bytes() if args.response_cache_bytes is None else args.response_cache_bytes
    server = TritonServer(derived.path, args.http_port, args.grpc_port, args.metrics_port,
                          log_path=args.log, host=args.host,
                          max_connection_age_s=args.grpc_max_connection_age,
                          max_connection_age_grace_s=args.grpc_max_connection_age_grace,
                          exit_timeout_s=args.exit_timeout, trace_otlp=args.trace_otlp,
                          trace_rate=args.trace_rate, response_cache_bytes=cache_bytes)
    gateway = None
    log.info("response cache: %s", f"{cache_bytes >> 20} MiB for the models that enable it" if cache_bytes
             else "off")
    log.info("starting tritonserver (log: %s)", "stdout" if server.log_to_stdout else server.log_path)
    try:
        server.start(args.timeout, progress=log.info)
        print(f"Triton ready ({args.profile}): gRPC {server.grpc_url}  HTTP http://{server.http_url}  "
              f"metrics {server.metrics_url}\n  models: {', '.join(derived.models)}\n"
              f"  restricted APIs ({', '.join(('model-repository', 'shared-memory'))}) need the header "
              f"admin-key (set VISIONSERVE_TRITON_ADMIN_KEY to choose it)", flush=True)
        if with_gateway:
            # the admin key lets the gateway register shared memory (its default "auto")
            env = dict(os.environ, VISIONSERVE_GATEWAY_TRITON_ADMIN_KEY=server.admin_key)
            if args.trace_otlp:   # one trace from HTTP into Triton: both send to one collector
                env.setdefault("VISIONSERVE_GATEWAY_OTLP_ENDPOINT", args.trace_otlp)
            gateway = subprocess.Popen(_gateway_command(args, server), cwd=REPO_ROOT, env=env)
            print(f"Gateway: http://{args.gateway_host}:{args.gateway_port}  metrics "
                  f"http://{args.gateway_host}:{args.gateway_metrics_port}/metrics  "
                  "(Ctrl-C stops both)", flush=True)
        else:
            print("Ctrl-C stops it.", flush=True)
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited; see {server.log_path}:\n{server.log_tail()}")
            if gateway is not None and gateway.poll() is not None:
                raise StartError(f"the gateway exited with code {gateway.returncode}")
        print("stopping...", flush=True)
        return 0
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)   # uvicorn: graceful shutdown, no traceback
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(5)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "derive":
            d = _derive(args)
            print(d.path)
            return 0
        return _serve(args, with_gateway=args.command == "run")
    except (profiles.ProfileError, cpu_machine.CpuSettingsError, StartError, TritonServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
