"""`python -m gateway --triton-grpc 127.0.0.1:8001 --host 127.0.0.1 --port 8080`

Flags override VISIONSERVE_GATEWAY_* environment variables, which override defaults.
"""
from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys


def _drained(signum, frame):
    raise SystemExit(0)


MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3     # glibc's mallopt parameter


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Allocate every buffer from `threshold` up with its own mmap, for good (glibc only;
    False elsewhere). glibc's default raises the threshold to the size of the last large
    block freed (up to 32 MiB) and keeps up to twice that of freed heap untrimmed: after a
    burst of 31 MB uploads the gateway held 55-80 MiB more than before it, all requests
    done (docs/gateway.md, "Admission"), memory the budget had already given back."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    p.add_argument("--triton-grpc", help="Triton endpoint(s): host:port (default 127.0.0.1:8001), "
                   "ipv4:a:port,b:port, dns:///name:port, dns://DNS_HOST:DNS_PORT/name:port")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="bind port (default 8080)")
    p.add_argument("--metrics-port", type=int,
                   help="Prometheus /metrics port, on the same host (default 8081; 0: none)")
    p.add_argument("--docs", action="store_true", default=None,
                   help="serve /docs, /redoc and /openapi.json (default: off)")
    p.add_argument("--forward", choices=("pixels", "encoded", "auto"),
                   help="what crosses the wire for image routes (default auto; docs/gateway.md)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    fixed_mmap_threshold()       # before any thread or big buffer

    import uvicorn

    from .app import create_app
    from .metrics import MetricsServer
    from .protocol import bounded_httptools
    from .routes.system import admin_view
    from .settings import GatewaySettings

    overrides = {k: v for k, v in (("triton_grpc", args.triton_grpc), ("host", args.host),
                                   ("port", args.port), ("metrics_port", args.metrics_port),
                                   ("docs", args.docs), ("forward", args.forward)) if v is not None}
    from pydantic import ValidationError

    try:
        settings = GatewaySettings(**overrides)
    except ValidationError as exc:   # a bad setting: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .auth import ApiKeysError

    try:
        app = create_app(settings)
    except ApiKeysError as exc:   # keys were asked for and cannot be had: never run without
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = (MetricsServer(app.state.metrics, settings.host, settings.metrics_port,
                             detail=admin_view(app))
               if settings.metrics_port else None)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            loop="uvloop", http=bounded_httptools(settings, app.state.metrics),
                            log_level=args.log_level,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    # everything imported so far lives as long as the process: out of the collector's
    # sight, a full collection under load scans only what requests make (a pause of
    # tens of ms on the event loop otherwise)
    gc.collect()
    gc.freeze()
    # uvicorn drains on SIGTERM (what Kubernetes sends), restores this handler, then
    # re-raises the signal: a drained stop exits 0 instead of dying by the signal
    signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn shut down gracefully, then re-raised the SIGINT it captured: no traceback
        return 0
    finally:
        if metrics is not None:
            metrics.close()
    # uvicorn returns normally when start-up failed (e.g. a contract mismatch).
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
