"""Lines wider than the recogniser's max width: overlapping chunks in, one step sequence out.

The fallback of pipelines/ocr_crops.py (which reads every other line whole, at its own width).
A line wider than the recogniser's max width is cut into chunks of that width overlapping by
`chunk_overlap` pixels, every chunk warped straight from the frame, all recognised with the
other lines of the max bucket. The chunks' CTC steps are then stitched per line at one cut
inside each overlap, chosen where both chunks see a blank and have read the same number of
characters before it (so a character in the overlap is counted once), nearest the middle of
the overlap (away from both edges).

Chunks lose context a whole line has: read in 320-px chunks (the recogniser's input was
fixed at 48x320 before), 4 of 8 long lines lost a space at a seam.
"""
from __future__ import annotations

import numpy as np


def plan(widths: np.ndarray, chunk_width: int, overlap: int, step_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(line index, start pixel) of every piece: one piece for a line that fits, else chunks
    every chunk_width - overlap pixels, the last one ending at the line's end; starts are
    multiples of a recogniser step so the chunks' steps line up."""
    if not 0 <= overlap < chunk_width:
        raise ValueError(f"chunk overlap {overlap} must be below the chunk width {chunk_width}")
    stride = chunk_width - overlap
    extra = np.maximum(widths - chunk_width, 0)
    n = 1 + -(-extra // stride)                                   # ceil
    line = np.repeat(np.arange(len(widths)), n)
    k = np.arange(len(line)) - np.repeat(np.cumsum(n) - n, n)     # chunk number within its line
    last = -(-extra // step_px) * step_px                         # last start, rounded up to a step
    return line, np.minimum(k * stride, last[line])


def _char_starts(ids: np.ndarray, prev: np.ndarray) -> np.ndarray:
    return (ids != 0) & (ids != prev)


def stitch(ids: np.ndarray, probs: np.ndarray, line: np.ndarray, start: np.ndarray,
           n_lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-piece CTC steps [M,T] (`line` and first step `start` of each piece, a line's chunks
    consecutive) -> per-line step sequences [n_lines, L] (blank padded)."""
    m, t = ids.shape
    lo = np.zeros(m, np.int64)                      # kept global steps [lo, hi) of each piece
    hi = start + t
    seam = np.flatnonzero(line[1:] == line[:-1])    # chunk seam -> seam + 1
    if seam.size:
        a, b = seam, seam + 1
        overlap = start[a] + t - start[b]                 # steps both chunks see
        j = np.arange(t)[None, :]
        inside = j < overlap[:, None]
        col_a = np.clip(t - overlap[:, None] + j, 0, t - 1)
        ov_a = np.take_along_axis(ids[a], col_a, 1)
        prev_a = np.where(col_a > 0, np.take_along_axis(ids[a], np.maximum(col_a - 1, 0), 1), -1)
        ov_b = ids[b]
        prev_b = np.concatenate([np.full((len(b), 1), -1, ids.dtype), ids[b][:, :-1]], 1)
        # characters each chunk has begun before overlap step c (c = steps taken from a)
        starts_a = _char_starts(ov_a, prev_a) & inside
        starts_b = _char_starts(ov_b, prev_b) & inside
        count_a = np.cumsum(starts_a, 1) - starts_a
        count_b = np.cumsum(starts_b, 1) - starts_b
        blank = (ov_a == 0) & (ov_b == 0)
        away = np.abs(j - overlap[:, None] / 2.0)
        # a blank in both first, then the same characters read on both sides, then the middle;
        # never outside the overlap or at its very edge
        cost = away + 1000.0 * (count_a != count_b) + 10000.0 * ~blank + 1e6 * ~(inside & (j > 0))
        cut = np.where(cost.min(1) < 1e6, np.argmin(cost, 1), overlap // 2)
        hi[a] = start[b] + cut
        lo[b] = start[b] + cut
    g = start[:, None] + np.arange(t)[None, :]                   # global step of each chunk step
    keep = (g >= lo[:, None]) & (g < hi[:, None])
    owner = np.broadcast_to(line[:, None], ids.shape)[keep]
    length = np.bincount(owner, minlength=n_lines)
    first = np.concatenate([[0], np.cumsum(length)[:-1]])
    slot = np.arange(len(owner)) - first[owner]
    out_ids = np.zeros((n_lines, max(int(length.max(initial=0)), 1)), ids.dtype)
    out_probs = np.zeros(out_ids.shape, probs.dtype)
    out_ids[owner, slot] = ids[keep]
    out_probs[owner, slot] = probs[keep]
    return out_ids, out_probs
