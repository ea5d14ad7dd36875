"""Box geometry and detection matching in numpy, in one place, for every check that compares
detections (export.verify, engine parity, bf16 parity, known answers); the graphs' own box
ops are torch (graph_ops.box_iou)."""
from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,4] x [M,4] boxes (x1,y1,x2,y2) -> [N,M] IoU (0 where the union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


_MISSING = 1e6    # added to the partner of an unmatched detection row: beyond every tolerance


def matched_rows(ref: dict, got: dict, count: str, rows: list[str], min_iou: float = 0.5) -> tuple[dict, dict]:
    """Detections compared as detections: per image, the valid rows of both sides paired by box
    (same class, highest IoU first, IoU >= min_iou or the same box within 2 px), every per-row
    output flattened to the matched pairs, and
    each unmatched row (a box only one side found) paired with a row that fails every
    tolerance, so it counts as a mismatch. Padding rows are not compared."""
    pairs_ref: dict[str, list] = {n: [] for n in rows}
    pairs_got: dict[str, list] = {n: [] for n in rows}
    for i in range(len(ref[count])):
        nr, ng = int(ref[count][i].reshape(-1)[0]), int(got[count][i].reshape(-1)[0])
        a, b = ref["boxes"][i, :nr].astype(np.float64), got["boxes"][i, :ng].astype(np.float64)
        iou = iou_matrix(a, b)
        # degenerate boxes (zero area) have no IoU: the same box within 2 px is a match too
        iou = np.maximum(iou, np.abs(a[:, None] - b[None]).max(-1, initial=0) <= 2.0)
        if "classes" in ref:        # a box pairs only with a box of its own class
            iou = iou * (ref["classes"][i, :nr, None] == got["classes"][i, None, :ng])
        pairs, used_r, used_g = [], set(), set()
        for r, g in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
            if iou[r, g] < min_iou:
                break
            if r not in used_r and g not in used_g:
                pairs.append((r, g))
                used_r.add(r)
                used_g.add(g)
        for n in rows:
            rr, gg = ref[n][i], got[n][i]
            pairs_ref[n] += [rr[r] for r, _ in pairs] + [rr[r] for r in range(nr) if r not in used_r] \
                + [gg[g] + _MISSING for g in range(ng) if g not in used_g]
            pairs_got[n] += [gg[g] for _, g in pairs] + [rr[r] + _MISSING for r in range(nr) if r not in used_r] \
                + [gg[g] for g in range(ng) if g not in used_g]
    stack = lambda parts, like: np.stack(parts) if parts else np.zeros((0, *like.shape[2:]), like.dtype)  # noqa: E731
    ref_out = {**ref, **{n: stack(pairs_ref[n], ref[n]).astype(np.float64) for n in rows}}
    got_out = {**got, **{n: stack(pairs_got[n], got[n]).astype(np.float64) for n in rows}}
    return ref_out, got_out
