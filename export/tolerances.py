"""The tolerance types a model family's record carries (export/registry.py holds the values).

`Tolerances` has one field per check that compares a model's numbers against something
else. A new check (bf16 on CPU, another runtime) adds ONE field here, with a default, and
sets it on the records whose models need another value; nothing else restates tolerances.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tolerance:
    """One output held to `atol + rtol * |reference|` elementwise, of which a fraction
    `max_mismatch` may miss, and, for embeddings, a floor on the per-row cosine."""

    atol: float = 1e-3
    rtol: float = 0.0
    max_mismatch: float = 0.0          # fraction of elements allowed outside atol + rtol*|ref|
    min_cosine: float | None = None    # per-row floor over the last axis (embeddings)


@dataclass(frozen=True)
class ParitySpec:
    """Per-output tolerances of one runtime against another ("*": every other output)."""

    outputs: dict = field(default_factory=dict)         # output name -> Tolerance
    input_ranges: dict = field(default_factory=dict)    # input name -> (low, high) of generated values

    def tolerance(self, output: str) -> Tolerance:
        return self.outputs.get(output) or self.outputs.get("*") or DEFAULT_PARITY.outputs["*"]


DEFAULT_PARITY = ParitySpec({"*": Tolerance(atol=1e-2, rtol=1e-2)})


@dataclass(frozen=True)
class Bf16:
    """OpenVINO bf16 on the CPU vs ONNX Runtime f32 (export/bf16_parity.py applies it).

    kind "detections": every detection clear of the cut (score threshold or K-th score) by
    `score_atol` has a partner of the same class at IoU >= `min_iou` within `score_atol`, both
    ways; "embeddings": per-row cosine >= `min_cosine`; "ocr": strings read from rendered
    text identical. A model that never runs in bf16 says so in its config (contract/facts.py
    cpu_f32_only), not here: the CPU profile reads it without the build tools."""

    kind: str = "embeddings"
    min_iou: float = 0.9
    score_atol: float = 0.05
    min_cosine: float = 0.99


BF16_DETECTIONS = Bf16("detections")
BF16_EMBEDDINGS = Bf16("embeddings")
BF16_OCR = Bf16("ocr")


@dataclass(frozen=True)
class Tolerances:
    """Every tolerance one model is held to, one field per check."""

    # export.verify: ONNX Runtime on the exported file vs the family's independent
    # reference (max abs difference over the valid rows, detections matched by position).
    reference: float = 1e-4
    # export.verify: a batch of 8 vs 8 single-image runs of the exported file.
    batch: float = 1e-4
    # export.engines.parity: the FP16 TensorRT plan vs ONNX Runtime on the exported file.
    engine: ParitySpec = DEFAULT_PARITY
    # serving's CPU profile: OpenVINO bf16 vs ONNX Runtime f32 on real images.
    bf16: Bf16 = BF16_EMBEDDINGS


_DETECTOR = {
    "boxes": Tolerance(atol=2.0, max_mismatch=0.05),        # input pixels
    "landmarks": Tolerance(atol=2.0, max_mismatch=0.05),
    "scores": Tolerance(atol=0.02, max_mismatch=0.05),
    "classes": Tolerance(atol=0.0, max_mismatch=0.05),
    "num_detections": Tolerance(atol=1.0),                  # one box may cross the threshold
}


def detector(*outputs: str, **input_ranges) -> ParitySpec:
    """FP16 parity of a detector's padded outputs (a near-tie may swap two rows or move one
    box across the score threshold, which shifts the rows after it)."""
    return ParitySpec({o: _DETECTOR[o] for o in outputs}, input_ranges)


FACE_OUTPUTS = ("boxes", "scores", "landmarks", "num_detections")
OBJECT_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
