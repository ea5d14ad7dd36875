"""The OCR pipeline between the two PP-OCR networks: DB boxes, line crops, CTC text.

Pure numpy + OpenCV (no torch) so it runs inside Triton's python backend (the `ocr` BLS
model) and in tests with any pair of `detect` / `recognize` callables (the transport
seam: BLS calls in Triton, ONNX Runtime sessions in tests).

Where it is per item and why: cv2.findContours and cv2.connectedComponents run once per
IMAGE; cv2.minAreaRect runs once per LINE and cv2.warpPerspective once per line (straight into
its slot of its width bucket's batch, pipelines/ocr_crops.py; a line wider than the recogniser's
max is read in overlapping chunks, pipelines/ocr_chunks.py), each a single C call (a numpy gather
over all lines at once was slower than these calls). The recogniser is called once per width
bucket present. Everything between (scores, unclip, corner order, clipping, homographies,
chunk stitching, CTC collapse, charset lookup) is vectorised across all lines of all images.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from . import ocr_chunks, ocr_crops


class OcrError(RuntimeError):
    """A deployment/programming fault: charset and recogniser disagree, bad model outputs."""


class OcrInputError(ValueError):
    """The caller's images are unusable (wrong rank, dtype or channel count)."""


@dataclass(frozen=True)
class OcrSettings:
    """The DB settings of the rapidocr wheel the PP-OCR weights come from (its config.yaml:
    thresh, box_thresh, unclip_ratio, use_dilation; drop score 0.5). Its taller boxes (a 2x2
    dilation, unclip 1.6) give the recogniser the margin it needs to see the spaces of small
    text (PaddleOCR's 1.5 without dilation read 'Loremipsumdolorsit' at 14 px)."""

    det_threshold: float = 0.3      # pixel is text when p > this
    box_threshold: float = 0.5      # keep a region when its mean p >= this
    unclip_ratio: float = 1.6       # DB shrinks text regions; grow them back
    dilate: bool = True             # grow the text bitmap by a 2x2 kernel before finding regions
    min_size: float = 3.0           # drop boxes whose short side is below this (pixels)
    max_candidates: int = 1000      # regions looked at per image
    max_lines: int = 64             # K: lines returned per image (highest det score first)
    text_score: float = 0.5         # drop lines whose mean character probability is below
    # The recogniser's contract (for_recogniser reads ppocr_rec's config; 0 = not set):
    rec_height: int = 0             # crop height
    rec_opt_width: int = 0          # its variable_dim_range opt: the narrowest bucket
    rec_max_width: int = 0          # its max: wider lines are read in chunks
    rec_stride: int = 0             # pixels per CTC step (variable_dim_output_divisor)
    bucket_ratio: float = 1.25      # next bucket at most this much wider (1.5 lost lines: pipelines/ocr_crops.py)
    crop_height: float = 1.3        # a crop spans this x the box's height (spaces: pipelines/ocr_crops.py)
    chunk_overlap: int = 96         # lines wider than the max: pixels two neighbouring chunks share (~3 characters)
    max_chunks: int = 16            # per line; longer lines are squeezed into this many
    pad_value: int = 128            # PaddleOCR pads with normalised 0, i.e. pixel 127.5
    tall_ratio: float = 1.5         # h/w at which a crop is rotated (vertical text), as PaddleOCR

    @classmethod
    def for_recogniser(cls, rec, **overrides) -> "OcrSettings":
        """Settings with the recogniser's fields from its contract (a contract
        ModelContract): crop height, width range (a fixed-width recogniser: one width) and
        pixels per CTC step."""
        (spec,) = rec.inputs
        height, width, _ = spec.dims
        rng = rec.variable_dim_range
        if rng is None:       # a fixed width: one bucket, stride from the fixed step count
            steps = rec.output("char_ids").dims[0]
            if steps < 1 or width % steps:
                raise OcrError(f"{rec.name}: width {width} is not a whole number of its {steps} steps")
            opt = hi = width
            stride = width // steps
        else:
            _, opt, hi = rng
            stride = rec.variable_dim_output_divisor
        return cls(**{**overrides, "rec_height": height, "rec_opt_width": opt, "rec_max_width": hi,
                      "rec_stride": stride})

    @cached_property      # the settings never change once made: not recomputed per batch
    def buckets(self) -> np.ndarray:
        """The crop widths the recogniser is called with (ValueError for unusable settings)."""
        if not 0 <= self.chunk_overlap < self.rec_max_width:
            raise ValueError(f"chunk_overlap {self.chunk_overlap} must be below the max width {self.rec_max_width}")
        return ocr_crops.width_buckets(self.rec_opt_width, self.rec_max_width, self.bucket_ratio, self.rec_stride)


# ---------------------------------------------------------------- detection postprocess

def db_boxes(prob_map: np.ndarray, s: OcrSettings = OcrSettings()) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 DB probability map [H,W] (p*255) -> boxes [N,4,2] float32, scores [N].

    Boxes are min-area rectangles of the text regions grown by the closed-form unclip,
    clipped to the map, corners clockwise from top-left, in reading order.
    """
    if prob_map.ndim != 2:
        raise OcrError(f"prob map must be [H,W], got {prob_map.shape}")
    h, w = prob_map.shape
    text = prob_map > np.uint8(round(s.det_threshold * 255))
    bitmap = text.astype(np.uint8)
    if s.dilate:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32)
    contours = contours[: s.max_candidates]
    # Region score = mean probability over the region's text pixels (PaddleOCR's "slow"
    # polygon score; dilation widens the region, not the pixels scored), all regions at
    # once and without a fillPoly per box: an integer histogram of (label, value) pairs
    # over the text pixels is ~5x faster than a float-weighted bincount over the whole map.
    n_lab, labels = cv2.connectedComponents(bitmap, connectivity=8)
    hist = np.bincount(labels[text].astype(np.int64) * 256 + prob_map[text],
                       minlength=n_lab * 256).reshape(n_lab, 256)
    counts = np.maximum(hist.sum(1), 1)
    region_score = (hist @ np.arange(256) / counts / 255.0).astype(np.float32)
    first = np.array([c[0, 0] for c in contours])               # a pixel of each region (x, y)
    scores = region_score[labels[first[:, 1], first[:, 0]]]

    rects = [cv2.minAreaRect(c) for c in contours]                # one C call per region
    centers = np.array([r[0] for r in rects], np.float64)
    sizes = np.array([r[1] for r in rects], np.float64)
    angles = np.array([r[2] for r in rects], np.float64)
    keep = (sizes.min(1) >= s.min_size) & (scores >= s.box_threshold)
    centers, sizes, angles, scores = centers[keep], sizes[keep], angles[keep], scores[keep]

    # Unclip: pyclipper's offset of a rectangle by d = area * ratio / perimeter, in
    # closed form (its min-area rect is the rectangle grown by d on every side).
    dist = sizes.prod(1) * s.unclip_ratio / (2.0 * sizes.sum(1))
    sizes = sizes + 2.0 * dist[:, None]
    keep = sizes.min(1) >= s.min_size + 2
    boxes = rect_corners(centers[keep], sizes[keep], angles[keep])
    scores = scores[keep]

    boxes[..., 0] = np.clip(boxes[..., 0], 0, w - 1)
    boxes[..., 1] = np.clip(boxes[..., 1], 0, h - 1)
    boxes = order_clockwise(boxes)
    bw = np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1)
    bh = np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1)
    keep = (bw > 3) & (bh > 3)
    boxes, scores = boxes[keep], scores[keep]
    if len(boxes) > s.max_lines:
        top = np.argsort(-scores, kind="stable")[: s.max_lines]
        boxes, scores = boxes[top], scores[top]
    order = reading_order(boxes)
    return boxes[order].astype(np.float32), scores[order]


def rect_corners(centers: np.ndarray, sizes: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """cv2.boxPoints for many rotated rects: [N,2],[N,2],[N] -> [N,4,2]."""
    a = np.deg2rad(angles_deg)
    cos, sin = np.cos(a) * 0.5, np.sin(a) * 0.5
    wx, wy = cos * sizes[:, 0], sin * sizes[:, 0]     # half width along the rect's x axis
    hx, hy = -sin * sizes[:, 1], cos * sizes[:, 1]    # half height along its y axis
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    off_x = signs[:, 0] * wx[:, None] + signs[:, 1] * hx[:, None]
    off_y = signs[:, 0] * wy[:, None] + signs[:, 1] * hy[:, None]
    return np.stack([centers[:, None, 0] + off_x, centers[:, None, 1] + off_y], axis=-1)


def order_clockwise(boxes: np.ndarray) -> np.ndarray:
    """[N,4,2] -> corners tl, tr, br, bl (PaddleOCR's rule: two left-most by x, then by y)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4, 2)
    by_x = np.take_along_axis(boxes, np.argsort(boxes[..., 0], axis=1, kind="stable")[..., None], 1)
    left, right = by_x[:, :2], by_x[:, 2:]
    left = np.take_along_axis(left, np.argsort(left[..., 1], axis=1, kind="stable")[..., None], 1)
    right = np.take_along_axis(right, np.argsort(right[..., 1], axis=1, kind="stable")[..., None], 1)
    return np.stack([left[:, 0], right[:, 0], right[:, 1], left[:, 1]], axis=1)


def reading_order(boxes: np.ndarray, same_row_px: float = 10.0) -> np.ndarray:
    """Indices sorting lines top to bottom, then left to right within a row.

    Lines whose top-left corners are within `same_row_px` vertically (chained, after
    sorting by y) form a row, as PaddleOCR's sorted_boxes does with its bubble pass.
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x0, y0 = boxes[:, 0, 0], boxes[:, 0, 1]
    by_y = np.lexsort((x0, y0))
    ys = y0[by_y]
    row = np.concatenate([[0], np.cumsum(np.diff(ys) >= same_row_px)])
    return by_y[np.lexsort((x0[by_y], row))]


# ---------------------------------------------------------------- crops

def homographies(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.getPerspectiveTransform for many quads at once: [N,4,2] -> [N,3,3]."""
    n = len(src)
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    a = np.zeros((n, 8, 8), np.float64)
    a[:, 0::2, 0], a[:, 0::2, 1], a[:, 0::2, 2] = x, y, 1
    a[:, 0::2, 6], a[:, 0::2, 7] = -x * u, -y * u
    a[:, 1::2, 3], a[:, 1::2, 4], a[:, 1::2, 5] = x, y, 1
    a[:, 1::2, 6], a[:, 1::2, 7] = -x * v, -y * v
    b = np.stack([u, v], axis=-1).reshape(n, 8)
    # Degenerate quads (collapsed after clipping) are filtered earlier by the > 3 px check.
    h = np.linalg.solve(a, b[..., None])[..., 0]
    return np.concatenate([h, np.ones((n, 1))], axis=1).reshape(n, 3, 3)


# ---------------------------------------------------------------- CTC

def load_charset(path: Path | str) -> np.ndarray:
    """charset.txt (line i = id i+1) -> array indexed by id, id 0 (CTC blank) = ''."""
    text = Path(path).read_text(encoding="utf-8")
    chars = text.split("\n")          # not splitlines(): the alphabet may hold \x1c, \u2028 ...
    if chars and chars[-1] == "":
        chars = chars[:-1]
    if not chars:
        raise OcrError(f"{path} is empty")
    longest = max(len(c) for c in chars)
    return np.array(["", *chars], dtype=f"<U{max(longest, 1)}")


def ctc_decode(ids: np.ndarray, probs: np.ndarray, charset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy CTC for a whole batch: ids int [N,T], probs [N,T] -> texts (str array [N]), scores [N].

    Drops repeats (shifted compare) then blanks (id 0); a line's score is the mean
    probability of the characters it kept (0 for an empty line), as PaddleOCR.
    """
    ids = np.asarray(ids)
    n, t = ids.shape
    if n and (ids.min() < 0 or ids.max() >= len(charset)):
        raise OcrError(f"recogniser emitted id {int(ids.max())} but the charset has {len(charset)} "
                       "entries (blank included): charset.txt and ppocr_rec are from different exports")
    prev = np.concatenate([np.full((n, 1), -1, ids.dtype), ids[:, :-1]], axis=1)
    keep = (ids != 0) & (ids != prev)
    count = keep.sum(1)
    scores = np.where(count > 0, (probs * keep).sum(1) / np.maximum(count, 1), 0.0).astype(np.float32)
    # Move kept ids to the front of each row (stable), blanks behind them.
    order = np.argsort(~keep, axis=1, kind="stable")
    packed = np.take_along_axis(np.where(keep, ids, 0), order, axis=1)
    chars = charset[packed]
    if charset.dtype.itemsize == np.dtype("<U1").itemsize:
        # One code point per id: a row of T '<U1' cells IS a '<U{T}' string; trailing
        # blanks are NULs, which numpy strips.
        texts = np.ascontiguousarray(chars).view(f"<U{t}").reshape(n)
    else:
        texts = np.array(["".join(row) for row in chars], dtype=object)
    return texts, scores


# ---------------------------------------------------------------- the whole pipeline

@dataclass(frozen=True)
class OcrResult:
    texts: np.ndarray        # object [B,K] of UTF-8 bytes (b"" beyond num_lines)
    polygons: np.ndarray     # float32 [B,K,4,2]
    scores: np.ndarray       # float32 [B,K]
    num_lines: np.ndarray    # int32 [B,1]


def run_ocr(images: np.ndarray, detect: Callable[[np.ndarray], np.ndarray],
            recognize: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            charset: np.ndarray, *, det_max_batch: int, rec_max_batch: int,
            s: OcrSettings = OcrSettings()) -> OcrResult:
    """images uint8 [B,H,W,3] -> padded per-image lines.

    `detect` gets uint8 [b,H,W,3] (b <= det_max_batch) and returns uint8 prob maps [b,H,W];
    `recognize` gets uint8 crops [n,h,w,3] (n <= rec_max_batch, w one of the width buckets) and
    returns (ids, probs) [n, w / rec_stride]: one call per bucket present (pipelines/ocr_crops.py).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise OcrInputError(f"images must be uint8 [B,H,W,3], got {images.dtype}{list(images.shape)}")
    b, k = images.shape[0], s.max_lines
    maps = np.concatenate([detect(images[i:i + det_max_batch]) for i in range(0, b, det_max_batch)])
    per_image = [db_boxes(m, s) for m in maps]
    counts = np.array([len(bx) for bx, _ in per_image], np.int64)
    boxes = np.concatenate([bx for bx, _ in per_image]) if counts.sum() else np.zeros((0, 4, 2), np.float32)
    image_index = np.repeat(np.arange(b), counts)

    if not (s.rec_height and s.rec_max_width and s.rec_stride):
        raise OcrError("OcrSettings lack the recogniser's contract: build them with OcrSettings.for_recogniser")
    pieces = ocr_crops.crop(images, boxes, image_index, s)
    if len(pieces.line):
        ids, probs = ocr_crops.recognise(pieces, recognize, rec_max_batch, s.rec_stride)
        ids, probs = ocr_chunks.stitch(ids, probs, pieces.line, pieces.start, len(boxes))
        texts, line_scores = ctc_decode(ids, probs, charset)
    else:
        texts, line_scores = np.zeros((0,), "<U1"), np.zeros((0,), np.float32)

    # Keep readable lines, then scatter them into the padded [B,K] layout without a loop:
    # rank of each kept line within its image = its slot.
    ok = (line_scores >= s.text_score) & (np.char.str_len(texts.astype(str)) > 0)
    img_ok, boxes_ok = image_index[ok], boxes[ok]
    starts = np.concatenate([[0], np.cumsum(np.bincount(img_ok, minlength=b))[:-1]])
    slot = np.arange(len(img_ok)) - starts[img_ok]
    out_texts = np.full((b, k), b"", dtype=object)
    out_polys = np.zeros((b, k, 4, 2), np.float32)
    out_scores = np.zeros((b, k), np.float32)
    encoded = np.empty(len(img_ok), dtype=object)
    encoded[:] = [t.encode("utf-8") for t in texts[ok].tolist()]
    out_texts[img_ok, slot] = encoded
    out_polys[img_ok, slot] = boxes_ok
    out_scores[img_ok, slot] = line_scores[ok]
    num = np.bincount(img_ok, minlength=b).astype(np.int32).reshape(b, 1)
    return OcrResult(out_texts, out_polys, out_scores, num)
