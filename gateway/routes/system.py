"""Health, readiness, Prometheus metrics and the served-model listing."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from ..responses import JSON
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .common import ServiceDep

router = APIRouter(tags=["system"])

ENDPOINTS = {"faces": "/v1/faces", "yolo": "/v1/detect", "centernet": "/v1/detect?model=centernet",
             "mobileclip_image": "/v1/embed/image", "text_embed": "/v1/embed/text",
             "ocr": "/v1/ocr", "analyze": "/v1/analyze"}


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSON:
    return JSON({"status": "ok"})


@router.get("/readyz", summary="At least one Triton endpoint ready with its models",
            responses={503: {"description": "not ready: `reason` says why (Retry-After)"}})
async def readyz(svc: ServiceDep):
    # the fleet's health checks keep the states current: no Triton call per probe
    ready, body = svc.backend.readiness()
    return JSON(body, status_code=200 if ready else 503,
                headers={} if ready else {"Retry-After": str(svc.settings.retry_after_s)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: ServiceDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", summary="Served models: provenance, input sizes, tensors")
async def models(svc: ServiceDep) -> JSON:
    cat = svc.catalog
    if cat is None:
        svc.model("faces")  # raises the 503 that says Triton was never reached
    out = []
    for name, info in cat.models.items():
        frame = info.frame
        out.append({
            "name": name, "endpoint": ENDPOINTS.get(name), "platform": info.platform,
            "max_batch_size": info.max_batch_size,
            "weights_provenance": info.weights_provenance,
            # pipelines carry no weights of their own: the models they run do
            "components": {c: cat.provenance.get(c) for c in cat.components(name)},
            # CPU profile: runtime/precision/threads of the model and of the models it runs
            "cpu_runtime": cat.runtimes.get(name),
            "component_cpu_runtimes": {c: cat.runtimes.get(c) for c in cat.components(name)},
            "input_size": {"height": frame[0], "width": frame[1]} if frame else None,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                       for t in info.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                        for t in info.outputs],
        })
    return JSON({"models": out, "not_served": list(cat.missing)})
