"""The app factory. Nothing is created at import time: `create_app(settings, backend)`.

Triton is reached through a `Fleet` (gateway/fleet.py): every endpoint of the
`triton_grpc` target, discovered, health-checked and balanced. `backend` (tests) is a
per-endpoint fake used for every endpoint address; `connect(address)` picks one per
address. Start-up does not wait for Triton (at most `startup_wait_s` for a first look):
/healthz answers at once, /readyz is 503 with the reason until an endpoint is ready.
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from .responses import JSON
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backend import Backend
from .errors import GatewayError, GatewayOverloaded
from .fleet import Fleet
from .metrics import Metrics
from .routes import ROUTERS
from .service import Service
from .settings import GatewaySettings

log = logging.getLogger("visionserve.gateway")
# Probes and scrapes are never shed and do not count as in-flight work.
_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(settings: GatewaySettings | None = None, backend: Backend | None = None,
               *, connect=None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = Metrics()
    if backend is not None:
        connect = connect or (lambda address: backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        fleet = Fleet(settings, metrics, connect=connect)
        svc = Service(settings, fleet, metrics)
        app.state.service = svc
        try:
            await fleet.start()
            yield
        finally:
            svc.close()
            await fleet.close()

    app = FastAPI(title="visionserve gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSON,
                  description="JPEG/PNG in, uint8 tensors to Triton, each request to the least busy replica. "
                  "Coordinates are in the original image's pixels. Errors are "
                  '`{"error": {"code": ..., "message": ...}}`.')
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(_Admission, metrics=metrics, limit=settings.max_in_flight,
                       retry_after=settings.retry_after_s)
    return app


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
