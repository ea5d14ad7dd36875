"""The OCR pipeline end to end without Triton: exported ppocr_det/ppocr_rec in ONNX Runtime
plus serving/ocr_postprocess.py, the same code the `ocr` BLS model runs between its calls."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import MODEL_REPOSITORY

ort = pytest.importorskip("onnxruntime")

import contract  # noqa: E402
from pipelines import ocr_postprocess as op  # noqa: E402

PAGES = [
    [((40, 100), "HELLO WORLD 2026"), ((60, 300), "visionserve reads text")],
    [((100, 500), "Second image 42")],
]


@pytest.fixture(scope="module")
def pipeline(ppocr_exports):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    det = ort.InferenceSession(str(MODEL_REPOSITORY / "ppocr_det/1/model.onnx"), so, providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(MODEL_REPOSITORY / "ppocr_rec/1/model.onnx"), so, providers=["CPUExecutionProvider"])
    charset = op.load_charset(MODEL_REPOSITORY / "ocr/1/charset.txt")
    det_c, rec_c = contract.load("ppocr_det"), contract.load("ppocr_rec")
    settings = op.OcrSettings.for_recogniser(rec_c)
    calls = {"det": [], "rec": []}

    def detect(images):
        calls["det"].append(len(images))
        return det.run(None, {"images": images})[0]

    def recognize(crops):
        calls["rec"].append(crops.shape[:3])
        return tuple(rec.run(None, {"crops": crops}))

    def run(images, s=settings):
        return op.run_ocr(images, detect, recognize, charset, det_max_batch=det_c.max_batch_size,
                          rec_max_batch=rec_c.max_batch_size, s=s)
    run.calls, run.settings = calls, settings
    return run


def _render(lines) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (640, 640), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=40)
    for (x, y), text in lines:
        draw.text((x, y), text, fill="black", font=font)
    return np.asarray(im)


def test_rendered_text_is_read_back(pipeline):
    images = np.stack([_render(p) for p in PAGES])
    pipeline.calls["det"].clear()
    pipeline.calls["rec"].clear()
    r = pipeline(images)
    # one det call; one rec call per width bucket present, each line in exactly one
    assert pipeline.calls["det"] == [2]
    widths = [w for _, _, w in pipeline.calls["rec"]]
    assert len(set(widths)) == len(widths) and set(widths) <= set(pipeline.settings.buckets.tolist())
    assert sum(n for n, _, _ in pipeline.calls["rec"]) == 3
    assert r.num_lines.ravel().tolist() == [2, 1]
    got = [t.decode() for i in range(len(PAGES)) for t in r.texts[i, : r.num_lines[i, 0]]]
    assert got == [text for page in PAGES for _, text in page]       # spaces included
    for i, page in enumerate(PAGES):
        assert (r.scores[i, : r.num_lines[i, 0]] > 0.9).all()
        # each polygon covers where its text was drawn
        for poly, ((x, y), _) in zip(r.polygons[i], page):
            assert abs(poly[0, 0] - x) < 12 and abs(poly[0, 1] - y) < 15, poly
    assert (r.texts[:, 3:] == b"").all() and (r.polygons[0, 2:] == 0).all()


def test_results_do_not_depend_on_the_batch(pipeline):
    images = np.stack([_render(p) for p in PAGES])
    both = pipeline(images)
    for i in range(len(PAGES)):
        alone = pipeline(images[i:i + 1])
        assert alone.texts[0].tolist() == both.texts[i].tolist()
        np.testing.assert_allclose(alone.polygons[0], both.polygons[i], atol=1e-4)
        np.testing.assert_allclose(alone.scores[0], both.scores[i], atol=1e-4)


def test_blank_page_has_no_lines(pipeline):
    r = pipeline(np.full((1, 640, 640, 3), 255, np.uint8))
    assert r.num_lines.tolist() == [[0]] and (r.texts == b"").all()


LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
         "ut labore et dolore magna aliqua 0123456789")


def test_long_lines_are_read_whole(pipeline):
    """Lines of 10 to 80 characters printed at 14 px (an 80-character line spans 570 of the
    frame's 640 px: 1521 px at 48 px height), each read whole at its own width rounded up to a
    bucket: every line exact, spaces included. Squeezed into one 320-px crop, 32 characters
    came back as 'Loremipudlorsit am' and 54 as 'Lorep'; read in 320-px chunks, 4 of the 8
    lost a space at a seam."""
    from export.scene import render_lines

    lines = [LOREM[:n].rstrip() for n in (10, 20, 32, 40, 54, 64, 72, 80)]
    page, ink = render_lines(lines, 640, font_px=14, line_gap=2.2, margin=10, height=640)
    assert ink[-1, 2] < 640                                          # the whole line is in the frame
    pipeline.calls["rec"].clear()
    r = pipeline(page[None])
    got = [t.decode() for t in r.texts[0, :r.num_lines[0, 0]]]
    assert got == lines
    # short lines share the narrowest bucket; each long one its own: no line is chunked
    assert sum(n for n, _, _ in pipeline.calls["rec"]) == len(lines)
    assert max(w for _, _, w in pipeline.calls["rec"]) < pipeline.settings.rec_max_width


def test_a_line_wider_than_the_max_falls_back_to_chunks(pipeline):
    """A line wider than the recogniser's max width is read in overlapping chunks of the max
    width (the fallback): here with the max lowered to 640 px, the 80-character line (1170 px
    at 48 px) comes in two chunks, stitched into one line."""
    from dataclasses import replace

    from export.scene import render_lines

    line = LOREM[:80].rstrip()
    page, _ = render_lines([line], 640, font_px=14, line_gap=2.2, margin=10, height=640)
    pipeline.calls["rec"].clear()
    r = pipeline(page[None], replace(pipeline.settings, rec_max_width=640))
    (got,) = [t.decode() for t in r.texts[0, :r.num_lines[0, 0]]]
    assert pipeline.calls["rec"] == [(2, 48, 640)]
    assert got.replace(" ", "") == line.replace(" ", "")
