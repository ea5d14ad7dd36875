"""POST /v1/detect: COCO objects (yolo by default, centernet selectable)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from .. import postprocess
from .common import ERRORS, IMAGE_BODY, MaxResults, ServiceDep, Threshold, per_image, scored
from .lean import LeanRoute

router = APIRouter(tags=["detect"], route_class=LeanRoute)


@router.post("/v1/detect", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="COCO objects",
             response_description="per image: objects with label, score and box "
             "[x1, y1, x2, y2] in original pixels")
async def detect(request: Request, svc: ServiceDep,
                 model: Annotated[Literal["yolo", "centernet"], Query()] = "yolo",
                 score_threshold: Threshold = None,
                 max_results: MaxResults = None):
    frames, out, cut, limit = await scored(request, svc, model, score_threshold, max_results,
                                           "boxes")
    return await svc.render(lambda: per_image(model, frames, "objects", postprocess.objects(
        out["boxes"], out["scores"], out["classes"], out["num_detections"], frames, cut,
        limit)), out)
