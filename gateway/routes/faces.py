"""POST /v1/faces: boxes, 5 landmarks, scores and 512-d ArcFace embeddings."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from .. import postprocess
from ..responses import JSON
from .common import ERRORS, IMAGE_BODY, ServiceDep, frames_for, per_image
from .lean import LeanRoute

router = APIRouter(tags=["faces"], route_class=LeanRoute)
MODEL = "faces"
OUTPUTS = ("boxes", "scores", "landmarks", "embeddings", "num_faces")


@router.post("/v1/faces", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Faces",
             response_description="per image: faces with score, box, 5 landmarks (original "
             "pixels) and a unit-norm 512-d embedding")
async def faces(request: Request, svc: ServiceDep,
                score_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
                max_results: Annotated[int, Query(ge=1, le=64)] = 64,
                embeddings: bool = True) -> JSON:
    frames = await frames_for(request, svc, MODEL)
    out = await svc.infer_frames(MODEL, frames, OUTPUTS)
    found = postprocess.faces(out["boxes"], out["scores"], out["landmarks"], out["embeddings"],
                              out["num_faces"], frames, score_threshold, max_results, embeddings)
    return per_image(MODEL, frames, "faces", found)
