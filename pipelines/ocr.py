"""OCR pipeline as a Triton python-backend BLS model (model_repository/ocr/config.pbtxt).

Per batch the dynamic batcher hands us: ONE ppocr_det call for all images, DB
postprocess per image, crops of ALL lines of ALL images at their own widths rounded up to
a few width buckets (pipelines/ocr_crops.py; the range from ppocr_rec's config.pbtxt beside
this model), ONE ppocr_rec call per bucket present (chunked at its max_batch_size), CTC
collapse for the whole batch, outputs padded to K lines per image.

The work between the networks lives in pipelines/ocr_postprocess.py (numpy + OpenCV).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

from contract import ContractError, ModelContract, from_json, parse_config

from . import ocr_postprocess as ocr
from .bls import StepError, call, traced

CHARSET_FILE = "charset.txt"


def _sibling_config(model_dir: Path, name: str) -> "ModelContract":
    path = model_dir.parent / name / "config.pbtxt"
    if not path.is_file():
        raise pb_utils.TritonModelException(
            f"ocr: no config for {name} at {path}; the ocr pipeline needs {name} in the same repository")
    return ModelContract(name, path, parse_config(path.read_text(), path))


def _settings(config: dict, rec: "ModelContract", k: int) -> "ocr.OcrSettings":
    """Defaults from OcrSettings, the recogniser's fields from its contract; optional
    overrides from this model's config parameters."""
    params = {key: v.get("string_value", "") for key, v in config.get("parameters", {}).items()}
    over = {}
    for f in fields(ocr.OcrSettings):
        if f.name in params:
            cast = type(getattr(ocr.OcrSettings(), f.name))
            try:
                over[f.name] = cast(params[f.name])
            except ValueError as exc:
                raise pb_utils.TritonModelException(
                    f"ocr: parameter {f.name}={params[f.name]!r} is not a {cast.__name__}") from exc
    try:
        settings = ocr.OcrSettings.for_recogniser(rec, **{**over, "max_lines": k})
        pb_utils.Logger.log(f"ocr: {rec.name} width buckets {settings.buckets.tolist()}", pb_utils.Logger.INFO)
        return settings
    except (ocr.OcrError, ContractError, ValueError) as exc:   # ValueError: bucket or chunk settings
        raise pb_utils.TritonModelException(f"ocr: {rec.path}: {exc}") from exc


class TritonPythonModel:
    def initialize(self, args):
        cv2.setNumThreads(1)   # several python-backend processes share the CPU
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"])
        steps = from_json(config).steps
        if len(steps) != 2:
            raise pb_utils.TritonModelException(f"ocr: parameter steps must name detector and recogniser, got {steps}")
        self.det_model, self.rec_model = steps
        det = _sibling_config(model_dir, self.det_model)
        rec = _sibling_config(model_dir, self.rec_model)
        self.det_in, self.det_out = det.inputs[0].name, det.outputs[0].name
        self.rec_in = rec.inputs[0].name
        self.det_max_batch = max(det.max_batch_size, 1)
        self.rec_max_batch = max(rec.max_batch_size, 1)
        outputs = {o["name"]: o for o in config["output"]}
        k = int(outputs["texts"]["dims"][0])
        self.settings = _settings(config, rec, k)
        charset = model_dir / args["model_version"] / CHARSET_FILE
        if not charset.is_file():
            raise pb_utils.TritonModelException(
                f"ocr: {charset} is missing; it is written by `make export-onnx MODELS=ppocr_rec`")
        self.charset = ocr.load_charset(charset)
        self.input_name = config["input"][0]["name"]

    def _detect(self, images: np.ndarray) -> np.ndarray:
        return call(self.det_model, {self.det_in: images}, [self.det_out])[self.det_out]

    def _recognize(self, crops: np.ndarray):
        out = call(self.rec_model, {self.rec_in: crops}, ["char_ids", "char_scores"])
        return out["char_ids"], out["char_scores"]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            with traced(requests):
                result = self._run(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
        except (StepError, ocr.OcrError, ocr.OcrInputError) as exc:
            if len(arrays) == 1:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ocr: {exc}"))]
            # The batch failed as a whole (one det call); run each request alone so only
            # the request that fails gets the error. Rare path, so a loop is fine here.
            return [self._respond_alone(a) for a in arrays]
        responses, start = [], 0
        for a in arrays:
            sl = slice(start, start + len(a))
            start += len(a)
            responses.append(self._response(result, sl))
        return responses

    def _run(self, images: np.ndarray) -> "ocr.OcrResult":
        return ocr.run_ocr(images, self._detect, self._recognize, self.charset,
                           det_max_batch=self.det_max_batch, rec_max_batch=self.rec_max_batch,
                           s=self.settings)

    def _respond_alone(self, images: np.ndarray):
        try:
            return self._response(self._run(images), slice(None))
        except (StepError, ocr.OcrError, ocr.OcrInputError) as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ocr: {exc}"))

    @staticmethod
    def _response(result: "ocr.OcrResult", sl: slice):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("texts", result.texts[sl]),
            pb_utils.Tensor("polygons", result.polygons[sl]),
            pb_utils.Tensor("scores", result.scores[sl]),
            pb_utils.Tensor("num_lines", result.num_lines[sl]),
        ])
