"""POST /v1/detect: COCO objects (yolo by default, centernet selectable)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from .. import postprocess
from ..responses import JSON
from .common import ERRORS, IMAGE_BODY, MaxResults, ServiceDep, frames_for, per_image
from .lean import LeanRoute

router = APIRouter(tags=["detect"], route_class=LeanRoute)
OUTPUTS = ("boxes", "scores", "classes", "num_detections")


@router.post("/v1/detect", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="COCO objects",
             response_description="per image: objects with label, score and box "
             "[x1, y1, x2, y2] in original pixels")
async def detect(request: Request, svc: ServiceDep,
                 model: Annotated[Literal["yolo", "centernet"], Query()] = "yolo",
                 score_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.25,
                 max_results: MaxResults = 100) -> JSON:
    frames = await frames_for(request, svc, model)
    out = await svc.infer_frames(model, frames, OUTPUTS)
    objs = postprocess.objects(out["boxes"], out["scores"], out["classes"],
                               out["num_detections"], frames, score_threshold, max_results)
    return per_image(model, frames, "objects", objs)
