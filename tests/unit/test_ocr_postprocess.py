"""DB boxes, chunk stitching and CTC of serving/ocr_postprocess.py on hand-made inputs."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines import ocr_chunks
from tests.support.ocr import RECOGNISER
from pipelines import ocr_postprocess as op

CHARS = np.array(["", "a", "b", "c", " "], dtype="<U1")   # id 0 = blank
# the box geometry tests below check PaddleOCR's closed-form unclip on undilated maps
GEOMETRY = op.OcrSettings(dilate=False, unclip_ratio=1.5)
# a recogniser as ppocr_rec's committed contract has it (test_ocr_crops.py holds the two equal)


def _expected_box(x0, y0, x1, y1, ratio=1.5):
    """A filled pixel rectangle x0..x1, y0..y1 (inclusive) grown by the DB unclip distance."""
    w, h = x1 - x0, y1 - y0            # the contour runs through pixel centres
    d = w * h * ratio / (2 * (w + h))
    return np.array([[x0 - d, y0 - d], [x1 + d, y0 - d], [x1 + d, y1 + d], [x0 - d, y1 + d]])


# ------------------------------------------------------------------ CTC

def test_ctc_collapses_repeats_and_blanks_for_a_batch():
    ids = np.array([[1, 1, 0, 1, 2, 2, 0, 0, 3, 4],
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
                    [4, 1, 4, 1, 0, 2, 0, 2, 0, 2]], np.int32)
    probs = np.linspace(0.1, 1.0, ids.size, dtype=np.float32).reshape(ids.shape)
    texts, scores = op.ctc_decode(ids, probs, CHARS)
    assert texts.tolist() == ["aabc ", "", "c", " a abbb"]
    # mean of the kept steps' probabilities
    np.testing.assert_allclose(scores[0], probs[0, [0, 3, 4, 8, 9]].mean(), rtol=1e-6)
    assert scores[1] == 0.0
    np.testing.assert_allclose(scores[2], probs[2, 0], rtol=1e-6)
    np.testing.assert_allclose(scores[3], probs[3, [0, 1, 2, 3, 5, 7, 9]].mean(), rtol=1e-6)


def test_ctc_multi_codepoint_alphabet_and_unicode():
    charset = np.array(["", "ab", "é", "漢"], dtype="<U2")
    texts, _ = op.ctc_decode(np.array([[1, 0, 2, 3, 3]]), np.ones((1, 5), np.float32), charset)
    assert texts.tolist() == ["abé漢"]


def test_ctc_id_outside_the_charset_is_a_deployment_error():
    with pytest.raises(op.OcrError, match="charset"):
        op.ctc_decode(np.array([[1, 9]]), np.ones((1, 2), np.float32), CHARS)


def test_load_charset_keeps_spaces_and_odd_characters(tmp_path):
    p = tmp_path / "charset.txt"
    p.write_text("a\n\u3000\n\u2028\n \n", encoding="utf-8")
    cs = op.load_charset(p)
    assert cs.tolist() == ["", "a", "\u3000", "\u2028", " "]


# ------------------------------------------------------------------ DB boxes

def test_db_boxes_returns_known_rectangles_in_reading_order():
    prob = np.zeros((640, 640), np.uint8)
    rects = [(300, 40, 500, 69), (50, 44, 250, 73), (60, 300, 400, 339)]  # row 1 right, row 1 left, row 2
    for x0, y0, x1, y1 in rects:
        prob[y0:y1 + 1, x0:x1 + 1] = 230
    prob[500:540, 100:300] = 120          # p ~ 0.47: above the pixel threshold, below box score
    prob[600:602, 10:200] = 250           # 2 px tall: below min size
    boxes, scores = op.db_boxes(prob, GEOMETRY)
    assert boxes.shape == (3, 4, 2) and boxes.dtype == np.float32
    order = [1, 0, 2]
    for got, idx in zip(boxes, order):
        exp = np.clip(_expected_box(*rects[idx]), 0, 639)
        assert np.abs(got - exp).max() <= 2.0, (got, exp)
    np.testing.assert_allclose(scores, 230 / 255, atol=1e-6)


def test_db_boxes_rotated_rectangle_and_clipping():
    prob = np.zeros((640, 640), np.uint8)
    center, size, angle = (320.0, 320.0), (300.0, 40.0), 20.0
    poly = cv2.boxPoints((center, size, angle))
    cv2.fillPoly(prob, [np.round(poly).astype(np.int32)], 255)
    prob[0:30, 0:150] = 255                # touches the image corner: clipped to the image
    boxes, _ = op.db_boxes(prob, GEOMETRY)
    assert len(boxes) == 2
    corner, rotated = boxes[0], boxes[1]
    assert corner.min() >= 0 and corner[0].tolist() == [0.0, 0.0]
    w, h = size
    d = w * h * 1.5 / (2 * (w + h))
    exp = op.order_clockwise(cv2.boxPoints((center, (w + 2 * d, h + 2 * d), angle))[None].astype(np.float64))[0]
    assert np.abs(rotated - exp).max() <= 2.0, (rotated, exp)


def test_db_boxes_empty_map():
    boxes, scores = op.db_boxes(np.zeros((64, 64), np.uint8))
    assert boxes.shape == (0, 4, 2) and scores.shape == (0,)


def test_rect_corners_and_homographies_match_opencv():
    rng = np.random.default_rng(0)
    centers = rng.uniform(50, 500, (20, 2))
    sizes = rng.uniform(5, 200, (20, 2))
    angles = rng.uniform(-90, 90, 20)
    ours = op.order_clockwise(op.rect_corners(centers, sizes, angles))
    cvs = op.order_clockwise(np.stack([cv2.boxPoints((tuple(c), tuple(s), a))
                                       for c, s, a in zip(centers, sizes, angles)]).astype(np.float64))
    np.testing.assert_allclose(ours, cvs, atol=1e-3)
    dst = np.array([[0, 0], [100, 0], [100, 48], [0, 48]], np.float64)
    mats = op.homographies(ours, np.broadcast_to(dst, ours.shape))
    for m, src in zip(mats, ours):
        ref = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
        np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ stitching (crops: test_ocr_crops.py)

ABCD = np.array(["", "a", "b", "c", "d"], dtype="<U1")


def test_stitching_counts_a_character_in_the_overlap_once():
    """Two chunks 28 steps apart (12 shared): 'ab' before, 'c' in the overlap (both see it),
    'd' after. The cut lands on a shared blank with the same characters read on each side."""
    t = 40
    a, b = np.zeros(t, np.int32), np.zeros(t, np.int32)
    a[[3, 4, 10]] = [1, 1, 2]             # a a _ ... b
    a[33] = 3                             # c, global step 33
    b[33 - 28] = 3                        # the same c seen by the second chunk (its step 5)
    b[20] = 4                             # d, global step 48
    line, start = np.array([0, 0]), np.array([0, 28])
    ids, probs = ocr_chunks.stitch(np.stack([a, b]), np.full((2, t), 0.9, np.float32), line, start, 1)
    texts, scores = op.ctc_decode(ids, probs, ABCD)
    assert texts.tolist() == ["abcd"] and ids.shape == (1, 68)
    # a character each chunk places one step apart is still counted once
    b2 = b.copy()
    b2[5], b2[6] = 0, 3
    ids, _ = ocr_chunks.stitch(np.stack([a, b2]), np.full((2, t), 0.9, np.float32), line, start, 1)
    assert op.ctc_decode(ids, np.ones(ids.shape, np.float32), ABCD)[0].tolist() == ["abcd"]


def test_short_lines_keep_their_own_steps_when_stitched():
    ids = np.arange(2 * 40, dtype=np.int32).reshape(2, 40) % 5
    got, _ = ocr_chunks.stitch(ids, np.ones((2, 40), np.float32), np.array([0, 1]), np.array([0, 0]), 2)
    np.testing.assert_array_equal(got, ids)


# ------------------------------------------------------------------ pipeline with fake models

def test_run_ocr_scatters_lines_per_image_and_calls_the_recogniser_per_width_bucket():
    maps = np.zeros((3, 640, 640), np.uint8)
    maps[0, 40:70, 50:250] = 230        # 200x30 (unclipped ~240x72) -> ~120 px at 48: the 320 bucket
    maps[0, 140:170, 50:250] = 230
    maps[2, 300:320, 20:620] = 230      # 600x20 (~630x51) -> ~460 px: a wider bucket
    rec_calls = []

    def detect(images):
        return maps[: len(images)] if len(images) == 3 else maps[[0]]

    def recognize(crops):
        rec_calls.append(crops.shape[:3])
        steps = crops.shape[2] // 8
        ids = np.zeros((len(crops), steps), np.int32)
        ids[:, :3] = [1, 2, 3]
        probs = np.full((len(crops), steps), 0.9 if crops.shape[2] == 320 else 0.2, np.float32)
        return ids, probs               # the wide line is unreadable (0.2) -> dropped

    images = np.full((3, 640, 640, 3), 255, np.uint8)
    s = op.OcrSettings(**RECOGNISER)
    r = op.run_ocr(images, detect, recognize, CHARS, det_max_batch=8, rec_max_batch=1, s=s)
    assert rec_calls[:2] == [(1, 48, 320), (1, 48, 320)]     # per bucket, split at the max batch
    assert rec_calls[2][:2] == (1, 48) and 320 < rec_calls[2][2] < 640 and rec_calls[2][2] in s.buckets
    assert r.num_lines.ravel().tolist() == [2, 0, 0]
    assert r.texts.shape == (3, 64) and r.polygons.shape == (3, 64, 4, 2)
    assert r.texts[0, :2].tolist() == [b"abc", b"abc"] and r.texts[0, 2] == b""
    assert r.polygons[0, 0, 0, 1] < r.polygons[0, 1, 0, 1]      # top line first
    assert (r.polygons[1:] == 0).all() and (r.scores[0, :2] > 0.89).all()

    def wrong_steps(crops):
        return np.zeros((len(crops), 40), np.int32), np.zeros((len(crops), 40), np.float32)

    with pytest.raises(op.OcrError, match="steps"):
        op.run_ocr(images, detect, wrong_steps, CHARS, det_max_batch=8, rec_max_batch=8, s=s)
    with pytest.raises(op.OcrError, match="for_recogniser"):
        op.run_ocr(images, detect, recognize, CHARS, det_max_batch=8, rec_max_batch=8)


def test_run_ocr_rejects_bad_images():
    with pytest.raises(op.OcrInputError):
        op.run_ocr(np.zeros((2, 64, 64), np.uint8), None, None, CHARS, det_max_batch=1, rec_max_batch=1)
