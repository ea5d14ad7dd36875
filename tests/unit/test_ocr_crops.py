"""Line crops for the variable-width recogniser (serving/ocr_crops.py) on hand-made frames."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

import contract
from pipelines import ocr_crops
from pipelines import ocr_postprocess as op
from tests.support.ocr import RECOGNISER

REC = op.OcrSettings.for_recogniser(contract.load("ppocr_rec"))
EXACT = replace(REC, crop_height=1.0)         # crops exactly the box: geometry checks below


def test_settings_come_from_the_recogniser_contract():
    lo, opt, hi = contract.load("ppocr_rec").variable_dim_range
    assert (REC.rec_height, REC.rec_opt_width, REC.rec_max_width, REC.rec_stride) == (48, opt, hi, 8)
    assert op.OcrSettings(**RECOGNISER) == REC          # the hand-made tests' recogniser is the committed one
    b = REC.buckets
    assert b[0] == opt and b[-1] == hi and (b % 8 == 0).all()
    assert (b[1:] / b[:-1] <= REC.bucket_ratio + 1e-9).all() and len(b) <= 12      # few shapes
    # a fixed-width recogniser (dims [48, 320, 3], 40 steps): one bucket, chunks beyond it
    fixed = contract.parse_config(
        'name: "r" max_batch_size: 8 input [ { name: "crops" data_type: TYPE_UINT8 dims: [ 48, 320, 3 ] } ] '
        'output [ { name: "char_ids" data_type: TYPE_INT32 dims: [ 40 ] } ]')
    s = op.OcrSettings.for_recogniser(contract.ModelContract("r", contract.MODEL_REPOSITORY, fixed))
    assert s.buckets.tolist() == [320] and s.rec_stride == 8
    with pytest.raises(ValueError):
        replace(REC, bucket_ratio=1.0).buckets


def test_a_short_line_keeps_its_aspect_padded_to_the_first_bucket_and_tall_ones_turn():
    img = np.zeros((1, 200, 400, 3), np.uint8)
    img[0, 50:74, 100:196] = 255                        # 96x24 white block (aspect 4)
    img[0, 50:74, 100:104] = (255, 0, 0)                # red left edge
    boxes = np.array([[[100, 50], [196, 50], [196, 74], [100, 74]],      # wide
                      [[300, 20], [324, 20], [324, 116], [300, 116]]],   # tall 24x96
                     np.float32)
    img[0, 20:116, 300:324] = 200
    img[0, 20:24, 300:324] = (0, 255, 0)                # green top edge of the tall box
    p = ocr_crops.crop(img, boxes, np.array([0, 0]), EXACT)
    (b,) = p.buckets
    out = b.crops
    assert b.width == 320 and out.shape == (2, 48, 320, 3) and b.pieces.tolist() == [0, 1]
    assert p.line.tolist() == [0, 1] and p.start.tolist() == [0, 0]
    # wide: 96x24 -> 192x48, padded with 128 after
    assert (out[0, :, 192:] == 128).all()
    assert out[0, 24, 100:180].min() > 240 and out[0, 24, 2, 0] > 200 and out[0, 24, 2, 1] < 60
    # tall: turned counter-clockwise (PaddleOCR's np.rot90): the top edge ends up on the left
    assert (out[1, :, 192:] == 128).all()
    assert out[1, 24, 2, 1] > 200 and out[1, 24, 2, 0] < 60
    assert out[1, 24, 100:180].min() > 180


def test_the_crop_spans_crop_height_times_the_box_from_the_frame():
    """crop_height 1.3: the rows above and below the box come from the frame (not padding),
    the text band is 48 / 1.3 px tall in the middle, the width follows the taller crop."""
    img = np.full((1, 200, 400, 3), 255, np.uint8)
    img[0, 40:50, 100:300] = (0, 0, 255)                # blue above the box
    img[0, 130:140, 100:300] = (0, 255, 0)              # green below it
    img[0, 50:130, 100:300] = 0                         # the box: 200x80, black
    box = np.array([[[100, 50], [300, 50], [300, 130], [100, 130]]], np.float32)
    (b,) = ocr_crops.crop(img, box, np.array([0]), REC).buckets
    crop = b.crops[0]
    width = int(np.ceil(48 * 200 / (80 * 1.3)))
    assert (crop[:, width:] == 128).all() and (crop[:, :width - 1] != 128).any()
    assert crop[1, width // 2].tolist() == [0, 0, 255] and crop[-2, width // 2].tolist() == [0, 255, 0]
    assert (crop[6:42, :width - 1] == 0).all()          # the box, 48 / 1.3 = 37 rows in the middle


def test_lines_are_read_at_their_own_width_one_call_per_bucket():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (2, 300, 1200, 3), dtype=np.uint8)
    w = np.array([100, 300, 305, 700, 1100])            # at height 20: 240 .. 2640 px at 48 (crop 1.0)
    boxes = np.array([[[10, y], [10 + x, y], [10 + x, y + 20], [10, y + 20]]
                      for x, y in zip(w, (10, 60, 110, 160, 210))], np.float32)
    image_index = np.array([0, 1, 0, 1, 1])
    s = replace(EXACT, chunk_overlap=96)
    p = ocr_crops.crop(img, boxes, image_index, s)
    natural = np.ceil(48 * w / 20).astype(int)          # 240, 720, 732, 1680, 2640
    # the 2640-px line is wider than the max (2048): two chunks, the last ending at its end
    assert p.line.tolist() == [0, 1, 2, 3, 4, 4] and p.start.tolist() == [0, 0, 0, 0, 0, (2640 - 2048) // 8]
    # the others in the next bucket up (720 and 732 share one: one call), chunks in the max one
    expected: dict[int, list[int]] = {}
    for piece, width in enumerate([*s.buckets[np.searchsorted(s.buckets, natural[:4])], 2048, 2048]):
        expected.setdefault(int(width), []).append(piece)
    assert {b.width: b.pieces.tolist() for b in p.buckets} == expected
    assert len(expected) == 3 and expected[320] == [0] and [1, 2] in expected.values()
    # every crop equals its line warped alone from its own frame, then padded
    pts, widths = ocr_crops.line_geometry(boxes, s)
    for b in p.buckets:
        for crop, piece in zip(b.crops, b.pieces):
            i, x0 = p.line[piece], p.start[piece] * 8
            dst = np.array([[[0, 0], [widths[i], 0], [widths[i], 48], [0, 48]]], np.float64)
            whole = cv2.warpPerspective(img[image_index[i]], op.homographies(pts[i:i + 1], dst)[0],
                                        (int(widths[i]), 48), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE)[:, x0:x0 + b.width]
            assert np.abs(crop[:, :whole.shape[1]].astype(int) - whole).max() <= 1
            assert (crop[:, whole.shape[1]:] == 128).all()
    calls = []

    def recognize(crops):
        calls.append(crops.shape[:3])
        steps = crops.shape[2] // 8
        return np.full((len(crops), steps), crops.shape[2] // 8, np.int32), np.ones((len(crops), steps), np.float32)

    ids, probs = ocr_crops.recognise(p, recognize, max_batch=2, stride=8)
    assert sorted(c[2] for c in calls) == sorted(w for b in p.buckets for w in [b.width] * -(-len(b.pieces) // 2))
    assert ids.shape == (6, 256)                        # the widest bucket's steps; narrower pieces blank-padded
    assert ids[0, :40].tolist() == [40] * 40 and (ids[0, 40:] == 0).all() and (probs[0, 40:] == 0).all()


def test_a_line_wider_than_the_max_is_cut_into_overlapping_chunks_warped_from_the_frame():
    """Max 320 (a fixed-width recogniser): a 25x1000 px line -> 1920 px at height 48 -> chunks
    every 224 px, the last one ending at the line's end, each equal to the matching window of
    the whole line warped at once."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 60, 1100, 3), dtype=np.uint8)
    box = np.array([[[50, 20], [1050, 20], [1050, 45], [50, 45]]], np.float32)
    s = replace(EXACT, rec_opt_width=320, rec_max_width=320)
    p = ocr_crops.crop(img, box, np.array([0]), s)
    pts, widths = ocr_crops.line_geometry(box, s)
    assert widths.tolist() == [1920]
    (b,) = p.buckets
    starts = p.start * 8
    assert p.line.tolist() == [0] * 9 and starts.tolist() == [0, 224, 448, 672, 896, 1120, 1344, 1568, 1600]
    assert b.width == 320 and (starts % 8 == 0).all() and starts[-1] + 320 == 1920
    whole = cv2.warpPerspective(img[0], op.homographies(pts, np.array([[[0, 0], [1920, 0], [1920, 48], [0, 48]]],
                                np.float64))[0], (1920, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    for crop, x in zip(b.crops, starts):
        assert np.abs(crop.astype(int) - whole[:, x:x + 320]).max() <= 1
    longest = 320 + (s.max_chunks - 1) * (320 - s.chunk_overlap)
    assert ocr_crops.line_geometry(np.array([[[0, 0], [5000, 0], [5000, 10], [0, 10]]], np.float32), s)[1][0] == longest


def test_no_lines_no_crops():
    p = ocr_crops.crop(np.zeros((1, 64, 64, 3), np.uint8), np.zeros((0, 4, 2), np.float32), np.zeros(0, np.int64), REC)
    assert p.buckets == () and len(p.line) == 0
