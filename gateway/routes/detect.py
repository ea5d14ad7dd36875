"""POST /v1/detect: COCO objects (yolo by default, centernet selectable)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from .. import postprocess
from .common import (ERRORS, IMAGE_BODY, MaxResults, ServiceDep, Threshold, frames_for,
                     per_image, result_limit, threshold)
from .lean import LeanRoute

router = APIRouter(tags=["detect"], route_class=LeanRoute)


@router.post("/v1/detect", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="COCO objects",
             response_description="per image: objects with label, score and box "
             "[x1, y1, x2, y2] in original pixels")
async def detect(request: Request, svc: ServiceDep,
                 model: Annotated[Literal["yolo", "centernet"], Query()] = "yolo",
                 score_threshold: Threshold = None,
                 max_results: MaxResults = None):
    info = svc.model(model)
    cut = threshold(score_threshold, svc.catalog.score_floor(model), "score_threshold")
    limit = result_limit(max_results, info, "boxes")
    frames = await frames_for(request, svc, info)
    out = await svc.infer_frames(model, frames, info.output_names)
    return await svc.render(lambda: per_image(model, frames, "objects", postprocess.objects(
        out["boxes"], out["scores"], out["classes"], out["num_detections"], frames, cut,
        limit)), out)
