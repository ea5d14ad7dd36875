"""bf16 on the CPU: the checks that hold OpenVINO bf16 to ONNX Runtime f32.

The tolerances live in each family's record (export/registry.py, `Tolerances.bf16`,
type export.tolerances.Bf16). The models that never run in bf16 say why in their config
(parameter cpu_f32_only, contract/facts.py: e.g. a whole graph of coordinate arithmetic in
640-px space, where bf16's 8-bit mantissa moves a pixel by up to 2); serving/profiles.py
keeps f32 for those, tests/unit/test_cpu_bf16_parity.py holds every other model to its
record on real images.

- detections: every reference detection at least `score_atol` above the cut (the
  graph's score threshold, or the K-th score of a full top-K list) must have a
  candidate box of the same class with IoU >= `min_iou` and |score difference| <=
  `score_atol`, and the other way round; so counts may differ only by boxes within
  `score_atol` of the cut.
- embeddings: per-row cosine similarity >= `min_cosine`.
- ocr: the strings read from rendered text are identical (checked on the whole pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import iou_matrix
from .tolerances import BF16_DETECTIONS, BF16_EMBEDDINGS, Bf16


def tolerance(model: str) -> Bf16:
    """The model's bf16 record (export/registry.py: its family's Tolerances.bf16)."""
    from export import registry

    return registry.record(model).tolerances.bf16



@dataclass(frozen=True)
class Verdict:
    passed: bool
    figures: str            # what was measured (worst IoU, worst score diff, cosine, ...)
    why: str = ""


def compare_detections(ref: dict, got: dict, tol: Bf16 = BF16_DETECTIONS, threshold: float = 0.0) -> Verdict:
    """One image's padded detector outputs (boxes [K,4], scores [K], num_detections, classes?).

    Matched both ways: every reference detection clear of the candidate's cut, and every
    candidate detection clear of the reference's cut, needs a partner of the same class
    with IoU >= min_iou and |score difference| <= score_atol. The cut is the K-th score
    when the list is full (top-K), else the score threshold baked into the graph."""
    k = len(np.ravel(ref["scores"]))
    sides = []
    for a in (ref, got):
        n = int(np.ravel(a["num_detections"])[0])
        sides.append((np.asarray(a["boxes"])[:n], np.asarray(a["scores"])[:n],
                      np.asarray(a["classes"])[:n] if "classes" in a else np.zeros(n, int)))
    (rb, rs, rc), (gb, gs, gc) = sides
    cut = {0: float(gs.min()) if len(gs) == k else threshold, 1: float(rs.min()) if len(rs) == k else threshold}
    worst_iou, worst_ds, why = 1.0, 0.0, []
    for side, ((ab, as_, ac), (bb, bs, bc)) in enumerate((((rb, rs, rc), (gb, gs, gc)), ((gb, gs, gc), (rb, rs, rc)))):
        stable = as_ >= cut[side] + tol.score_atol
        if not stable.any():
            continue
        if len(bb) == 0:
            why.append(f"{int(stable.sum())} {'reference' if side == 0 else 'candidate'} detections have no partner")
            continue
        iou = np.where(ac[:, None] == bc[None, :], iou_matrix(ab, bb), 0.0)
        best = iou.argmax(1)
        best_iou = iou[np.arange(len(ab)), best]
        dscore = np.abs(as_ - bs[best])
        bad = stable & ~((best_iou >= tol.min_iou) & (dscore <= tol.score_atol))
        worst_iou = min(worst_iou, float(best_iou[stable].min()))
        worst_ds = max(worst_ds, float(dscore[stable].max()))
        if bad.any():
            why.append(f"{int(bad.sum())} {'reference' if side == 0 else 'candidate'} detections without a partner "
                       f"(IoU >= {tol.min_iou}, same class, |d score| <= {tol.score_atol})")
    figures = f"{len(rs)} vs {len(gs)} detections, worst IoU {worst_iou:.3f}, worst |d score| {worst_ds:.4f}"
    return Verdict(not why, figures, "; ".join(why))


def compare_embeddings(ref: np.ndarray, got: np.ndarray, tol: Bf16 = BF16_EMBEDDINGS) -> Verdict:
    r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    den = np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1)
    cos = np.where(den > 0, (r * g).sum(-1) / np.maximum(den, 1e-30), 1.0)
    worst = float(cos.min())
    ok = worst >= tol.min_cosine
    return Verdict(ok, f"min cosine {worst:.5f}", "" if ok else f"cosine {worst:.5f} < {tol.min_cosine}")


def compare_texts(ref: list[str], got: list[str]) -> Verdict:
    ok = list(ref) == list(got)
    return Verdict(ok, f"{len(ref)} strings", "" if ok else f"strings differ: {ref} vs {got}")
