"""The app factory. Nothing is created at import time: `create_app(settings, backend)`.

`backend=None` builds the real TritonBackend (one shared gRPC channel) at start-up;
tests pass a fake with the same methods. Start-up learns Triton's model metadata and
refuses to start when it contradicts config.pbtxt (ContractMismatch).
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from .responses import JSON
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backend import Backend
from .catalog import Catalog
from .errors import GatewayError, GatewayOverloaded, TritonUnavailable
from .metrics import Metrics
from .routes import ROUTERS
from .service import Service
from .settings import GatewaySettings

log = logging.getLogger("visionserve.gateway")
# Probes and scrapes are never shed and do not count as in-flight work.
_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(settings: GatewaySettings | None = None, backend: Backend | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        real = backend
        if real is None:
            from .backend import TritonBackend
            real = TritonBackend(settings.triton_grpc, retry_after=settings.retry_after_s,
                                 admin_key=settings.triton_admin_key, metrics=metrics)
        svc = Service(settings, real, metrics)
        app.state.service = svc
        try:
            svc.catalog = await _learn(real, settings)
            if backend is None:
                await _shared_memory(real, svc.catalog, settings)
            yield
        finally:
            svc.close()
            if backend is None:
                await real.close()

    app = FastAPI(title="visionserve gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSON,
                  description="JPEG/PNG in, uint8 tensors to Triton over one gRPC channel. "
                  "Coordinates are in the original image's pixels. Errors are "
                  '`{"error": {"code": ..., "message": ...}}`.')
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(_Admission, metrics=metrics, limit=settings.max_in_flight,
                       retry_after=settings.retry_after_s)
    return app


async def _learn(backend: Backend, settings: GatewaySettings) -> Catalog:
    """Wait (bounded) for Triton, then learn and check its models."""
    deadline = time.monotonic() + settings.startup_wait_s
    while True:
        try:
            catalog = await Catalog.learn(backend, settings.contract_repository)
            log.info("serving models %s; not served: %s", sorted(catalog.models),
                     list(catalog.missing) or "none")
            return catalog
        except TritonUnavailable as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"Triton at {settings.triton_grpc} unreachable for "
                                   f"{settings.startup_wait_s:.0f}s: {exc.message}") from exc
            log.warning("waiting for Triton at %s: %s", settings.triton_grpc, exc.message)
            await asyncio.sleep(0.5)


async def _shared_memory(backend, catalog: Catalog, settings: GatewaySettings) -> None:
    """Image inputs through system shared memory when beside Triton (gateway/shm.py):
    one slot per served frame shape registered now; more (one-frame and max-batch ones)
    are made on demand, up to the in-flight limit per size. on: a failure stops start-up; auto: it falls back to the wire."""
    from .shm import SharedMemoryUnavailable, decide

    use, why = decide(settings.shared_memory, settings.triton_grpc, settings.triton_admin_key)
    if not use:
        log.info("image inputs over the gRPC wire (%s)", why)
        return
    from .catalog import ROUTE_MODELS

    shapes = sorted({(m.frame, m.max_batch_size) for name, m in catalog.models.items()
                     if name in ROUTE_MODELS and m.frame is not None and m.max_batch_size > 0})
    try:
        await backend.enable_shared_memory(settings.max_in_flight, shapes)
    except Exception as exc:
        if settings.shared_memory == "on":
            raise SharedMemoryUnavailable(f"shared_memory=on but it cannot be set up: {exc}") from exc
        log.warning("shared memory unavailable, image inputs over the gRPC wire: %s", exc)
        return
    log.info("image inputs through system shared memory (%s); frames %s", why,
             ", ".join(f"{h}x{w} (max batch {b})" for (h, w), b in shapes))


def _error(status: int, code: str, message: str, headers=None) -> JSON:
    return JSON({"error": {"code": code, "message": message}}, status_code=status,
                headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_, exc: GatewayError):
        return JSON(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())), e.get("msg"))
                 for e in exc.errors()]
        return _error(422, "invalid_parameter", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(_, exc: Exception):
        log.exception("unhandled error (a gateway bug)")
        return _error(500, "internal_error", f"internal error: {type(exc).__name__}")


class _Admission:
    """Pure ASGI middleware: the in-flight limit (shed with 503) and request metrics."""

    def __init__(self, app, metrics: Metrics, limit: int, retry_after: int):
        self.app, self.metrics, self.limit, self.retry_after = app, metrics, limit, retry_after
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) else "other"
        m, status = self.metrics, 500
        if path in _UNLIMITED:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            m.requests.labels(route, "503").inc()
            exc = GatewayOverloaded(f"{self.in_flight} requests in flight (limit {self.limit}); "
                                    "retry later", retry_after=self.retry_after)
            body = orjson.dumps(exc.body())
            await send({"type": "http.response.start", "status": exc.status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after).encode())]})
            await send({"type": "http.response.body", "body": body})
            return

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit():
            m.bytes_in.labels(route).observe(int(declared))
        self.in_flight += 1
        m.in_flight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.in_flight -= 1
            m.in_flight.dec()
            m.latency.labels(route).observe(time.perf_counter() - t0)
            m.requests.labels(route, str(status)).inc()
