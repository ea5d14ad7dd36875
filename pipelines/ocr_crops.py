"""Text-line crops for a variable-width recogniser: every line at its own width, in few widths.

ppocr_rec takes crops [n, 48, W, 3] for any W in its contract's variable_dim_range and emits
W / 8 CTC steps. A line is warped straight from the frame (no full-width or per-line copy:
cv2 writes into its slot of the batch) at the recogniser's height and the width its aspect
ratio gives, right-padded to the next of a few width BUCKETS: geometric from the range's opt
(320, the width PP-OCR was trained at; PaddleOCR and rapidocr pad every line to at least it)
to its max, consecutive buckets at most `bucket_ratio` apart. All lines of a bucket go in ONE
recogniser call, so the dynamic batcher and TensorRT see a handful of shapes, not one per line.

Why buckets and not each line's own width, nor rapidocr's "pad a batch to its widest line":
on rendered lines (docs/ocr.md), padding a line to up to 1.25x its width read as many lines
exactly as its own width did, 1.5x lost some (the SVTR neck mixes the whole width, padding
included); reading at the full width is what keeps the spaces that 320-px chunks lost.

Why a crop 1.3x the detected box's height (`crop_height`): the DB box (unclip 1.6, rapidocr's
setting) hugs Latin text; read from it, the recogniser dropped the spaces of 40% of rendered
lines (rapidocr itself too: 'HELLOWORLD2026'); with 1.3x its height (the frame's own pixels
above and below) 92-94% came back exact, dense pages (line gap 1.35x the font) included.

A line wider than the max is read in overlapping chunks of the max width (pipelines/ocr_chunks.py),
in the max bucket: the fallback, not the rule. It is not narrowed to fit first: with the
taller crop below, narrowing by 1.1-1.25x lost more lines than chunks did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from . import ocr_chunks


@dataclass(frozen=True)
class Bucket:
    width: int
    crops: np.ndarray        # uint8 [n, rec_height, width, 3], right-padded with pad_value
    pieces: np.ndarray       # int64 [n]: which pieces these crops are


@dataclass(frozen=True)
class Pieces:
    """What the recogniser reads: one piece per line, several for a line read in chunks."""
    line: np.ndarray         # int64 [M]: the line of each piece (lines in order, a line's chunks left to right)
    start: np.ndarray        # int64 [M]: the piece's first step in its line's step sequence
    buckets: tuple[Bucket, ...]


def width_buckets(opt: int, hi: int, ratio: float, stride: int) -> np.ndarray:
    """Widths from `opt` to `hi`, geometric, consecutive ones at most `ratio` apart, each a
    whole number of recogniser steps (`stride` pixels)."""
    if not (0 < opt <= hi and ratio > 1 and stride > 0):
        raise ValueError(f"width buckets need 0 < opt <= max, ratio > 1, stride > 0; got {opt}, {hi}, {ratio}, {stride}")
    n = max(math.ceil(math.log(hi / opt) / math.log(ratio) - 1e-9), 0)
    raw = opt * (hi / opt) ** (np.arange(n + 1) / max(n, 1))
    return np.unique(np.minimum(np.ceil(raw / stride - 1e-9).astype(np.int64) * stride, hi))


def line_geometry(boxes: np.ndarray, s) -> tuple[np.ndarray, np.ndarray]:
    """Source corners (tall lines rolled so they are read turned counter-clockwise, as
    PaddleOCR's np.rot90; the box grown to crop_height x its height) and each line's width at
    the recogniser's height, aspect kept (wider than the max: read in chunks; beyond
    max_chunks chunks, narrowed to fit them)."""
    pts = boxes.astype(np.float64)
    bw = np.maximum(np.linalg.norm(pts[:, 0] - pts[:, 1], axis=1), np.linalg.norm(pts[:, 2] - pts[:, 3], axis=1))
    bh = np.maximum(np.linalg.norm(pts[:, 0] - pts[:, 3], axis=1), np.linalg.norm(pts[:, 1] - pts[:, 2], axis=1))
    tall = bh >= s.tall_ratio * np.maximum(bw, 1e-6)
    pts = np.where(tall[:, None, None], np.roll(pts, -1, axis=1), pts)
    bw, bh = np.where(tall, bh, bw), np.where(tall, bw, bh) * s.crop_height
    # the crop spans crop_height x the box's height, centred on it: top edge up, bottom edge down
    up = (pts[:, 0] + pts[:, 1] - pts[:, 3] - pts[:, 2]) / 2 * (s.crop_height - 1) / 2
    pts = pts + np.array([1, 1, -1, -1], np.float64)[None, :, None] * up[:, None, :]
    longest = s.rec_max_width + (s.max_chunks - 1) * (s.rec_max_width - s.chunk_overlap)
    widths = np.ceil(s.rec_height * bw / np.maximum(bh, 1e-6))
    return pts, np.clip(widths, 1, longest).astype(np.int64)


def crop(images: np.ndarray, boxes: np.ndarray, image_index: np.ndarray, s) -> Pieces:
    """Every line of every image (only lines present) as pieces grouped by bucket width."""
    from .ocr_postprocess import homographies

    buckets = s.buckets
    if len(boxes) == 0:
        return Pieces(np.zeros(0, np.int64), np.zeros(0, np.int64), ())
    pts, widths = line_geometry(boxes, s)
    dst = np.zeros((len(boxes), 4, 2), np.float64)
    dst[:, 1, 0] = dst[:, 2, 0] = widths
    dst[:, 2, 1] = dst[:, 3, 1] = s.rec_height
    mats = homographies(pts, dst)
    line, start = ocr_chunks.plan(widths, s.rec_max_width, s.chunk_overlap, s.rec_stride)
    wide = np.minimum(widths[line] - start, s.rec_max_width)           # pixels of the line in each piece
    chunked = np.bincount(line, minlength=len(boxes))[line] > 1
    # a piece's bucket: the next width up; a chunk's: the max (stitching needs equal step counts)
    width = np.where(chunked, s.rec_max_width, buckets[np.searchsorted(buckets, wide)])
    shifted = mats[line].copy()
    shifted[:, 0] -= start[:, None] * shifted[:, 2]                   # then x -= start: the piece's window
    src = image_index[line]
    out = []
    for w in np.unique(width):      # one batch per bucket present
        idx = np.flatnonzero(width == w)
        crops = np.full((len(idx), s.rec_height, int(w), 3), s.pad_value, np.uint8)
        for k, i in enumerate(idx):   # one C call per piece, straight into its slot (see ocr_postprocess)
            cv2.warpPerspective(images[src[i]], shifted[i], (int(wide[i]), s.rec_height), dst=crops[k, :, :wide[i]],
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(Bucket(int(w), crops, idx))
    return Pieces(line, start // s.rec_stride, tuple(out))


def recognise(pieces: Pieces, recognize: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
              max_batch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """ONE recogniser call per bucket (split at its max batch): ids, probs [M, T] per piece,
    T the widest bucket's steps, narrower pieces padded with blanks (id 0, probability 0)."""
    from .ocr_postprocess import OcrError

    m = len(pieces.line)
    t = max((b.width // stride for b in pieces.buckets), default=1)
    ids, probs = np.zeros((m, t), np.int32), np.zeros((m, t), np.float32)
    for b in pieces.buckets:
        parts = [recognize(b.crops[i:i + max_batch]) for i in range(0, len(b.crops), max_batch)]
        got_ids = np.concatenate([p[0] for p in parts])
        if got_ids.shape != (len(b.crops), b.width // stride):
            raise OcrError(f"the recogniser returned {list(got_ids.shape)} steps for {len(b.crops)} crops "
                           f"{b.width} px wide; its config says {b.width // stride} steps (one per {stride} px)")
        ids[b.pieces, :got_ids.shape[1]] = got_ids
        probs[b.pieces, :got_ids.shape[1]] = np.concatenate([p[1] for p in parts])
    return ids, probs
