"""Face pipeline (Triton python backend, BLS): detector -> aligner -> embedder
(scrfd -> face_align -> arcface in model_repository/faces).

The number of faces per image is data dependent, so this is BLS, not an ensemble. For
each batch the dynamic batcher forms: ONE scrfd call for all images, ONE face_align call
for the images that have faces with only F = the largest face count among them (its
face axis is variable), the valid face slots of all images selected with a numpy mask,
ONE arcface call for all of them (chunked at arcface's max_batch_size), and the
embeddings scattered back into [B, K, 512] (zero rows beyond num_faces). No per-face or
per-image Python loop.

No extra image copies: one request's image tensor goes to the detector and the aligner as
it is (already in the python backend's shared memory); several requests are concatenated
once into one Tensor that both steps share. Only when some images have no face are the
others gathered for the aligner.

The steps (detector, aligner, embedder) are this model's config parameter "steps"; their
batch limits are read from their config.pbtxt beside this model (the same repository
Triton serves), parsed with Triton's own proto.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from contract import from_json

from .bls import StepError, call_chunked, traced

DET_OUTPUTS = ("boxes", "scores", "landmarks", "num_detections")


def _max_batch_size(repository: Path, model: str, pipeline: str) -> int:
    from contract import ContractError, load

    try:
        limit = load(model, repository).max_batch_size
    except ContractError as exc:
        raise pb_utils.TritonModelException(f"{pipeline}: {exc}") from exc
    if limit < 1:
        raise pb_utils.TritonModelException(f"{pipeline}: {model} has no max_batch_size")
    return limit


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        repo = Path(args["model_repository"]).parent
        self.name = config["name"]      # this pipeline's model name (one per detector)
        steps = from_json(config).steps
        if len(steps) != 3:
            raise pb_utils.TritonModelException(f"{self.name}: parameter steps must name detector, aligner and "
                                                f"embedder, got {steps}")
        self.detector, self.aligner, self.embedder = steps
        self.limits = {m: _max_batch_size(repo, m, self.name) for m in steps}
        out = {t["name"]: t for t in config["output"]}
        self.k = int(out["boxes"]["dims"][0])
        self.dim = int(out["embeddings"]["dims"][1])

    def execute(self, requests):
        try:
            tensors = [pb_utils.get_input_tensor_by_name(r, "images") for r in requests]
            sizes = [t.as_numpy().shape[0] for t in tensors]
            if len(tensors) == 1:
                images = tensors[0]
            else:
                images = pb_utils.Tensor("images", np.concatenate([t.as_numpy() for t in tensors]))
            with traced(requests):
                result = self.run(images)
        except StepError as exc:
            err = pb_utils.TritonError(f"{self.name}: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        bounds = np.cumsum(sizes)[:-1]
        split = {k: np.split(v, bounds) for k, v in result.items()}
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, split[k][j]) for k in split])
                for j in range(len(requests))]

    def run(self, images) -> dict[str, np.ndarray]:
        """`images`: the batch as a pb_utils.Tensor named "images" (passed through, not copied)."""
        det = call_chunked(self.detector, {"images": images}, DET_OUTPUTS, self.limits[self.detector])
        num = np.clip(det["num_detections"].reshape(-1), 0, self.k).astype(np.int32)
        b = num.shape[0]
        embeddings = np.zeros((b, self.k, self.dim), np.float32)
        # valid[i, j]: slot j of image i holds a face (rows are sorted, valid ones first).
        valid = np.arange(self.k)[None, :] < num[:, None]
        f = int(num.max(initial=0))                     # crops per image: the largest face count
        if f:
            with_faces = np.flatnonzero(num > 0)
            frames = images if with_faces.size == b else images.as_numpy()[with_faces]
            landmarks = np.ascontiguousarray(det["landmarks"][with_faces, :f])
            crops = call_chunked(self.aligner, {"images": frames, "landmarks": landmarks},
                                 ("crops",), self.limits[self.aligner])["crops"]          # [n, f, 112, 112, 3]
            mask = valid[with_faces, :f]
            # all faces of all images, [N, 112, 112, 3]; a view when every slot is a face
            faces = crops.reshape(-1, *crops.shape[2:]) if mask.all() else crops[mask]
            emb = call_chunked(self.embedder, {"faces": faces}, ("embeddings",), self.limits[self.embedder])["embeddings"]
            embeddings[valid] = emb                     # scatter back, row-major = same order
        return {
            "boxes": det["boxes"].astype(np.float32, copy=False),
            "scores": det["scores"].astype(np.float32, copy=False),
            "landmarks": det["landmarks"].astype(np.float32, copy=False),
            "embeddings": embeddings,
            "num_faces": num.reshape(b, 1),
        }
