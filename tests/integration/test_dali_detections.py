"""What the DALI letterbox's pixel differences do to detections, on real weights.

scrfd and centernet (the detectors with real weights in ../shared/weights; yolo here has
synthetic weights, so it says nothing) run with ONNX Runtime on the gateway codec's
letterbox and on the DALI pipeline's (device "cpu"), boxes mapped back to original pixels
with each side's own scale. Every codec detection must have its DALI partner (same class,
greedy one-to-one, IoU >= 0.5) and vice versa, scores within 0.05, and each partner IoU at
least 0.95 or at least what a second good resampling of the same image gives (full-size
decode + cv2 INTER_AREA/LINEAR: the detector's own sensitivity; CenterNet's box of the
person cut by the right edge of bus.jpg moves to IoU 0.74 under either).
"""
from __future__ import annotations

import pytest

from perf import decode_parity
from tests.support.dali import require_dali

pytestmark = pytest.mark.slow

IMAGES = ("bus.jpg", "zidane.jpg", "astronaut", "coffee", "chelsea", "retina", "exif6",
          "cmyk", "png16", "png_alpha", "1280x720", "4032x3024")
MIN_IOU = 0.95
SCORE_ATOL = 0.05


@pytest.mark.parametrize("model", decode_parity.DETECTORS)
def test_dali_letterbox_keeps_the_detections(model):
    require_dali()
    sess, why = decode_parity.detector(model)
    if sess is None:
        pytest.skip(f"{model}: {why}")
    every = decode_parity.all_images()
    rows = decode_parity.detection_rows(model, {n: every[n] for n in IMAGES})
    assert sum(r.n_codec for r in rows) >= 5, "too few detections to say anything"
    problems = []
    for r in rows:
        if not r.n_codec == r.n_dali == r.matched:
            problems.append(f"{r.image}: {r.n_codec} codec vs {r.n_dali} DALI detections, "
                            f"{r.matched} matched (unmatched scores {r.unmatched_scores})")
        if r.min_iou < min(MIN_IOU, r.baseline_min_iou - 0.01):
            problems.append(f"{r.image}: IoU {r.min_iou:.3f} (a second resampling gives {r.baseline_min_iou:.3f})")
        if r.max_dscore > SCORE_ATOL:
            problems.append(f"{r.image}: score moved {r.max_dscore:.3f}")
    assert not problems, f"{model}: " + "; ".join(problems)
