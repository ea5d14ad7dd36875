"""POST /v1/analyze: objects, faces, text lines and a CLIP embedding in ONE Triton call
(the `analyze` ensemble runs the steps concurrently on the server)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from .. import postprocess
from ..catalog import ROUTE_MODELS
from ..responses import JSON
from .common import ERRORS, IMAGE_BODY, ServiceDep, frames_for
from .lean import LeanRoute

router = APIRouter(tags=["analyze"], route_class=LeanRoute)
MODEL = "analyze"


@router.post("/v1/analyze", openapi_extra=IMAGE_BODY, responses=ERRORS,
             summary="Objects, faces, text and an image embedding")
async def analyze(request: Request, svc: ServiceDep,
                  object_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.25,
                  face_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
                  text_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
                  max_results: Annotated[int, Query(ge=1, le=100)] = 100) -> JSON:
    frames = await frames_for(request, svc, MODEL)
    o = await svc.infer_frames(MODEL, frames, ROUTE_MODELS[MODEL][1])
    objs = postprocess.objects(o["object_boxes"], o["object_scores"], o["object_classes"],
                               o["num_objects"], frames, object_threshold, max_results)
    found = postprocess.faces(o["face_boxes"], o["face_scores"], o["face_landmarks"],
                              o["face_embeddings"], o["num_faces"], frames, face_threshold,
                              min(max_results, 64))
    lines = postprocess.text_lines(o["texts"], o["text_polygons"], o["text_scores"],
                                   o["num_lines"], frames, text_threshold, min(max_results, 64))
    return JSON({"model": MODEL, "results": [
        {**size, "objects": ob, "faces": f, "lines": ls, "embedding": e}
        for size, ob, f, ls, e in zip(postprocess.sizes(frames), objs, found, lines,
                                      o["image_embedding"].tolist())]})
