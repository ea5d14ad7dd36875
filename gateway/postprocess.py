"""Padded Triton outputs -> JSON-ready results, vectorised across the batch.

Models return K padded rows per image with a valid count; masks select valid rows
above the caller's threshold (capped at max_results) for ALL images at once, and
coordinates are mapped back to original pixels in one array operation per output.
Python only loops to build the JSON objects of the rows that survive.
"""
from __future__ import annotations

import numpy as np

from .labels import COCO_LABELS

_LABELS = np.array(COCO_LABELS + ("unknown",), dtype=object)


def keep_mask(count: np.ndarray, scores: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """[B, K] bool: row < count, score >= threshold, at most `limit` per image
    (rows are sorted by score, so the first ones are kept)."""
    k = scores.shape[1]
    mask = (np.arange(k)[None, :] < count.reshape(-1, 1)) & (scores >= threshold)
    return mask & (np.cumsum(mask, axis=1) <= limit)


def _r(a: np.ndarray, digits: int = 2) -> list:
    return np.round(a.astype(np.float64), digits).tolist()


def objects(boxes, scores, classes, count, frames, threshold, limit) -> list[list[dict]]:
    mask = keep_mask(count, scores, threshold, limit)
    boxes = frames.to_original(boxes)
    cls = np.clip(classes, -1, len(COCO_LABELS)).astype(np.int64)
    labels = _LABELS[np.where(cls < 0, len(COCO_LABELS), cls)]
    out = []
    for i in range(len(mask)):
        m = mask[i]
        out.append([{"label": lab, "class_id": c, "score": s, "box": b}
                    for lab, c, s, b in zip(labels[i][m].tolist(), cls[i][m].tolist(),
                                            _r(scores[i][m], 4), _r(boxes[i][m]))])
    return out


def faces(boxes, scores, landmarks, embeddings, count, frames, threshold, limit,
          with_embeddings=True) -> list[list[dict]]:
    mask = keep_mask(count, scores, threshold, limit)
    boxes = frames.to_original(boxes)
    landmarks = frames.to_original(landmarks)
    out = []
    for i in range(len(mask)):
        m = mask[i]
        embs = embeddings[i][m].tolist() if with_embeddings else [None] * int(m.sum())
        out.append([{"score": s, "box": b, "landmarks": lm, "embedding": e}
                    for s, b, lm, e in zip(_r(scores[i][m], 4), _r(boxes[i][m]),
                                           _r(landmarks[i][m]), embs)])
    return out


def text_lines(texts, polygons, scores, count, frames, threshold, limit) -> list[list[dict]]:
    mask = keep_mask(count, scores, threshold, limit)
    polygons = frames.to_original(polygons)
    out = []
    for i in range(len(mask)):
        m = mask[i]
        words = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                 for t in texts[i][m].tolist()]
        out.append([{"text": w, "score": s, "polygon": p}
                    for w, s, p in zip(words, _r(scores[i][m], 4), _r(polygons[i][m]))])
    return out


def sizes(frames) -> list[dict]:
    return [{"width": int(w), "height": int(h)} for w, h in frames.size.tolist()]
