"""The app factory. Nothing is created at import time: `create_app(settings, backend)`.

Triton is reached through a `Fleet` (gateway/fleet.py): every endpoint of the
`triton_grpc` target, discovered, health-checked and balanced. `backend` (tests) is a
per-endpoint fake used for every endpoint address; `connect(address)` picks one per
address. Start-up does not wait for Triton (at most `startup_wait_s` for a first look):
/healthz answers at once, /readyz is 503 with the reason until an endpoint is ready.

Its metrics (`app.state.metrics`) are served on their own port by `python -m gateway`
(metrics.MetricsServer), never by the app. `dependencies` (FastAPI `Depends(...)`, e.g.
an API-key check) are given to every route but the probes, as route dependencies.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Sequence

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import imaging

from .admission import Admission, MemoryBudget
from .backend import Backend
from .catalog import route_table
from .errors import GatewayError, GatewayOverloaded, UpstreamError, from_imaging
from .fleet import Fleet
from .metrics import UNMATCHED, Metrics
from .responses import JSON
from .routes import probes, routers
from .service import Service, decoding_bytes
from .settings import GatewaySettings
from . import tracing

log = logging.getLogger("visionserve.gateway")


def create_app(settings: GatewaySettings | None = None, backend: Backend | None = None,
               *, connect=None, dependencies: Sequence | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = Metrics()
    if backend is not None:
        connect = connect or (lambda address: backend)
    budget = MemoryBudget(settings.memory_budget_bytes, metrics)
    budget.headroom = decode_headroom(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        fleet = Fleet(settings, metrics, connect=connect)
        svc = Service(settings, fleet, metrics)
        app.state.service = svc
        app.state.loop = asyncio.get_running_loop()   # the admin view reads state on it
        try:
            await fleet.start()
            yield
        finally:
            svc.close()
            await fleet.close()
            if settings.otlp_endpoint:
                tracing.shutdown()   # the spans still batched leave now

    docs = settings.docs
    app = FastAPI(title="visionserve gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSON,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None,
                  description="JPEG/PNG in, uint8 tensors to Triton, each request to the least busy replica. "
                  "Coordinates are in the original image's pixels. Errors are "
                  '`{"error": {"code": ..., "message": ...}}`.')
    app.state.metrics = metrics
    probe_router = probes(dependency_overrides_provider=app)
    api = routers(route_table(settings.contract_repository), dependencies=list(dependencies or ()),
                  dependency_overrides_provider=app)
    # The routes go into the app's router as built (with their dependencies), not through
    # include_router: an included LeanRoute serves with FastAPI's handler (routes/lean.py).
    for router in (probe_router, *api):
        app.router.routes.extend(router.routes)
    _install_error_handlers(app)
    app.add_middleware(Admission, metrics=metrics,
                       budget=budget,
                       limit=settings.in_flight_limit, request_limit=settings.request_limit,
                       retry_after=settings.retry_after_s, body_timeout_s=settings.body_timeout_s,
                       templates=lambda: _templates(app, (probe_router, *api)),
                       exempt=frozenset(r.path for r in probe_router.routes))
    if settings.api_keys_file is not None:
        _require_keys(app, settings, metrics, (probe_router, *api))
    if settings.otlp_endpoint:
        tracing.configure(settings.otlp_endpoint, settings.trace_sample_rate)
    if tracing.enabled():   # outermost: the request's span covers admission too
        app.add_middleware(tracing.TracingMiddleware,
                           exempt=frozenset(r.path for r in probe_router.routes))
    return app


def _require_keys(app: FastAPI, settings: GatewaySettings, metrics: Metrics, mounted) -> None:
    """API keys from `api_keys_file` in front of everything but the probes and the docs
    (off unless `docs`); raises ApiKeysError (start-up fails) when the file is unusable."""
    from .auth import ApiKeyAuth, ApiKeys, secure_openapi

    keys = ApiKeys(settings.api_keys_file)
    probes_ = frozenset(r.path for r in mounted[0].routes)
    docs = frozenset(p for p in (app.docs_url, app.redoc_url, app.openapi_url,
                                 app.swagger_ui_oauth2_redirect_url) if p)
    known: dict[str, str] = {}

    def label(scope) -> str:
        if not known:
            known.update(_templates(app, mounted))
        return known.get(scope["path"], UNMATCHED)

    # added last: the outermost middleware, so a request without a key holds nothing
    app.add_middleware(ApiKeyAuth, keys=keys, metrics=metrics, exempt=probes_ | docs, label=label)
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = secure_openapi(build(), probes_)
        return app.openapi_schema
    app.openapi = openapi
    log.info("API keys required (%d from %s)", len(keys.keys), settings.api_keys_file)


def decode_headroom(settings: GatewaySettings) -> int:
    """The budget bodies leave free for decoding: what decoding one request of
    `max_images` images holds (service.decoding_bytes over imaging.decode_cost, the
    formula requests are charged by) for the largest route model frame in the contract,
    each image the costliest JPEG not reduced in the DCT domain (just under twice the
    frame per side); at most a quarter of the budget."""
    import contract

    worst = 0
    for name in route_table(settings.contract_repository).models:
        dims = contract.load(name, settings.contract_repository).inputs[0].dims
        if len(dims) == 3 and dims[2] == 3:
            fh, fw = dims[0], dims[1]
            header = imaging.ImageHeader("jpeg", 2 * fw - 2, 2 * fh - 2)
            box = imaging.plan_letterbox(2 * fw - 2, 2 * fh - 2, fw, fh)
            cost = imaging.decode_cost(header, box)
            worst = max(worst, decoding_bytes([cost] * settings.max_images, (fh, fw),
                                              settings.decode_threads, True))
    return min(worst, settings.memory_budget_bytes // 4)


def _templates(app: FastAPI, mounted) -> dict[str, str]:
    """{path: route template} of the routes whose path has no parameter (all of ours;
    the routers are mounted without a prefix): the label of a request refused before
    routing. Routed requests are labelled by the route they matched."""
    routes = [r for router in mounted for r in router.routes] + list(app.routes)
    return {r.path: r.path for r in routes if getattr(r, "path", None) and "{" not in r.path}


def _error(status: int, code: str, message: str, headers=None) -> JSON:
    return JSON({"error": {"code": code, "message": message}}, status_code=status,
                headers=headers)


class _ErrorLog:
    """Upstream errors' details (Triton's words, endpoints) go to the log, not to the
    client: at most one line per code per second, with how many were left out, so an
    outage or an overload does not flood the log."""

    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self.last: dict[str, tuple[float, int]] = {}

    def __call__(self, exc: UpstreamError) -> None:
        now = time.monotonic()
        at, skipped = self.last.get(exc.code, (-self.every_s, 0))
        if now - at < self.every_s:
            self.last[exc.code] = (at, skipped + 1)
            return
        self.last[exc.code] = (now, 0)
        log.log(logging.INFO if isinstance(exc, GatewayOverloaded) else logging.WARNING,
                "%s %d: %s%s", exc.code, exc.status, exc.message,
                f" (and {skipped} more in the last {now - at:.0f} s)" if skipped else "")


def _install_error_handlers(app: FastAPI) -> None:
    upstream = _ErrorLog()

    @app.exception_handler(GatewayError)
    async def gateway_error(_, exc: GatewayError):
        if isinstance(exc, UpstreamError):
            upstream(exc)
        return JSON(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(imaging.ImagingError)
    async def bad_image(_, exc: imaging.ImagingError):
        err = from_imaging(exc)
        return JSON(err.body(), status_code=err.status, headers=err.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())), e.get("msg"))
                 for e in exc.errors()]
        return _error(422, "invalid_parameter", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_, exc: Exception):
        log.exception("unhandled error (a gateway bug)")
        return _error(500, "internal_error", "internal error")
