"""Health and readiness probes, and the served-model listing. (/metrics is served on
its own port: gateway/metrics.py.)"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from contract.routes import RouteTable

from .. import compare
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
                 responses={**ANSWERS, 503: {"description": "not ready: `reason` says why (Retry-After)"}})
    async def readyz(svc: ServiceDep, answer: ProbeAnswer):
        # the fleet's health checks keep the states current: no Triton call per probe
        ready, body = svc.backend.readiness()
        return answer.response(body, status_code=200 if ready else 503,
                               headers={} if ready else {"Retry-After": str(svc.settings.retry_after_s)})

    return r


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
                # /v1/faces/compare's `match` threshold, the model whose config states it and
                # the provenance of that model's weights (synthetic ones are not calibrated)
                "match_threshold": _match(table, cat, name),
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                           for t in info.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                            for t in info.outputs],
            })
        return answer.response({"models": out, "not_served": list(cat.missing)})

    return r


def _match(table: RouteTable, cat, name: str) -> dict | None:
    stated = table.match_threshold(name)
    if stated is None:
        return None
    return compare.Threshold(stated[0], stated[1], cat.provenance.get(stated[1])).describe()
