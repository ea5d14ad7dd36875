"""Face pipeline (Triton python backend, BLS): scrfd -> face_align -> arcface.

The number of faces per image is data dependent, so this is BLS, not an ensemble. For
each batch the dynamic batcher forms: ONE scrfd call for all images, ONE face_align call
for the images that have faces, the valid face slots of all images selected with a numpy
mask, ONE arcface call for all of them (chunked at arcface's max_batch_size), and the
embeddings scattered back into [B, K, 512] (zero rows beyond num_faces). No per-face or
per-image Python loop.

The steps (detector, aligner, embedder) are this model's config parameter "steps"; their
batch limits are read from their config.pbtxt beside this model (the same repository
Triton serves), parsed with Triton's own proto.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.bls import StepError, call_chunked
from serving.contract import from_json

DET_OUTPUTS = ("boxes", "scores", "landmarks", "num_detections")


def _max_batch_size(repository: Path, model: str) -> int:
    from serving.contract import ContractError, load

    try:
        limit = load(model, repository).max_batch_size
    except ContractError as exc:
        raise pb_utils.TritonModelException(f"faces: {exc}") from exc
    if limit < 1:
        raise pb_utils.TritonModelException(f"faces: {model} has no max_batch_size")
    return limit


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        repo = Path(args["model_repository"]).parent
        steps = from_json(config).steps
        if len(steps) != 3:
            raise pb_utils.TritonModelException(f"faces: parameter steps must name detector, aligner and "
                                                f"embedder, got {steps}")
        self.detector, self.aligner, self.embedder = steps
        self.limits = {m: _max_batch_size(repo, m) for m in steps}
        out = {t["name"]: t for t in config["output"]}
        self.k = int(out["boxes"]["dims"][0])
        self.dim = int(out["embeddings"]["dims"][1])

    def execute(self, requests):
        try:
            images = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
            sizes = [a.shape[0] for a in images]
            result = self.run(images[0] if len(images) == 1 else np.concatenate(images))
        except StepError as exc:
            err = pb_utils.TritonError(f"faces: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        bounds = np.cumsum(sizes)[:-1]
        split = {k: np.split(v, bounds) for k, v in result.items()}
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, split[k][j]) for k in split])
                for j in range(len(requests))]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        det = call_chunked(self.detector, {"images": images}, DET_OUTPUTS, self.limits[self.detector])
        num = np.clip(det["num_detections"].reshape(-1), 0, self.k).astype(np.int32)
        b = images.shape[0]
        embeddings = np.zeros((b, self.k, self.dim), np.float32)
        # valid[i, j]: slot j of image i holds a face (rows are sorted, valid ones first).
        valid = np.arange(self.k)[None, :] < num[:, None]
        with_faces = np.flatnonzero(num > 0)
        if with_faces.size:
            crops = call_chunked(self.aligner, {"images": images[with_faces], "landmarks": det["landmarks"][with_faces]},
                          ("crops",), self.limits[self.aligner])["crops"]
            faces = crops[valid[with_faces]]            # [N, 112, 112, 3], all faces of all images
            emb = call_chunked(self.embedder, {"faces": faces}, ("embeddings",), self.limits[self.embedder])["embeddings"]
            embeddings[valid] = emb                     # scatter back, row-major = same order
        return {
            "boxes": det["boxes"].astype(np.float32, copy=False),
            "scores": det["scores"].astype(np.float32, copy=False),
            "landmarks": det["landmarks"].astype(np.float32, copy=False),
            "embeddings": embeddings,
            "num_faces": num.reshape(b, 1),
        }
