"""Health and readiness probes, the admin readiness view, and the served-model listing.
(/metrics and the admin view are served on their own port: gateway/metrics.py.)"""
from __future__ import annotations

import asyncio
from typing import Annotated, Callable

from fastapi import APIRouter, Depends

from contract.routes import RouteTable

from ..responses import Answer
from .common import ANSWERS, ERRORS, AnswerDep, ServiceDep, accepted_or_json

ProbeAnswer = Annotated[Answer, Depends(accepted_or_json)]


def probe_router(mount: dict | None = None) -> APIRouter:
    """/healthz and /readyz: never given the app's dependencies (an orchestrator's probe
    carries no API key), never shed (gateway/admission.py exempts their paths)."""
    r = APIRouter(tags=["system"], **{k: v for k, v in (mount or {}).items() if k != "dependencies"})

    @r.get("/healthz", summary="The process is alive", responses=ANSWERS)
    async def healthz(answer: ProbeAnswer):
        return answer.response({"status": "ok"})

    @r.get("/readyz", summary="At least one Triton endpoint ready with its models",
                 responses={**ANSWERS, 503: {"description": "not ready (Retry-After)"}})
    async def readyz(svc: ServiceDep, answer: ProbeAnswer):
        # the fleet's health checks keep the states current: no Triton call per probe.
        # Anonymous: ready or not, nothing about the endpoints (their addresses, states
        # and Triton's words are in the admin view on the metrics port)
        if svc.catalog is not None:
            return answer.response({"ready": True})
        return answer.response({"ready": False, "reason": NOT_READY}, status_code=503,
                               headers={"Retry-After": str(svc.settings.retry_after_s)})

    return r


NOT_READY = "no Triton endpoint is ready"


def admin_view(app, timeout_s: float = 2.0) -> Callable[[], tuple[bool, dict] | None]:
    """The admin readiness detail for the metrics port's /readyz (another thread): every
    endpoint's address, state and reason (Triton's own words), the target, and each
    model's capacity in frames, read on the event loop (its state is the loop's alone).
    None while the app is starting; a loop that does not answer within `timeout_s`
    raises (the view says so: a frozen loop is what an operator looks for)."""
    def detail():
        svc, loop = getattr(app.state, "service", None), getattr(app.state, "loop", None)
        if svc is None or loop is None:
            return None
        future = asyncio.run_coroutine_threadsafe(_detail(svc), loop)
        try:
            return future.result(timeout_s)
        finally:
            future.cancel()
    return detail


async def _detail(svc) -> tuple[bool, dict]:
    ready, body = svc.backend.readiness()
    body["capacity_frames"] = {name: {"in_flight": g.in_flight, "limit": g.limit,
                                      "measured": g.measured}
                               for name, g in sorted(svc.capacity.items())}
    return ready, body


def router(table: RouteTable, mount: dict | None = None) -> APIRouter:
    """GET /v1/models: every served route model, with the endpoint the route table gives it."""
    r = APIRouter(tags=["system"], **(mount or {}))

    @r.get("/v1/models", summary="Served models: provenance, input sizes, tensors, score floors",
           responses={**ANSWERS, 406: ERRORS[406]})
    async def models(svc: ServiceDep, answer: AnswerDep):
        cat = svc.catalog
        if cat is None:
            svc.model(table.models[0])  # raises the 503 that says Triton was never reached
        out = []
        for name, info in cat.models.items():
            frame = info.frame
            floor = cat.score_floor(name)
            out.append({
                "name": name, "endpoint": table.endpoint(name), "platform": info.platform,
                "max_batch_size": info.max_batch_size,
                "weights_provenance": info.weights_provenance,
                # pipelines carry no weights of their own: the models they run do
                "components": {c: cat.provenance.get(c) for c in cat.components(name)},
                # CPU profile: runtime/precision/threads of the model and of the models it runs
                "cpu_runtime": cat.runtimes.get(name),
                "component_cpu_runtimes": {c: cat.runtimes.get(c) for c in cat.components(name)},
                "input_size": {"height": frame[0], "width": frame[1]} if frame else None,
                # the least score_threshold the route accepts: the model filters below it
                "score_floor": floor[0] if floor else None,
                # what the route applies when the client gives none (config.pbtxt parameter)
                "default_score_threshold": table.default_threshold(name),
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                           for t in info.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                            for t in info.outputs],
            })
        return answer.response({"models": out, "not_served": list(cat.missing)})

    return r
