"""The OCR pipeline end to end without Triton: exported ppocr_det/ppocr_rec in ONNX Runtime
plus serving/ocr_postprocess.py, the same code the `ocr` BLS model runs between its calls."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import MODEL_REPOSITORY

ort = pytest.importorskip("onnxruntime")

from serving import contract  # noqa: E402
from serving import ocr_postprocess as op  # noqa: E402
from tests.unit.test_export_ppocr import ppocr_exports  # noqa: E402,F401  (session fixture: one export)

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
    calls = {"det": [], "rec": []}

    def detect(images):
        calls["det"].append(len(images))
        return det.run(None, {"images": images})[0]

    def recognize(crops):
        calls["rec"].append(len(crops))
        return tuple(rec.run(None, {"crops": crops}))

    def run(images):
        return op.run_ocr(images, detect, recognize, charset,
                          det_max_batch=det_c.max_batch_size, rec_max_batch=rec_c.max_batch_size)
    run.calls = calls
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
    # one det call, one rec call for all chunks of all lines
    assert pipeline.calls["det"] == [2] and len(pipeline.calls["rec"]) == 1
    assert r.num_lines.ravel().tolist() == [2, 1]
    got = [t.decode() for i in range(len(PAGES)) for t in r.texts[i, : r.num_lines[i, 0]]]
    want = [text for page in PAGES for _, text in page]
    # every character; a space may be lost where a line is read in chunks (docs/ocr.md)
    assert [g.replace(" ", "") for g in got] == [w.replace(" ", "") for w in want]
    assert sum(g == w for g, w in zip(got, want)) >= 2, got
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
    frame's 640 px; at 48 px height it is 1900 px wide, six recogniser chunks). Squeezed into
    one 320-px crop, 32 characters came back as 'Loremipudlorsit am' and 54 as 'Lorep'; read
    in overlapping chunks every character comes back. Spaces are judged separately: PP-OCR
    drops some between small words whatever the crop (see docs/ocr.md)."""
    from perf.scene import render_lines

    lines = [LOREM[:n].rstrip() for n in (10, 20, 32, 40, 54, 64, 72, 80)]
    page, ink = render_lines(lines, 640, font_px=14, line_gap=2.2, margin=10, height=640)
    assert ink[-1, 2] < 640                                          # the whole line is in the frame
    r = pipeline(page[None])
    got = [t.decode() for t in r.texts[0, :r.num_lines[0, 0]]]
    assert [g.replace(" ", "") for g in got] == [want.replace(" ", "") for want in lines]
    exact = sum(g == want for g, want in zip(got, lines))
    assert got[:3] == lines[:3] and exact >= 4, got                   # up to 32 characters: exact
