"""Long text lines for a fixed-width recogniser: overlapping chunks in, one step sequence out.

The recogniser's input is fixed (48x320 in the ppocr_rec contract: one TensorRT profile,
one CUDA graph per batch size). A line is warped at the recogniser's height with its aspect
ratio kept; a line wider than the input is cut into chunks of the input's width that
overlap by `chunk_overlap` pixels, every chunk warped straight from the frame (no
full-width copy), all chunks of all lines recognised in one batch. The chunks' CTC steps
are then stitched per line at one cut inside each overlap, chosen where both chunks see a
blank and have read the same number of characters before it (so a character in the
overlap is counted once), nearest the middle of the overlap (away from both edges).

Squeezing a long line into 320 px instead is what broke 32-80 character lines.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Chunks:
    crops: np.ndarray        # uint8 [M, rec_height, rec_width, 3], right-padded
    line: np.ndarray         # int64 [M]: the line each chunk belongs to (lines in order, chunks left to right)
    start: np.ndarray        # int64 [M]: the chunk's first step in its line's step sequence


def line_geometry(boxes: np.ndarray, s) -> tuple[np.ndarray, np.ndarray]:
    """Source corners (tall lines rolled so they are read turned counter-clockwise, as
    PaddleOCR's np.rot90) and each line's width at the recogniser's height, in pixels."""
    pts = boxes.astype(np.float64)
    bw = np.maximum(np.linalg.norm(pts[:, 0] - pts[:, 1], axis=1), np.linalg.norm(pts[:, 2] - pts[:, 3], axis=1))
    bh = np.maximum(np.linalg.norm(pts[:, 0] - pts[:, 3], axis=1), np.linalg.norm(pts[:, 1] - pts[:, 2], axis=1))
    tall = bh >= s.tall_ratio * np.maximum(bw, 1e-6)
    pts = np.where(tall[:, None, None], np.roll(pts, -1, axis=1), pts)
    bw, bh = np.where(tall, bh, bw), np.where(tall, bw, bh)
    longest = s.rec_width + (s.max_chunks - 1) * (s.rec_width - s.chunk_overlap)
    natural = np.ceil(s.rec_height * bw / np.maximum(bh, 1e-6))
    # squeeze horizontally by up to max_squeeze (the recogniser reads mildly narrowed text
    # well, and a chunk then holds more of the line): one chunk up to rec_width * max_squeeze
    widths = np.where(natural <= s.rec_width * s.max_squeeze, np.minimum(natural, s.rec_width),
                      np.ceil(natural / s.max_squeeze))
    return pts, np.clip(widths, 1, longest).astype(np.int64)


def plan(widths: np.ndarray, s, step_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(line index, start pixel) of every chunk: one chunk for a line that fits, else chunks
    every rec_width - chunk_overlap pixels, the last one ending at the line's end; starts are
    multiples of a recogniser step so the chunks' steps line up."""
    stride = s.rec_width - s.chunk_overlap
    extra = np.maximum(widths - s.rec_width, 0)
    n = 1 + -(-extra // stride)                                   # ceil
    line = np.repeat(np.arange(len(widths)), n)
    k = np.arange(len(line)) - np.repeat(np.cumsum(n) - n, n)     # chunk number within its line
    last = -(-extra // step_px) * step_px                         # last start, rounded up to a step
    return line, np.minimum(k * stride, last[line])


def crop(images: np.ndarray, boxes: np.ndarray, image_index: np.ndarray, s, step_px: int) -> Chunks:
    """Every line of every image as chunks [M, rec_height, rec_width, 3] (only lines present)."""
    from .ocr_postprocess import homographies

    n = len(boxes)
    if n == 0:
        return Chunks(np.zeros((0, s.rec_height, s.rec_width, 3), np.uint8), np.zeros(0, np.int64),
                      np.zeros(0, np.int64))
    pts, widths = line_geometry(boxes, s)
    dst = np.zeros((n, 4, 2), np.float64)
    dst[:, 1, 0] = dst[:, 2, 0] = widths
    dst[:, 2, 1] = dst[:, 3, 1] = s.rec_height
    mats = homographies(pts, dst)
    line, start = plan(widths, s, step_px)
    shifted = mats[line].copy()
    shifted[:, 0] -= start[:, None] * shifted[:, 2]               # then x -= start: the chunk's window
    out = np.full((len(line), s.rec_height, s.rec_width, 3), s.pad_value, np.uint8)
    wide = np.minimum(widths[line] - start, s.rec_width)
    for i in range(len(line)):   # one C call per chunk (see ocr_postprocess's docstring)
        out[i, :, :wide[i]] = cv2.warpPerspective(images[image_index[line[i]]], shifted[i], (int(wide[i]), s.rec_height),
                                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Chunks(out, line, start // step_px)


def _char_starts(ids: np.ndarray, prev: np.ndarray) -> np.ndarray:
    return (ids != 0) & (ids != prev)


def stitch(ids: np.ndarray, probs: np.ndarray, chunks: Chunks, n_lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk CTC steps [M,T] -> per-line step sequences [n_lines, L] (blank padded)."""
    m, t = ids.shape
    lo = np.zeros(m, np.int64)                      # kept global steps [lo, hi) of each chunk
    hi = chunks.start + t
    seam = np.flatnonzero(chunks.line[1:] == chunks.line[:-1])      # chunk seam -> seam + 1
    if seam.size:
        a, b = seam, seam + 1
        overlap = chunks.start[a] + t - chunks.start[b]                 # steps both chunks see
        j = np.arange(t)[None, :]
        inside = j < overlap[:, None]
        col_a = np.clip(t - overlap[:, None] + j, 0, t - 1)
        ov_a = np.take_along_axis(ids[a], col_a, 1)
        prev_a = np.where(col_a > 0, np.take_along_axis(ids[a], np.maximum(col_a - 1, 0), 1), -1)
        ov_b = ids[b]
        prev_b = np.concatenate([np.full((len(b), 1), -1, ids.dtype), ids[b][:, :-1]], 1)
        # characters each chunk has begun before overlap step c (c = steps taken from a)
        count_a = np.cumsum(_char_starts(ov_a, prev_a) & inside, 1) - (_char_starts(ov_a, prev_a) & inside)
        count_b = np.cumsum(_char_starts(ov_b, prev_b) & inside, 1) - (_char_starts(ov_b, prev_b) & inside)
        blank = (ov_a == 0) & (ov_b == 0)
        away = np.abs(j - overlap[:, None] / 2.0)
        # a blank in both first, then the same characters read on both sides, then the middle;
        # never outside the overlap or at its very edge
        cost = away + 1000.0 * (count_a != count_b) + 10000.0 * ~blank + 1e6 * ~(inside & (j > 0))
        cut = np.where(cost.min(1) < 1e6, np.argmin(cost, 1), overlap // 2)
        hi[a] = chunks.start[b] + cut
        lo[b] = chunks.start[b] + cut
    g = chunks.start[:, None] + np.arange(t)[None, :]                   # global step of each chunk step
    keep = (g >= lo[:, None]) & (g < hi[:, None])
    owner = np.broadcast_to(chunks.line[:, None], ids.shape)[keep]
    length = np.bincount(owner, minlength=n_lines)
    first = np.concatenate([[0], np.cumsum(length)[:-1]])
    slot = np.arange(len(owner)) - first[owner]
    out_ids = np.zeros((n_lines, max(int(length.max(initial=0)), 1)), ids.dtype)
    out_probs = np.zeros(out_ids.shape, probs.dtype)
    out_ids[owner, slot] = ids[keep]
    out_probs[owner, slot] = probs[keep]
    return out_ids, out_probs
