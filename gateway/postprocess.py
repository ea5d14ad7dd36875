"""Padded Triton outputs -> JSON-ready results, vectorised across the batch.

Models return K padded rows per image with a valid count; masks select valid rows
above the caller's threshold (capped at max_results) for ALL images at once. Only the
kept rows are then gathered, flat across images, and mapped back to original pixels in
one array operation per output (most of the K rows are padding: mapping all of them
cost more than the rest of the response). Python only loops to build the JSON objects
of the rows that survive, and once per image to split them.
"""
from __future__ import annotations

import numpy as np

import imaging

from .labels import COCO_LABELS

_LABELS = np.array(COCO_LABELS + ("unknown",), dtype=object)


def keep_mask(count: np.ndarray, scores: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """[B, K] bool: row < count, score >= threshold, at most `limit` per image
    (rows are sorted by score, so the first ones are kept)."""
    k = scores.shape[1]
    mask = (np.arange(k)[None, :] < count.reshape(-1, 1)) & (scores >= threshold)
    return mask & (np.cumsum(mask, axis=1) <= limit)


class _Kept:
    """The kept rows of a [B, K] mask: gathered flat ([M, ...]) and split back per image."""

    def __init__(self, mask: np.ndarray, frames):
        self.mask = mask
        self.counts = mask.sum(axis=1).tolist()
        image = np.nonzero(mask)[0]
        self.scale, self.size = frames.scale[image], frames.size[image]

    def rows(self, a: np.ndarray) -> np.ndarray:
        return a[self.mask]

    def points(self, a: np.ndarray) -> list:
        """Kept rows of interleaved x,y model coordinates, in original pixels, rounded."""
        if not self.scale.size:
            return []
        return _r(imaging.to_original(a[self.mask], self.scale, self.size))

    def split(self, items: list) -> list[list]:
        out, start = [], 0
        for n in self.counts:
            out.append(items[start:start + n])
            start += n
        return out


def _r(a: np.ndarray, digits: int = 2) -> list:
    return np.round(a.astype(np.float64), digits).tolist()


def objects(boxes, scores, classes, count, frames, threshold, limit) -> list[list[dict]]:
    kept = _Kept(keep_mask(count, scores, threshold, limit), frames)
    cls = np.clip(kept.rows(classes), -1, len(COCO_LABELS)).astype(np.int64)
    labels = _LABELS[np.where(cls < 0, len(COCO_LABELS), cls)]
    return kept.split([{"label": lab, "class_id": c, "score": s, "box": b}
                       for lab, c, s, b in zip(labels.tolist(), cls.tolist(),
                                               _r(kept.rows(scores), 4), kept.points(boxes))])


def faces(boxes, scores, landmarks, embeddings, count, frames, threshold, limit,
          with_embeddings=True, vectors=np.ndarray.tolist) -> list[list[dict]]:
    """`vectors`: the kept [M, D] embeddings -> M leaves of the answer's encoding
    (gateway/responses.py), all at once."""
    kept = _Kept(keep_mask(count, scores, threshold, limit), frames)
    n = sum(kept.counts)
    embs = vectors(kept.rows(embeddings)) if with_embeddings else [None] * n
    return kept.split([{"score": s, "box": b, "landmarks": lm, "embedding": e}
                       for s, b, lm, e in zip(_r(kept.rows(scores), 4), kept.points(boxes),
                                              kept.points(landmarks), embs)])


def text_lines(texts, polygons, scores, count, frames, threshold, limit) -> list[list[dict]]:
    kept = _Kept(keep_mask(count, scores, threshold, limit), frames)
    words = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
             for t in kept.rows(texts).tolist()]
    return kept.split([{"text": w, "score": s, "polygon": p}
                       for w, s, p in zip(words, _r(kept.rows(scores), 4),
                                          kept.points(polygons))])


def sizes(frames) -> list[dict]:
    return [{"width": int(w), "height": int(h)} for w, h in frames.size.tolist()]
